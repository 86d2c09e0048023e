-- idem_complete.lua: store the result of a claim, if the claim is still the caller's.
-- KEYS[1] idem hash. ARGV: request_id, result, ttl_ms. Returns 1 if stored.
if redis.call('HGET', KEYS[1], 'request_id') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
