-- token_write.lua: store a freshly fetched token unless its writer's fence is stale.
-- KEYS[1] token hash, KEYS[2] fence counter.
-- ARGV: access_token, expires_in_ms, fence, node, source, age_ms (time since the fetch was sent).
-- Refused ({0, newest_fence}) when the fence is older than the stored token's or than the
-- current leadership's: a leader that lost its lease can never overwrite a newer token.
-- Written: {1, expires_at_ms, fetched_at_ms} on the Redis clock, counted from when the fetch was
-- sent (now - age_ms); the key expires with the token.
local fence = tonumber(ARGV[3])
local stored = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local leader = tonumber(redis.call('GET', KEYS[2]) or '0')
local newest = math.max(stored, leader)
if fence < newest then
  return {0, newest}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fetched_at = now_ms - tonumber(ARGV[6])
local expires_at = fetched_at + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'access_token', ARGV[1], 'expires_at_ms', expires_at,
  'fence', fence, 'node', ARGV[4], 'fetched_at_ms', fetched_at, 'source', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], expires_at)
return {1, expires_at, fetched_at}
