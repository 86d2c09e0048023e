-- wrk script: fetches a stable token once, then POSTs valid template sends.
--   wrk -t1 -c32 -d5s -s crates/wxgate-fake-wechat/examples/post.lua http://127.0.0.1:PORT
-- The token is fetched with a plain socket in init() (wrk has no HTTP client in Lua).
local token = nil


init = function(args)
  local body = '{"grant_type":"client_credential","appid":"wx0123456789abcdef","secret":"demo-secret"}'
  local h = io.popen("curl -s -X POST -d '" .. body .. "' " .. wrk.scheme .. "://" .. wrk.host .. ":" .. wrk.port .. "/cgi-bin/stable_token")
  local answer = h:read("*a")
  h:close()
  token = string.match(answer, '"access_token":"([^"]+)"')
  assert(token, "no token in " .. answer)
  wrk.method = "POST"
  wrk.path = "/cgi-bin/message/template/send?access_token=" .. token
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"touser":"o-bench-user-0001","template_id":"demo-order-shipped","url":"https://example.com/o/1",'
    .. '"data":{"character_string1":{"value":"SN20240101"},"thing2":{"value":"咖啡豆"},'
    .. '"time3":{"value":"2024年1月1日 15:01"}}}'
end

local non_ok = 0
response = function(status, headers, body)
  if status ~= 200 or not string.find(body, '"errcode":0', 1, true) then
    non_ok = non_ok + 1
    if non_ok <= 3 then print(status, body) end
  end
end
