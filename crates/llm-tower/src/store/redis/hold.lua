-- hold(KEYS[1] = cell; ARGV = now, at_least, margin)
local now, at_least, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = math.max(tat, now + at_least)
if new ~= tat and new > now then
  redis.call('SET', KEYS[1], fmt(new), 'PX', px(new, now, margin))
end
return 0
