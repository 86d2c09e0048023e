-- idem_renew.lua: extend the lease of a claim while its request runs.
-- KEYS[1] idem hash. ARGV: request_id, lease_ms. Returns 1 if the claim is still request_id's.
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id')
if h[1] ~= 'in_progress' or h[2] ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease_until_ms', now_ms + tonumber(ARGV[2]))
return 1
