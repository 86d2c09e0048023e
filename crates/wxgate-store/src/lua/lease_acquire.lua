-- lease_acquire.lua: take (or keep) the app's token-refresh leadership.
-- KEYS[1] leader, KEYS[2] fence counter. ARGV: node, ttl_ms.
-- Returns the fence while `node` leads (a new leadership increments it), -1 otherwise.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if holder then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
