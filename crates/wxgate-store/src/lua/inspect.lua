-- inspect.lua: read one app's shared state for an operator, changing nothing.
-- Called by Inspect::inspect_app in src/redis_store/ops.rs; this header is the contract.
--
-- KEYS: token hash, leader, fence, epoch hash, then nw window lists (all of one app: one
--       Cluster slot).
-- ARGV: nw, nq, nb, scan_limit, idem MATCH pattern, recipient MATCH pattern ('' for none),
--       then nq pairs of epoch fields (quota day number, quota used),
--       then nb pairs of epoch fields (pause until_ms, pause errcode),
--       then nw pairs (limit, span_us = (window_ms + guard_ms) * 1000).
-- Returns {now_ms,
--          token fields {access_token, expires_at_ms, fence, node, fetched_at_ms, source}
--            (all '' when none),
--          leader node ('' for none), leader pttl, fence ('' for none),
--          epoch seq, epoch lost_at_ms,
--          nw pairs (used, frees_in_ms), nq quota counts used today (Beijing day),
--          nb pairs (errcode, until_ms; until_ms 0 when no pause is in force),
--          idem count, idem capped, recipients count, recipients capped}
--
-- A window list holds grant times in grant order (see acquire.lua); the entries inside the
-- window are found by a binary search (LINDEX), never trimmed. The two counts are a bounded
-- SCAN of this node (the one owning the app's slot, in a Cluster): at most scan_limit keys
-- are examined; capped = 1 when it stopped early (scan_limit 0: no scan, 0 counted, capped).
local nw, nq, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local scan_limit = tonumber(ARGV[4])
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
-- The epoch hash in one read: sequence, loss, then the quota and pause fields.
local e = redis.call('HMGET', KEYS[4], 'seq', 'lost_at_ms', unpack(ARGV, 7, 6 + 2 * nq + 2 * nb))
out[#out + 1] = e[1] or '0'
out[#out + 1] = e[2] or '0'

local wa = 6 + 2 * nq + 2 * nb -- ARGV index before the window pairs
for i = 1, nw do
  local key = KEYS[4 + i]
  local limit = tonumber(ARGV[wa + 2 * i - 1])
  local span_us = tonumber(ARGV[wa + 2 * i])
  local cutoff = now_us - span_us
  local n = redis.call('LLEN', key)
  -- The first index whose grant is inside the window.
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(redis.call('LINDEX', key, mid)) > cutoff then
      hi = mid
    else
      lo = mid + 1
    end
  end
  local used = n - lo
  local frees = 0
  if used >= limit then
    if limit > 0 then
      -- The grant that must leave before one more fits.
      local g = tonumber(redis.call('LINDEX', key, n - limit))
      frees = math.max(1, math.ceil((g + span_us - now_us) / 1000))
    else
      frees = math.ceil(span_us / 1000)
    end
  end
  out[#out + 1] = used
  out[#out + 1] = frees
end

local day_n = math.floor((now_ms + 28800000) / 86400000)
for i = 1, nq do
  if tonumber(e[2 + 2 * i - 1]) == day_n then
    out[#out + 1] = tonumber(e[2 + 2 * i]) or 0
  else
    out[#out + 1] = 0
  end
end
for i = 1, nb do
  local u = tonumber(e[2 + 2 * nq + 2 * i - 1]) or 0
  if u > now_ms then
    out[#out + 1] = tonumber(e[2 + 2 * nq + 2 * i]) or 0
    out[#out + 1] = u
  else
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
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
local n, capped = count(ARGV[5])
out[#out + 1] = n
out[#out + 1] = capped
n, capped = count(ARGV[6])
out[#out + 1] = n
out[#out + 1] = capped
return out
