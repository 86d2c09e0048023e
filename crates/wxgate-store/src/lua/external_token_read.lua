-- external_token_read.lua: read a token another system owns (token_mode = "external").
-- KEYS[1] the configured key: a string holding the token, or a hash with `access_token` and
-- optionally `expires_at_ms` (unix ms). Returns {kind, token, expires_at_ms, now_ms} where kind
-- is 'none' (missing), 'string' or 'hash', and expires_at_ms is the explicit field, else the
-- key's expiry, else -1 (unknown).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = redis.call('TYPE', KEYS[1])['ok']
local token, expires = '', -1
if kind == 'string' then
  token = redis.call('GET', KEYS[1])
elseif kind == 'hash' then
  local h = redis.call('HMGET', KEYS[1], 'access_token', 'expires_at_ms')
  token = h[1] or ''
  if h[2] then expires = tonumber(h[2]) or -1 end
else
  return {'none', '', -1, now_ms}
end
if expires < 0 then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then expires = now_ms + pttl end
end
return {kind, token, expires, now_ms}
