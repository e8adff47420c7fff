-- set_flag(KEYS[1] = flag; ARGV = now, ttl, margin): the flag holds its end.
local now, ttl, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('SET', KEYS[1], fmt(now + ttl), 'PX', px(now + ttl, now, margin))
return 0
