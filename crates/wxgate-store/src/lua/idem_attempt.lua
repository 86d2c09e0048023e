-- idem_attempt.lua: record that a claim's first upstream attempt starts now (an earlier record,
-- e.g. the attempt of a request this one took over from, is kept).
-- KEYS[1] idem hash. ARGV: request_id. Returns 1 if the claim is still request_id's.
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id')
if h[1] ~= 'in_progress' or h[2] ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSETNX', KEYS[1], 'first_attempt_ms', now_ms)
return 1
