-- idem_claim.lua: the first claimer of an idempotency key wins.
-- KEYS[1] idem hash. ARGV: request_id, ttl_ms.
-- Returns {state, request_id, result}: state 'claimed' (ours now), 'in_progress' or 'done'.
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id', 'result')
if h[1] then
  return {h[1], h[2] or '', h[3] or ''}
end
redis.call('HSET', KEYS[1], 'state', 'in_progress', 'request_id', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'claimed', ARGV[1], ''}
