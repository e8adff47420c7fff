-- refund(KEYS[1] = cell; ARGV = now, back = n*T, margin)
local now, back, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local tat = tonumber(v)
local new = math.min(math.max(tat - back, now), tat)
if new <= now then
  -- Full again: a missing cell is a full one.
  redis.call('DEL', KEYS[1])
elseif new ~= tat then
  redis.call('SET', KEYS[1], fmt(new), 'PX', px(new, now, margin))
end
return 0
