-- idem_complete.lua: store the final answer of a claim, if the claim is still the caller's.
-- KEYS[1] idem hash. ARGV: request_id, result, ttl_ms. Returns 1 if stored.
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id')
if h[1] ~= 'in_progress' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_until_ms')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
