-- acquire(KEYS = n cells [, pause flag];
--         ARGV = now, horizon, margin, n, has_pause, then per cell:
--                need = (amount + keep)*T, cost = amount*T, tolerance = limit*T)
-- -> {1, wait} | {0, retry_after}
local now, horizon, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n, has_pause = tonumber(ARGV[4]), tonumber(ARGV[5])
local start = now
if has_pause == 1 then
  local ends = redis.call('GET', KEYS[n + 1])
  if ends then
    start = math.max(start, tonumber(ends))
  end
end
local tats = {}
for i = 1, n do
  local o = 5 + 3 * (i - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  tats[i] = tat
  local ready = math.max(tat, now) + tonumber(ARGV[o + 1]) - tonumber(ARGV[o + 3])
  if ready > start then
    start = ready
  end
end
local wait = start - now
if wait > horizon then
  return {0, fmt(wait)}
end
for i = 1, n do
  local new = math.max(tats[i], start) + tonumber(ARGV[5 + 3 * (i - 1) + 2])
  if new ~= tats[i] and new > now then
    redis.call('SET', KEYS[i], fmt(new), 'PX', px(new, now, margin))
  end
end
return {1, fmt(wait)}
