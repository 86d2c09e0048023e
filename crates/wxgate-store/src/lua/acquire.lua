-- acquire.lua: for each of m sends of one app, take one permit from every limit and daily quota
-- of the send, or from none. The sends are decided one after the other, in order, exactly as m
-- separate calls would be; the batch only shares what every call would repeat (TIME, the read
-- of the epoch hash, its write, the TTL renewals). Called by src/redis_store/batch.rs for
-- Limiter::acquire in src/redis_store/ops.rs; this header is the contract between them.
--
-- KEYS: KEYS[1] the app's epoch hash (grant sequence, pauses, daily quotas), then m groups of
--       nl window lists, one group per send in order (all of one app: one Cluster slot; a
--       list shared by several sends, such as the app's window of an API, appears in each).
-- ARGV: [1] known_seq (the highest of the sends'), [2] m, [3] nb, [4] nq, [5] nl,
--       then the epoch fields to read: nb pairs (pause until_ms field, pause errcode field),
--         nq pairs (quota day-number field, quota used field),
--       then nq quota limits,
--       then nl quads (limit, span_us = (window_ms + guard_ms) * 1000, ttl_ms, hold 1 | 0).
--       Every send of a batch has these same pauses, quotas and window shapes (the client
--       groups them so); only its window keys differ.
-- Returns an array of m answers, one per send in order:
--         {1, loss, now_ms, seq}                      granted; seq = the app's grant sequence
--         {2, loss, wait_ms, window_index, held}      a window is full (1-based index among
--                                                     the windows; held = 1 when it only
--                                                     counts as full after a state loss)
--         {3, loss, until_ms, kind, index, errcode}   blocked: kind 1 = a pause (index among
--                                                     the pauses, errcode WeChat's), kind
--                                                     2 = a used-up quota (index among quotas)
-- loss = 1 in the first answer when this call found the app's state lost (0 in the others: one
-- loss, counted once).
--
-- Cost is the point of this script's shape (it runs on the one Redis thread for every send):
-- one HMGET reads the sequence, every pause and every quota; one HSET writes the sequence and
-- the quotas back; a window is a list (RPUSH, whose answer is the new count, and one PEXPIRE
-- per list on a grant). Numbers the client can compute (spans, TTLs, field names) come
-- precomputed, so the script converts few of them. A batch of m sends costs one call's fixed
-- overhead (the EVALSHA, its arguments, TIME, HMGET, HSET) instead of m.
--
-- Time is Redis TIME (one clock for the cluster); every grant of a batch is at that instant.
-- A window keeps each grant for span_us (window + guard), so no interval of that length ever
-- holds more than `limit` grants.
--
-- A window is a list of grant times (µs, Redis clock) in grant order, oldest first. With n
-- entries and a limit L, one more grant fits when fewer than L entries are younger than the
-- span: exactly when n < L, or when the entry at index n - L (the L-th newest grant) has left
-- the span. Entries before it left before it (grant order is time order), so LTRIM drops them
-- then; a list never holds more than L entries plus those that expire with the key. The
-- script pushes first and checks after (RPUSH answers the new length), so a window far from
-- full costs one command; a refusal takes that send's pushes back (each is still its list's
-- last entry: the sends are decided one at a time).
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
local m, nb, nq, nl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local now_us = sec * 1000000 + usec
local now_ms = sec * 1000 + (usec - usec % 1000) / 1000
local epoch = KEYS[1]

-- 0. The epoch, the pauses and the quotas, in one read; detect a loss.
local e = redis.call('HMGET', epoch, 'seq', 'lost_at_ms', unpack(ARGV, 6, 5 + 2 * nb + 2 * nq))
local seq = tonumber(e[1]) or 0
local lost_at = tonumber(e[2]) or 0
local known_seq = tonumber(ARGV[1])
local loss = 0
if known_seq > seq then
  loss, seq, lost_at = 1, known_seq, now_ms
  redis.call('HSET', epoch, 'seq', seq, 'lost_at_ms', lost_at)
end

-- Pauses do not change within the call: the latest one in force blocks every send.
local paused_until, pause_index, pause_errcode = 0, 0, 0
for i = 1, nb do
  local u = tonumber(e[2 * i + 1])
  if u and u > now_ms and u > paused_until then
    paused_until, pause_index, pause_errcode = u, i, tonumber(e[2 * i + 2]) or 0
  end
end
local qf = 5 + 2 * nb -- ARGV index before the quota fields
local ql = qf + 2 * nq -- ARGV index before the quota limits
local wl = ql + nq -- ARGV index before the window quads
local used, fresh_day = {}, {}
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
  fresh_day[i] = u == 0
end

-- How long until one more grant fits in the window list `key` (window i) holding n grants
-- (<= 0: it fits now): the limit-th newest grant must have left the span.
local function wait_of(i, key, n)
  local limit = tonumber(ARGV[wl + 4 * i - 3])
  if n < limit then
    return 0
  end
  local span_us = tonumber(ARGV[wl + 4 * i - 2])
  if limit == 0 then
    return span_us
  end
  return (tonumber(redis.call('LINDEX', key, n - limit)) or now_us) + span_us - now_us
end

-- The grant time is TIME's own digits.
local stamp = t[2]
if #stamp < 6 then
  stamp = string.rep('0', 6 - #stamp) .. stamp
end
stamp = t[1] .. stamp

-- The sends, one after the other. (Written out in one loop, without a function per step: this
-- runs for every send, and Lua closures and tables cost here what a Redis command does.)
local answers = {}
local granted = {} -- the KEYS index before each granted send's windows
for j = 1, m do
  local base = 1 + (j - 1) * nl -- KEYS index before this send's windows
  local a
  -- 1. Pauses and quotas outrank a full window.
  local blocked_until, kind, index, errcode = paused_until, 1, pause_index, pause_errcode
  for i = 1, nq do
    if used[i] >= tonumber(ARGV[ql + i]) then
      local day_end_ms = (day_n + 1) * 86400000 - 28800000
      if day_end_ms > blocked_until then
        blocked_until, kind, index, errcode = day_end_ms, 2, i, 0
      end
    end
  end
  if blocked_until > 0 then
    a = {3, loss, blocked_until, kind, index, errcode}
  end
  -- 2. A window held after a state loss counts as full until every lost grant has left it:
  -- then nothing is pushed, and every window of the send is only read.
  if not a and lost_at > 0 then
    local wait_us, wait_index, held = 0, 0, 0
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
        local key = KEYS[base + i]
        local w = wait_of(i, key, redis.call('LLEN', key))
        if w > wait_us then
          wait_us, wait_index, held = w, i, 0
        end
      end
      a = {2, loss, math.ceil(wait_us / 1000), wait_index, held}
    end
  end
  -- 3. Take the permit from every window of the send (push the grant's time), then check
  -- each against the grants it held before: a full one refuses, and every push of the send
  -- is taken back (RPOP). In a window that had room only because its oldest grants left the
  -- span, LTRIM drops them.
  if not a then
    local wait_us, wait_index = 0, 0
    for i = 1, nl do
      local key = KEYS[base + i]
      local n = redis.call('RPUSH', key, stamp) - 1
      -- A window far from full (fewer grants than its limit, however old) needs no more.
      local limit = tonumber(ARGV[wl + 4 * i - 3])
      if n >= limit then
        local w = wait_of(i, key, n)
        if w > 0 then
          if w > wait_us then
            wait_us, wait_index = w, i
          end
        else
          redis.call('LTRIM', key, n - limit + 1, -1)
        end
      end
    end
    if wait_us > 0 then
      for i = 1, nl do
        redis.call('RPOP', KEYS[base + i])
      end
      a = {2, loss, math.ceil(wait_us / 1000), wait_index, 0}
    end
  end
  if not a then
    for i = 1, nq do
      used[i] = used[i] + 1
    end
    seq = seq + 1
    granted[#granted + 1] = base
    a = {1, loss, now_ms, seq}
  end
  answers[j] = a
  loss = 0 -- one loss, reported once: to the batch's first send
end
if #granted == 0 then
  return answers
end
-- Each list a grant pushed to lives its TTL from now: once per list, not per send (a list
-- shared by the sends, such as the app's window of the API, is the same key in each).
local prev = 0
for g = 1, #granted do
  local base = granted[g]
  for i = 1, nl do
    local key = KEYS[base + i]
    if g == 1 or key ~= KEYS[prev + i] then
      redis.call('PEXPIRE', key, ARGV[wl + 4 * i - 1])
    end
  end
  prev = base
end
if nq == 0 then
  redis.call('HSET', epoch, 'seq', seq)
elseif nq == 1 and not fresh_day[1] then
  redis.call('HSET', epoch, 'seq', seq, ARGV[qf + 2], used[1])
else
  local hs = {'seq', seq}
  for i = 1, nq do
    hs[#hs + 1] = ARGV[qf + 2 * i]
    hs[#hs + 1] = used[i]
    if fresh_day[i] then
      hs[#hs + 1] = ARGV[qf + 2 * i - 1]
      hs[#hs + 1] = day_n
    end
  end
  redis.call('HSET', epoch, unpack(hs))
end
return answers
