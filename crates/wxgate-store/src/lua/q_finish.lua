-- Stores a message's final outcome, then acknowledges and deletes its stream entry, atomically:
-- an entry is acknowledged only once its outcome is stored, and only acknowledged entries are
-- ever deleted (the stream is never trimmed by length).
-- KEYS[1] stream, KEYS[2] status hash, KEYS[3] dead-letter stream (`...:dlq`).
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] state (`sent` | `failed`), ARGV[4] msgid or '',
-- ARGV[5] error JSON or '', ARGV[6] '1' to dead-letter, ARGV[7] ttl ms, ARGV[8] message id,
-- ARGV[9] node, ARGV[10] the delivery count to record or ''.
-- Returns 1 when this call acknowledged the entry, 0 when it was acknowledged already.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'state', ARGV[3], 'updated_ms', now, 'finished_ms', now,
  'node', ARGV[9])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'msgid', ARGV[4])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[2], 'attempts', ARGV[10])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'error', ARGV[5])
else
  redis.call('HDEL', KEYS[2], 'error')
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]))
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[6] == '1' and acked == 1 then
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[8])
end
return acked
