-- lease_release.lua: compare-and-delete. KEYS[1] leader. ARGV[1] node. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
