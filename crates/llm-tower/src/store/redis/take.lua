-- take(KEYS[1] = cell; ARGV = now, cost = n*T, T, tolerance = limit*T, margin)
-- -> {1, remaining} | {0, retry_after}
local now, cost, t, tol, margin =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = math.max(tat, now) + cost
local ahead = new - now
if ahead > tol then
  return {0, fmt(ahead - tol)}
end
if cost > 0 then
  redis.call('SET', KEYS[1], fmt(new), 'PX', px(new, now, margin))
end
return {1, fmt(math.floor((tol - ahead) / t))}
