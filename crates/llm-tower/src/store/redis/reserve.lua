-- reserve(KEYS = n buckets, incarnation counter;
--         ARGV = now, lease end, margin, n, then per bucket:
--                amount, limit, kind, p1, p2)
-- -> {1, created...} | {0, index, spent, reserved, retry_after | -1}
local now, lease_end, margin, n =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local counter = KEYS[n + 1]
local bs, made = {}, {}
for i = 1, n do
  local o = 4 + 5 * (i - 1)
  local b = load(KEYS[i])
  if not b or expired(b, now) then
    b = fresh(ARGV[o + 3], tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5]), incarnation(counter, now), now)
    made[i] = true
  else
    prune(b, now)
  end
  bs[i] = b
end
for i = 1, n do
  local o = 4 + 5 * (i - 1)
  local b = bs[i]
  if b.s + b.r + tonumber(ARGV[o + 1]) > tonumber(ARGV[o + 2]) then
    for j = 1, n do
      if made[j] then
        save(KEYS[j], bs[j], now, margin)
      end
    end
    return {0, i - 1, fmt(b.s), fmt(b.r), fmt(retry_after(b, now))}
  end
end
local out = {1}
for i = 1, n do
  local b = bs[i]
  lease(b, lease_end, tonumber(ARGV[4 + 5 * (i - 1) + 1]))
  save(KEYS[i], b, now, margin)
  out[#out + 1] = fmt(b.c)
end
return out
