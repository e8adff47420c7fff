-- clear_flag(KEYS[1] = flag)
redis.call('DEL', KEYS[1])
return 0
