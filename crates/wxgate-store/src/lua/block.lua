-- block.lua: stop every node from calling an API until a time (WeChat answered 45009/45011).
-- KEYS[1] the app's epoch hash. ARGV: until_ms field, errcode field, until_ms, errcode.
-- The pause is two fields of the epoch hash, read by acquire.lua in the same HMGET as the
-- grant sequence; a pause whose end has passed is no pause. A later pause extends, never
-- shortens. Returns 1 when it set or extended the pause, else 0.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(ARGV[3])
if until_ms <= now_ms then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if current and current >= until_ms then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], until_ms, ARGV[2], ARGV[4])
return 1
