-- Moves one dead letter back onto the app's stream, as a fresh delivery with its attempts reset.
-- KEYS[1] dead-letter stream, KEYS[2] stream, KEYS[3] status hash.
-- ARGV[1] dead-letter entry id, ARGV[2] message id, ARGV[3] ttl ms.
-- Returns 1 when re-queued, 0 when the dead letter is gone or its status expired (removed).
local removed = redis.call('XDEL', KEYS[1], ARGV[1])
if removed == 0 then
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'queued', 'entry', entry, 'attempts', 0, 'updated_ms', now)
redis.call('HDEL', KEYS[3], 'msgid', 'finished_ms')
-- A new generation: the engine's idempotency key (and so a template's client_msg_id) changes,
-- or the kept failure would only be replayed.
redis.call('HINCRBY', KEYS[3], 'gen', 1)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
return 1
