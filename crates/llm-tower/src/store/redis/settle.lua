-- settle(KEYS = n buckets, incarnation counter;
--        ARGV = now, margin, n, then per part:
--               created, lease end, amount, actual, kind, p1, p2)
-- -> {spent, reserved, ...}
local now, margin, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local counter = KEYS[n + 1]
local out = {}
for i = 1, n do
  local o = 3 + 7 * (i - 1)
  local actual, kind = tonumber(ARGV[o + 4]), ARGV[o + 5]
  local b = load(KEYS[i])
  if not b and kind == 'r' and actual > 0 then
    -- Rolling spend counts whenever it is settled, even if the idle bucket
    -- expired meanwhile.
    b = fresh(kind, tonumber(ARGV[o + 6]), tonumber(ARGV[o + 7]), incarnation(counter, now), now)
  end
  if not b then
    -- A missing fixed bucket expired: its window is over.
    out[#out + 1] = '0'
    out[#out + 1] = '0'
  else
    prune(b, now)
    local live = not expired(b, now)
    local same = live and b.c == tonumber(ARGV[o + 1])
    if same then
      release(b, tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]))
    end
    if same or b.k == 'r' then
      spend(b, now, actual)
    end
    if live then
      save(KEYS[i], b, now, margin)
      out[#out + 1] = fmt(b.s)
      out[#out + 1] = fmt(b.r)
    else
      out[#out + 1] = '0'
      out[#out + 1] = '0'
    end
  end
end
return out
