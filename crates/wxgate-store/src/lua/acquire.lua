-- acquire.lua: take one permit from every limit and daily quota of a send, or from none.
--
-- KEYS: nb block keys, then nq quota keys, then nl window keys (all of one app: one slot).
-- ARGV: nb, nq, nl, guard_ms, member,
--       then nq quota limits,
--       then nl pairs (limit, window_ms).
-- Returns {1, now_ms}                 granted
--         {2, wait_ms, window_index}  a window is full (1-based index among the windows)
--         {3, until_ms, reason}       blocked (a block key or a used-up quota)
-- Time is Redis TIME (one clock for the cluster). A window keeps each grant for
-- window_ms + guard_ms, so no interval of that length ever holds more than `limit` grants.
local nb, nq, nl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local guard_us = tonumber(ARGV[4]) * 1000
local member = ARGV[5]
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

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
local today, day_end_ms = '', 0
if nq > 0 then
  local day_n = math.floor((now_ms + 28800000) / 86400000)
  today = civil(day_n)
  day_end_ms = (day_n + 1) * 86400000 - 28800000
end

-- 1. Blocks and quotas outrank a full window.
local blocked_until, reason = 0, ''
for i = 1, nb do
  local pttl = redis.call('PTTL', KEYS[i])
  if pttl > 0 and now_ms + pttl > blocked_until then
    blocked_until = now_ms + pttl
    reason = KEYS[i] .. ': ' .. (redis.call('GET', KEYS[i]) or '')
  end
end
for i = 1, nq do
  local key = KEYS[nb + i]
  local limit = tonumber(ARGV[5 + i])
  local q = redis.call('HMGET', key, 'day', 'used')
  local used = 0
  if q[1] == today then
    used = tonumber(q[2] or '0')
  end
  if used >= limit and day_end_ms > blocked_until then
    blocked_until = day_end_ms
    reason = key
  end
end
if blocked_until > 0 then
  return {3, blocked_until, reason}
end

-- 2. Sliding logs: drop what left the window, then count.
local wait_ms, wait_index = 0, 0
for i = 1, nl do
  local key = KEYS[nb + nq + i]
  local limit = tonumber(ARGV[5 + nq + 2 * i - 1])
  local span_us = (tonumber(ARGV[5 + nq + 2 * i]) * 1000) + guard_us
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now_us - span_us))
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local w = span_us
    if limit > 0 then
      local e = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      w = tonumber(e[2]) + span_us - now_us
    end
    w = math.max(1, math.ceil(w / 1000))
    if w > wait_ms then
      wait_ms, wait_index = w, i
    end
  end
end
if wait_ms > 0 then
  return {2, wait_ms, wait_index}
end

-- 3. Every limit allows: take one permit from each.
local score = string.format('%.0f', now_us)
local tag = member .. '@' .. score
for i = 1, nl do
  local key = KEYS[nb + nq + i]
  local span_ms = tonumber(ARGV[5 + nq + 2 * i]) + tonumber(ARGV[4])
  redis.call('ZADD', key, score, tag)
  redis.call('PEXPIRE', key, span_ms + 1000)
end
for i = 1, nq do
  local key = KEYS[nb + i]
  if redis.call('HGET', key, 'day') == today then
    redis.call('HINCRBY', key, 'used', 1)
  else
    redis.call('HSET', key, 'day', today, 'used', 1)
    -- Kept one day past the reset, so operators can read yesterday's use.
    redis.call('PEXPIREAT', key, day_end_ms + 86400000)
  end
end
return {1, now_ms}
