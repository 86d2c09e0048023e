-- idem_release.lua: drop an unfinished claim of the caller's so the request may be retried.
-- KEYS[1] idem hash. ARGV[1] request_id. Returns 1 if dropped.
local h = redis.call('HMGET', KEYS[1], 'state', 'request_id')
if h[1] == 'in_progress' and h[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
