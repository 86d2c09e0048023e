-- Enqueues one message for asynchronous delivery, atomically: enqueue idempotency, back-pressure,
-- the stream entry and the message's status hash.
-- KEYS[1] stream (`...:q`), KEYS[2] status hash (`...:qmsg:<id>`), KEYS[3] enqueue idempotency
-- mapping (`...:qidem:<caller>:<key>`; ignored unless ARGV[5] == '1').
-- ARGV[1] message id, ARGV[2] payload (JSON), ARGV[3] max backlog, ARGV[4] ttl ms,
-- ARGV[5] '1' when an idempotency key was given.
-- Returns {1, id} (already enqueued under that key: the same id), {2, id, entry} (enqueued),
-- or {0, depth, oldest_age_ms} (the backlog is full: nothing written).
local ttl = tonumber(ARGV[4])
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {1, existing}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[3]) then
  local age = 0
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if first[1] then
    local ms = tonumber(string.match(first[1][1], '^(%d+)'))
    if ms and now > ms then
      age = now - ms
    end
  end
  return {0, depth, age}
end
local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'queued', 'payload', ARGV[2], 'entry', entry,
  'created_ms', now, 'updated_ms', now, 'attempts', 0)
redis.call('PEXPIRE', KEYS[2], ttl)
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ttl)
end
return {2, ARGV[1], entry}
