-- Updates fields of a queued message's status while it is delivered; an expired status is
-- not recreated. KEYS[1] status hash. ARGV: field, value, field, value, ...
-- Returns 1 when updated, 0 when the status is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'updated_ms', now, unpack(ARGV))
return 1
