-- acquire.lua: take one permit from every limit and daily quota of a send, or from none.
-- Called by Limiter::acquire in src/redis_store/ops.rs; this header is the contract between them.
--
-- KEYS: KEYS[1] the app's epoch hash (grant sequence, pauses, daily quotas), then nl window
--       lists (all of one app: one Cluster slot).
-- ARGV: [1] known_seq, [2] nb, [3] nq, [4] nl,
--       then the epoch fields to read: nb pairs (pause until_ms field, pause errcode field),
--         nq pairs (quota day-number field, quota used field),
--       then nq quota limits,
--       then nl quads (limit, span_us = (window_ms + guard_ms) * 1000, ttl_ms, hold 1 | 0).
-- Returns {1, loss, now_ms, seq}                      granted; seq = the app's grant sequence
--         {2, loss, wait_ms, window_index, held}      a window is full (1-based index among
--                                                     the windows; held = 1 when it only
--                                                     counts as full after a state loss)
--         {3, loss, until_ms, kind, index, errcode}   blocked: kind 1 = a pause (index among
--                                                     the pauses, errcode WeChat's), kind
--                                                     2 = a used-up quota (index among quotas)
-- loss = 1 when this call found the app's state lost.
--
-- Cost is the point of this script's shape (it runs once per send): one HMGET reads the
-- sequence, every pause and every quota; one HSET writes the sequence and the quotas back; a
-- window is a list (RPUSH, whose answer is the new count, and PEXPIRE on a grant). Numbers the
-- client can compute (spans, TTLs, field names) come precomputed, so the script converts few
-- of them.
--
-- Time is Redis TIME (one clock for the cluster). A window keeps each grant for span_us
-- (window + guard), so no interval of that length ever holds more than `limit` grants.
--
-- A window is a list of grant times (µs, Redis clock) in grant order, oldest first. With n
-- entries and a limit L, one more grant fits when fewer than L entries are younger than the
-- span: exactly when n < L, or when the entry at index n - L (the L-th newest grant) has left
-- the span. Entries before it left before it (grant order is time order), so LTRIM drops them
-- then; a list never holds more than L entries plus those that expire with the key. The
-- script pushes first and checks after (RPUSH answers the new length), so a window far from
-- full costs one command; a refusal takes the pushes back.
--
-- Daily quotas count per Beijing day (UTC+8): the `dn` field holds the day number (days since
-- 1970-01-01 in UTC+8) the `used` field counts for; another day's count reads as 0.
-- Pauses hold their end (unix ms) and WeChat's errcode; a past end is no pause.
--
-- State loss: the epoch hash has no TTL. Every grant increments seq and returns it; callers
-- pass back the highest seq they have seen. A seq below it means grants were lost (the key
-- vanished in a restart without persistence or a flush, or a failover promoted a replica that
-- missed them): lost_at_ms is set to now and seq raised to known_seq. Each window with hold = 1
-- counts as full until lost_at + its span, when every lost grant has left it.
local nb, nq, nl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local now_us = sec * 1000000 + usec
local now_ms = sec * 1000 + (usec - usec % 1000) / 1000
local epoch = KEYS[1]

-- 0. The epoch, the pauses and the quotas, in one read; detect a loss.
local e = redis.call('HMGET', epoch, 'seq', 'lost_at_ms', unpack(ARGV, 5, 4 + 2 * nb + 2 * nq))
local seq = tonumber(e[1]) or 0
local lost_at = tonumber(e[2]) or 0
local known_seq = tonumber(ARGV[1])
local loss = 0
if known_seq > seq then
  loss, seq, lost_at = 1, known_seq, now_ms
  redis.call('HSET', epoch, 'seq', seq, 'lost_at_ms', lost_at)
end

-- 1. Pauses and quotas outrank a full window.
local blocked_until, kind, index, errcode = 0, 0, 0, 0
for i = 1, nb do
  local u = tonumber(e[2 * i + 1])
  if u and u > now_ms and u > blocked_until then
    blocked_until, kind, index, errcode = u, 1, i, tonumber(e[2 * i + 2]) or 0
  end
end
local qf = 4 + 2 * nb -- ARGV index before the quota fields
local ql = qf + 2 * nq -- ARGV index before the quota limits
local used = {}
local day_n = 0
if nq > 0 then
  local b = now_ms + 28800000
  day_n = (b - b % 86400000) / 86400000
end
for i = 1, nq do
  local u = 0
  if tonumber(e[2 + 2 * nb + 2 * i - 1]) == day_n then
    u = tonumber(e[2 + 2 * nb + 2 * i]) or 0
  end
  used[i] = u
  if u >= tonumber(ARGV[ql + i]) then
    local day_end_ms = (day_n + 1) * 86400000 - 28800000
    if day_end_ms > blocked_until then
      blocked_until, kind, index, errcode = day_end_ms, 2, i, 0
    end
  end
end
if blocked_until > 0 then
  return {3, loss, blocked_until, kind, index, errcode}
end

-- How long until one more grant fits in window i holding n grants (<= 0: it fits now): the
-- limit-th newest grant must have left the span.
local wl = ql + nq -- ARGV index before the window quads
local function wait_of(i, n)
  local limit = tonumber(ARGV[wl + 4 * i - 3])
  if n < limit then
    return 0
  end
  local span_us = tonumber(ARGV[wl + 4 * i - 2])
  if limit == 0 then
    return span_us
  end
  return (tonumber(redis.call('LINDEX', KEYS[1 + i], n - limit)) or now_us) + span_us - now_us
end

-- 2. Windows. A window held after a state loss counts as full until every lost grant has
-- left it: then nothing is pushed, and every window is only read.
local wait_us, wait_index, held = 0, 0, 0
if lost_at > 0 then
  for i = 1, nl do
    if ARGV[wl + 4 * i] == '1' then
      local w = lost_at * 1000 + tonumber(ARGV[wl + 4 * i - 2]) - now_us
      if w > wait_us then
        wait_us, wait_index, held = w, i, 1
      end
    end
  end
  if wait_us > 0 then
    for i = 1, nl do
      local w = wait_of(i, redis.call('LLEN', KEYS[1 + i]))
      if w > wait_us then
        wait_us, wait_index, held = w, i, 0
      end
    end
    return {2, loss, math.ceil(wait_us / 1000), wait_index, held}
  end
end

-- 3. Take the permit from every window (push this grant's time), then check each against
-- the grants it held before: a full one refuses, and every push is taken back (RPOP: the
-- script is atomic, so each push is still its list's last entry). In a window that had room
-- only because its oldest grants left the span, LTRIM drops them. The grant time is TIME's
-- own digits.
local stamp = t[2]
if #stamp < 6 then
  stamp = string.rep('0', 6 - #stamp) .. stamp
end
stamp = t[1] .. stamp
for i = 1, nl do
  local key = KEYS[1 + i]
  local n = redis.call('RPUSH', key, stamp) - 1
  -- A window far from full (fewer grants than its limit, however old) needs no more.
  local limit = tonumber(ARGV[wl + 4 * i - 3])
  if n >= limit then
    local w = wait_of(i, n)
    if w > 0 then
      if w > wait_us then
        wait_us, wait_index, held = w, i, 0
      end
    else
      redis.call('LTRIM', key, n - limit + 1, -1)
    end
  end
end
if wait_us > 0 then
  for i = 1, nl do
    redis.call('RPOP', KEYS[1 + i])
  end
  return {2, loss, math.ceil(wait_us / 1000), wait_index, held}
end
for i = 1, nl do
  redis.call('PEXPIRE', KEYS[1 + i], ARGV[wl + 4 * i - 1])
end
seq = seq + 1
if nq == 0 then
  redis.call('HSET', epoch, 'seq', seq)
elseif nq == 1 and used[1] > 0 then
  redis.call('HSET', epoch, 'seq', seq, ARGV[qf + 2], used[1] + 1)
else
  local hs = {'seq', seq}
  for i = 1, nq do
    hs[#hs + 1] = ARGV[qf + 2 * i]
    hs[#hs + 1] = used[i] + 1
    if used[i] == 0 then
      hs[#hs + 1] = ARGV[qf + 2 * i - 1]
      hs[#hs + 1] = day_n
    end
  end
  redis.call('HSET', epoch, unpack(hs))
end
return {1, loss, now_ms, seq}
