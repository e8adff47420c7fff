-- Budget buckets. A bucket is one string key holding a MessagePack map:
--   k: 'f' (fixed) | 'r' (rolling)
--   w: fixed: ttl (us, -1: none); rolling: window (us)
--   l: rolling: slot length (us)
--   c: incarnation; e: expiry (us, -1: never)
--   s: spent (rolling: the sum of S); r: reserved (the sum of L)
--   S: rolling spend per slot, flat {slot, amount, ...}, oldest first
--   L: live leases, flat {end, amount, ...}, sorted by end, ends distinct

-- A new incarnation: strictly above the last one handed out under this
-- prefix, and at least `now` (so that a counter lost with its key starts
-- again above every value it handed out).
local function incarnation(key, now)
  local c = math.max(tonumber(redis.call('GET', key) or '0') + 1, now)
  redis.call('SET', key, fmt(c), 'PX', '2592000000')
  return c
end

local function load(key)
  local v = redis.call('GET', key)
  if not v then
    return nil
  end
  return cmsgpack.unpack(v)
end

local function fresh(kind, p1, p2, created, now)
  local b = {k = kind, w = p1, l = p2, c = created, e = -1, s = 0, r = 0, S = {}, L = {}}
  if kind == 'f' and p1 >= 0 then
    b.e = now + p1
  end
  return b
end

local function expired(b, now)
  return b.e >= 0 and b.e <= now
end

-- Drops the first `i - 1` entries of a flat list.
local function drop(list, i)
  if i == 1 then
    return list
  end
  local kept = {}
  for j = i, #list do
    kept[#kept + 1] = list[j]
  end
  return kept
end

-- Releases the leases that ended and forgets the slots that stopped counting.
local function prune(b, now)
  local L, i = b.L, 1
  while i <= #L and L[i] <= now do
    b.r = math.max(0, b.r - L[i + 1])
    i = i + 2
  end
  b.L = drop(L, i)
  if b.k == 'r' then
    local S = b.S
    i = 1
    while i <= #S and (S[i] + 1) * b.l + b.w <= now do
      b.s = math.max(0, b.s - S[i + 1])
      i = i + 2
    end
    b.S = drop(S, i)
  end
end

local function lease(b, ends, amount)
  if amount == 0 then
    return
  end
  b.r = b.r + amount
  local L = b.L
  -- Leases of one length end in order: almost always the last entry.
  local i = #L - 1
  while i >= 1 and L[i] > ends do
    i = i - 2
  end
  if i >= 1 and L[i] == ends then
    L[i + 1] = L[i + 1] + amount
  else
    table.insert(L, i + 2, ends)
    table.insert(L, i + 3, amount)
  end
end

local function release(b, ends, amount)
  local L = b.L
  for i = 1, #L, 2 do
    if L[i] == ends then
      local released = math.min(amount, L[i + 1])
      L[i + 1] = L[i + 1] - released
      b.r = math.max(0, b.r - released)
      if L[i + 1] == 0 then
        table.remove(L, i)
        table.remove(L, i)
      end
      return
    end
  end
end

local function spend(b, now, amount)
  if amount == 0 then
    return
  end
  b.s = b.s + amount
  if b.k == 'r' then
    local S = b.S
    local slot = math.floor(now / b.l)
    if #S >= 2 and S[#S - 1] >= slot then
      S[#S] = S[#S] + amount
    else
      S[#S + 1] = slot
      S[#S + 1] = amount
    end
  end
end

-- Rolling: the wait until the oldest counted spend stops counting, or if
-- none, until the first lease ends; -1 for none (and for a fixed bucket).
local function retry_after(b, now)
  if b.k ~= 'r' then
    return -1
  end
  if #b.S >= 2 then
    return math.max(0, (b.S[1] + 1) * b.l + b.w - now)
  end
  if #b.L >= 2 then
    return math.max(0, b.L[1] - now)
  end
  return -1
end

local function save(key, b, now, margin)
  if b.k == 'f' then
    if b.e < 0 then
      redis.call('SET', key, cmsgpack.pack(b))
    else
      redis.call('SET', key, cmsgpack.pack(b), 'PX', px(b.e, now, margin))
    end
    return
  end
  local untl = -1
  if #b.L >= 2 then
    untl = b.L[#b.L - 1]
  end
  if #b.S >= 2 then
    untl = math.max(untl, (b.S[#b.S - 1] + 1) * b.l + b.w)
  end
  if untl <= now then
    -- Nothing counts any more: a missing rolling bucket is an empty one.
    redis.call('DEL', key)
  else
    redis.call('SET', key, cmsgpack.pack(b), 'PX', px(untl, now, margin))
  end
end
