-- charge(KEYS[1] = cell; ARGV = now, cost = n*T, margin)
local now, cost, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = math.max(tat, now) + cost
if new > now then
  redis.call('SET', KEYS[1], fmt(new), 'PX', px(new, now, margin))
end
return 0
