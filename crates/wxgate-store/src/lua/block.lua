-- block.lua: stop every node from calling an API until a time (WeChat answered 45009/45011).
-- KEYS[1] pause key. ARGV: until_ms, errcode. The key holds WeChat's errcode and expires when
-- the pause ends. A later pause extends, never shortens.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(ARGV[1])
if until_ms <= now_ms then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 and now_ms + pttl >= until_ms then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', until_ms - now_ms)
return 1
