-- balance(KEYS[1] = bucket; ARGV = now) -> {spent, reserved}
local now = tonumber(ARGV[1])
local b = load(KEYS[1])
if not b or expired(b, now) then
  return {'0', '0'}
end
prune(b, now)
return {fmt(b.s), fmt(b.r)}
