-- token_invalidate.lua: compare-and-delete. Deletes the token only if it is the one WeChat
-- rejected, so a late report never evicts a newer token.
-- KEYS[1] token hash. ARGV[1] the rejected token. Returns 1 if deleted.
if redis.call('HGET', KEYS[1], 'access_token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
