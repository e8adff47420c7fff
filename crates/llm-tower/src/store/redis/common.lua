-- Shared by every script of llm-tower's RedisStore. Times are microseconds
-- since the Unix epoch on the caller's clock, passed in ARGV: no script
-- reads the server's TIME. Numbers are Lua doubles, exact up to 2^53.

-- An integer as a decimal string, for replies and stored values (a Lua
-- number replied as such is truncated to 64 bits by Redis).
local function fmt(x)
  return string.format('%.0f', x)
end

-- The PX of a key whose state matters until `untl` (us): the time left,
-- in ms rounded up, plus `margin` ms for clock skew between hosts.
local function px(untl, now, margin)
  return fmt(math.max(1, math.ceil((untl - now) / 1000)) + margin)
end
