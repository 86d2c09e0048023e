-- lease_renew.lua: compare-and-pexpire. KEYS[1] leader. ARGV: node, ttl_ms. Returns 1 if renewed.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
