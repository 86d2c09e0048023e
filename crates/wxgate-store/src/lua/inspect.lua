-- inspect.lua: read one app's shared state for an operator, changing nothing.
-- Called by Inspect::inspect_app in src/redis_store/ops.rs; this header is the contract.
--
-- KEYS: token hash, leader, fence, epoch, then nw window keys, nq quota keys, nb pause keys
--       (all of one app: one Cluster slot).
-- ARGV: nw, nq, nb, guard_ms, scan_limit, idem MATCH pattern, recipient MATCH pattern ('' for
--       none), then nw pairs (limit, window_ms).
-- Returns {now_ms,
--          token fields {access_token, expires_at_ms, fence, node, fetched_at_ms, source}
--            (all '' when none),
--          leader node ('' for none), leader pttl, fence ('' for none),
--          epoch seq, epoch lost_at_ms,
--          nw pairs (used, frees_in_ms), nq pairs (day, used), nb pairs (errcode, pttl),
--          idem count, idem capped, recipients count, recipients capped}
--
-- Windows are counted (ZCOUNT inside window + guard), never trimmed. The two counts are a
-- bounded SCAN of this node (the one owning the app's slot, in a Cluster): at most
-- scan_limit keys are examined; capped = 1 when it stopped early (scan_limit 0: no scan, 0
-- counted, capped).
local nw, nq, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local guard_us = tonumber(ARGV[4]) * 1000
local scan_limit = tonumber(ARGV[5])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local out = {now_ms}

local tok = redis.call('HMGET', KEYS[1], 'access_token', 'expires_at_ms', 'fence', 'node',
  'fetched_at_ms', 'source')
for i = 1, 6 do
  out[#out + 1] = tok[i] or ''
end
out[#out + 1] = redis.call('GET', KEYS[2]) or ''
out[#out + 1] = redis.call('PTTL', KEYS[2])
out[#out + 1] = redis.call('GET', KEYS[3]) or ''
local e = redis.call('HMGET', KEYS[4], 'seq', 'lost_at_ms')
out[#out + 1] = e[1] or '0'
out[#out + 1] = e[2] or '0'

for i = 1, nw do
  local key = KEYS[4 + i]
  local limit = tonumber(ARGV[7 + 2 * i - 1])
  local span_us = tonumber(ARGV[7 + 2 * i]) * 1000 + guard_us
  local from = string.format('(%.0f', now_us - span_us)
  local used = redis.call('ZCOUNT', key, from, '+inf')
  local frees = 0
  if used >= limit then
    if limit > 0 then
      -- The entry that must leave before one more fits.
      local en = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT',
        used - limit, 1)
      frees = math.max(1, math.ceil((tonumber(en[2]) + span_us - now_us) / 1000))
    else
      frees = math.ceil(span_us / 1000)
    end
  end
  out[#out + 1] = used
  out[#out + 1] = frees
end
for i = 1, nq do
  local q = redis.call('HMGET', KEYS[4 + nw + i], 'day', 'used')
  out[#out + 1] = q[1] or ''
  out[#out + 1] = q[2] or '0'
end
for i = 1, nb do
  local key = KEYS[4 + nw + nq + i]
  out[#out + 1] = redis.call('GET', key) or ''
  out[#out + 1] = redis.call('PTTL', key)
end

local function count(pattern)
  if pattern == '' then
    return 0, 0
  end
  if scan_limit <= 0 then
    return 0, 1
  end
  local cursor, n, seen = '0', 0, 0
  repeat
    local r = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = r[1]
    n = n + #r[2]
    seen = seen + 1000
  until cursor == '0' or seen >= scan_limit
  if cursor ~= '0' then
    return n, 1
  end
  return n, 0
end
local n, capped = count(ARGV[6])
out[#out + 1] = n
out[#out + 1] = capped
n, capped = count(ARGV[7])
out[#out + 1] = n
out[#out + 1] = capped
return out
