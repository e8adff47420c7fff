-- flag(KEYS[1] = flag; ARGV = now) -> time left | -1
local now = tonumber(ARGV[1])
local ends = tonumber(redis.call('GET', KEYS[1]) or '0')
if ends > now then
  return fmt(ends - now)
end
return -1
