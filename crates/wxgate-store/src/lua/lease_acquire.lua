-- lease_acquire.lua: take (or keep) the app's token-refresh leadership.
-- KEYS[1] leader, KEYS[2] fence counter. ARGV: node, ttl_ms, known_fence (the highest fence the
-- caller has seen).
-- Returns the fence while `node` leads (a new leadership increments it), -1 otherwise.
-- A new fence is never at or below known_fence: a Redis that lost the counter (a restart without
-- persistence) must not hand out a fence an older leader already used, or that leader's late
-- write would win over the new one's.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if holder then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
local known = tonumber(ARGV[3] or '0')
if fence <= known then
  fence = known + 1
  redis.call('SET', KEYS[2], fence)
end
return fence
