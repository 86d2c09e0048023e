-- wrk script: POSTs valid template sends through the gateway (see bench/gateway.sh).
-- Each request uses another recipient (openid) so nothing is de-duplicated or per-user limited;
-- the openids carry a tag of their own per run, so a run never meets the per-recipient windows
-- an earlier run left in the same Redis.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key-0123456789abcdef"

local n = 0
math.randomseed(os.time())
local tag = string.format("%x%04x", os.time(), math.random(0, 65535))
request = function()
  n = n + 1
  local body = '{"touser":"o-bench-' .. tag .. '-' .. n .. '","template_id":"demo-order-shipped",'
    .. '"data":{"character_string1":{"value":"SN20261127"},"thing2":{"value":"Blue mug"},'
    .. '"time3":{"value":"2026-11-27 10:30"}}}'
  return wrk.format(nil, nil, nil, body)
end

local bad = 0
response = function(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad <= 3 then print(status, body) end
  end
end

done = function(summary, latency, requests)
  io.write(string.format("non-200 answers: %d\n", bad))
  io.write(string.format("requests %d\n", summary.requests))
  io.write(string.format("p50 %.2f ms, p99 %.2f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
