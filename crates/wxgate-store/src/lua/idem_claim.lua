-- idem_claim.lua: claim an idempotency key. A claim is a lease: it lives lease_ms unless its
-- request renews it; a claim whose lease lapsed (its request died, or released it) is taken
-- over by the next request, which gets what the previous one recorded.
-- KEYS[1] idem hash {state, request_id, result, api, client_msg_id, first_attempt_ms,
--                    lease_until_ms}.
-- ARGV: request_id, lease_ms, ttl_ms, api, client_msg_id ('' for none).
-- Returns {state, request_id, result, lease_left_ms, api, client_msg_id, first_attempt_ms, now_ms}
--   state 'claimed' (new, ours), 'taken_over' (ours; the rest describes the previous claim),
--   'in_progress' (someone else's, live), 'done' (result stored).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_until = now_ms + tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id', 'result', 'api', 'client_msg_id',
  'first_attempt_ms', 'lease_until_ms')
if h[1] == 'done' then
  return {'done', h[2] or '', h[3] or '', 0, '', '', 0, now_ms}
end
if h[1] == 'in_progress' then
  local left = tonumber(h[7] or '0') - now_ms
  if left > 0 then
    return {'in_progress', h[2] or '', '', left, '', '', 0, now_ms}
  end
  redis.call('HSET', KEYS[1], 'request_id', ARGV[1], 'lease_until_ms', lease_until)
  return {'taken_over', h[2] or '', '', 0, h[4] or '', h[5] or '', tonumber(h[6] or '0'), now_ms}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'in_progress', 'request_id', ARGV[1], 'api', ARGV[4],
  'client_msg_id', ARGV[5], 'lease_until_ms', lease_until, 'created_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'claimed', ARGV[1], '', 0, '', '', 0, now_ms}
