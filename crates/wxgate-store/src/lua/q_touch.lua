-- Keeps an entry this consumer is delivering from looking idle (XCLAIM to itself resets its
-- idle time; JUSTID leaves the delivery count alone) — only while the consumer still owns it.
-- KEYS[1] stream. ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer.
-- Returns 1 when still owned (and touched), 0 otherwise.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p[1] and p[1][2] == ARGV[3] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
  return 1
end
return 0
