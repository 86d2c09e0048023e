-- acquire.lua: take one permit from every limit and daily quota of a send, or from none.
-- Called by Limiter::acquire in src/redis_store/ops.rs; this header is the contract between them.
--
-- KEYS: KEYS[1] the app's epoch hash, then nb pause keys, then nq quota keys, then nl window
--       keys (all of one app: one Cluster slot).
-- ARGV: nb, nq, nl, guard_ms, member, known_seq, hold (1 | 0), hold_max_window_ms,
--       then nq quota limits,
--       then nl pairs (limit, window_ms).
-- Returns {1, loss, now_ms, seq}                      granted; seq = the app's grant sequence
--         {2, loss, wait_ms, window_index, held}      a window is full (1-based index among
--                                                     the windows; held = 1 when it only
--                                                     counts as full after a state loss)
--         {3, loss, until_ms, kind, index, errcode}   blocked: kind 1 = a pause (index among
--                                                     the pause keys, errcode WeChat's), kind
--                                                     2 = a used-up quota (index among quotas)
-- loss = 1 when this call found the app's state lost.
--
-- Time is Redis TIME (one clock for the cluster). A window keeps each grant for
-- window_ms + guard_ms, so no interval of that length ever holds more than `limit` grants.
--
-- State loss: the epoch hash {seq, lost_at_ms} has no TTL. Every grant increments seq and
-- returns it; callers pass back the highest seq they have seen. A seq below it means grants
-- were lost (the key vanished in a restart without persistence or a flush, or a failover
-- promoted a replica that missed them): lost_at_ms is set to now and seq raised to known_seq.
-- With hold = 1, each window up to hold_max_window_ms counts as full until
-- lost_at_ms + window_ms + guard_ms, when every lost grant has left it.
local nb, nq, nl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local guard_ms = tonumber(ARGV[4])
local guard_us = guard_ms * 1000
local member = ARGV[5]
local known_seq = tonumber(ARGV[6])
local hold = ARGV[7] == '1'
local hold_max_ms = tonumber(ARGV[8])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

-- 0. The epoch: detect a loss.
local epoch = KEYS[1]
local e = redis.call('HMGET', epoch, 'seq', 'lost_at_ms')
local seq = tonumber(e[1] or '0')
local lost_at = tonumber(e[2] or '0')
local loss = 0
if known_seq > seq then
  loss = 1
  seq = known_seq
  lost_at = now_ms
  redis.call('HSET', epoch, 'seq', seq, 'lost_at_ms', lost_at)
end

-- Beijing calendar day (UTC+8) as YYYYMMDD, and the unix ms of its end: only with quotas.
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format('%04d%02d%02d', y, m, d)
end
-- The Beijing day number (days since 1970-01-01 in UTC+8) and the unix ms of its end. The
-- calendar date (YYYYMMDD, what operators read) is computed only when a quota's day changes.
local day_n = math.floor((now_ms + 28800000) / 86400000)
local day_end_ms = (day_n + 1) * 86400000 - 28800000

-- 1. Pauses and quotas outrank a full window.
local blocked_until, kind, index, errcode = 0, 0, 0, 0
for i = 1, nb do
  local pttl = redis.call('PTTL', KEYS[1 + i])
  if pttl > 0 and now_ms + pttl > blocked_until then
    blocked_until = now_ms + pttl
    kind, index = 1, i
    errcode = tonumber(redis.call('GET', KEYS[1 + i]) or '0') or 0
  end
end
-- A quota hash is {day = YYYYMMDD, dn = day number, used}; `dn` spares the calendar on every
-- call (a hash written without it, by an older version, is matched by its `day`).
local quota_today = {}
for i = 1, nq do
  local key = KEYS[1 + nb + i]
  local limit = tonumber(ARGV[8 + i])
  local q = redis.call('HMGET', key, 'dn', 'used', 'day')
  local same = tonumber(q[1]) == day_n or (q[1] == false and q[3] == civil(day_n))
  local used = same and tonumber(q[2] or '0') or 0
  quota_today[i] = same
  if used >= limit and day_end_ms > blocked_until then
    blocked_until = day_end_ms
    kind, index, errcode = 2, i, 0
  end
end
if blocked_until > 0 then
  return {3, loss, blocked_until, kind, index, errcode}
end

-- 2. Sliding logs: count, and drop what left the window only when it looks full. A window
-- held after a state loss counts as full until every lost grant has left it.
local wait_ms, wait_index, held = 0, 0, 0
for i = 1, nl do
  local key = KEYS[1 + nb + nq + i]
  local limit = tonumber(ARGV[8 + nq + 2 * i - 1])
  local window_ms = tonumber(ARGV[8 + nq + 2 * i])
  local span_us = window_ms * 1000 + guard_us
  if hold and lost_at > 0 and window_ms <= hold_max_ms then
    local w = lost_at + window_ms + guard_ms - now_ms
    if w > wait_ms then
      wait_ms, wait_index, held = w, i, 1
    end
  end
  -- A window far from full needs no pruning: counting every entry, expired or not, already
  -- shows room. Only a window that looks full drops what left it, then counts again; so a log
  -- never holds more than `limit` entries (plus those that expire with the key).
  local count = redis.call('ZCARD', key)
  if count >= limit then
    count = count - redis.call('ZREMRANGEBYSCORE', key, '-inf', now_us - span_us)
  end
  if count >= limit then
    local w = span_us
    if limit > 0 then
      local en = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      w = tonumber(en[2]) + span_us - now_us
    end
    w = math.max(1, math.ceil(w / 1000))
    if w > wait_ms then
      wait_ms, wait_index, held = w, i, 0
    end
  end
end
if wait_ms > 0 then
  return {2, loss, wait_ms, wait_index, held}
end

-- 3. Every limit allows: take one permit from each.
-- Scores are passed as numbers (Redis writes integral numbers exactly); the member adds TIME's
-- own text, so a permit id reused after a node restart never collides with an old entry.
local tag = member .. '@' .. t[1] .. '.' .. t[2]
for i = 1, nl do
  local key = KEYS[1 + nb + nq + i]
  local span_ms = tonumber(ARGV[8 + nq + 2 * i]) + guard_ms
  redis.call('ZADD', key, now_us, tag)
  redis.call('PEXPIRE', key, span_ms + 1000)
end
for i = 1, nq do
  local key = KEYS[1 + nb + i]
  if quota_today[i] then
    redis.call('HINCRBY', key, 'used', 1)
  else
    redis.call('HSET', key, 'day', civil(day_n), 'dn', day_n, 'used', 1)
    -- Kept one day past the reset, so operators can read yesterday's use.
    redis.call('PEXPIREAT', key, day_end_ms + 86400000)
  end
end
seq = redis.call('HINCRBY', epoch, 'seq', 1)
return {1, loss, now_ms, seq}
