-- idem_release.lua: end the caller's claim without an answer, so the request may be sent
-- again: the lease lapses at once and the next request takes the claim over. The record of an
-- upstream attempt is kept when ARGV[2] = '1' (the attempt may have reached WeChat), else
-- cleared (nothing was delivered).
-- KEYS[1] idem hash. ARGV: request_id, keep_attempt. Returns 1 if released.
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id')
if h[1] ~= 'in_progress' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_until_ms', 0)
if ARGV[2] ~= '1' then
  redis.call('HDEL', KEYS[1], 'first_attempt_ms')
end
return 1
