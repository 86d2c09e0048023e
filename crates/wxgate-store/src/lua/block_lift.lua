-- block_lift.lua: an operator lifts a pause (the admin API's DELETE .../blocks/{api}).
-- KEYS[1] the app's epoch hash. ARGV: until_ms field, errcode field.
-- Returns 1 when a pause was in force (its end not yet passed), else 0; either way the fields
-- are gone afterwards.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
redis.call('HDEL', KEYS[1], ARGV[1], ARGV[2])
if current and current > now_ms then return 1 end
return 0
