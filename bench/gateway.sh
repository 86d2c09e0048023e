#!/usr/bin/env bash
# Gateway throughput benchmark (not a test): release wxgate in front of the fake WeChat, on this
# machine's loopback, loaded by wrk. Prints req/s and latency for:
#   1. the fake WeChat alone (the upstream's ceiling),
#   2. template sends through one gateway node (memory store), logs at warn,
#   3. the same with info logs (one JSON line per send) written to a file,
#   4. with the shared state in a local redis-server (one acquire script per send),
#   5. the same with limits configured (app window, per-recipient window, daily quota),
#   6. the "bare hop" floor of toolbox.md §6 (crates/wxgate-server/examples/bare_hop.rs) against
#      the same fake and Redis: parse JSON, one EVALSHA, one upstream POST.
# Usage: bash bench/gateway.sh [DURATION_SECS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-5}; conns=${2:-32}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release -q -p wxgate
cargo build --release -q -p wxgate-server --example bare_hop
bin=${CARGO_TARGET_DIR:-target}/release/wxgate
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
fake_port=$(port); gw_port=$(port)

cat > "$work/fake.toml" <<TOML
max_records = 100000
[[apps]]
appid = "wx0123456789abcdef"
secret = "demo-secret"
kind = "official_account"
accept_any_openid = true
[[apps.templates]]
template_id = "demo-order-shipped"
kind = "template"
content = "{{character_string1.DATA}}{{thing2.DATA}}{{time3.DATA}}"
TOML
cat > "$work/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$gw_port"
workers = 1
[upstream]
base_url = "http://127.0.0.1:$fake_port"
[apps.bench]
appid = "wx0123456789abcdef"
kind = "official_account"
secret = "demo-secret"
[api_keys.bench]
key = "bench-key-0123456789abcdef"
apps = ["bench"]
TOML
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }

"$bin" fake-wechat --listen "127.0.0.1:$fake_port" --config "$work/fake.toml" >/dev/null 2>&1 & pids+=($!)
wait_up "http://127.0.0.1:$fake_port/_fake/health"
echo "== 1. fake WeChat alone: wrk -t1 -c$conns -d${dur}s"
wrk -t1 -c"$conns" -d"${dur}s" -s crates/wxgate-fake-wechat/examples/post.lua "http://127.0.0.1:$fake_port" | grep -E 'Requests/sec|Latency|non'

for level in warn info; do
  WXGATE_LOG=$level "$bin" serve --config "$work/gw.toml" >"$work/gw-$level.log" 2>&1 & gw=$!; pids+=($gw)
  wait_up "http://127.0.0.1:$gw_port/readyz"
  echo "== gateway, 1 worker, logs at $level: wrk -t1 -c$conns -d${dur}s"
  wrk -t1 -c"$conns" -d"${dur}s" -s bench/gateway-template.lua "http://127.0.0.1:$gw_port/v1/apps/bench/messages/template" | grep -E 'Requests/sec|Latency|non-200|p50'
  kill $gw; wait $gw 2>/dev/null || true
done
# Shared state in Redis: the same sends, one acquire script per send (block check only), then
# with limits (app window, per-recipient window, daily quota: 4 keys per acquire).
redis_port=$(port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
pids+=("$(sleep 0.3; cat "$work/redis.pid")")
cat > "$work/redis.toml" <<TOML
[store]
kind = "redis"
prefix = "bench"
[store.redis]
url = "redis://127.0.0.1:$redis_port"
TOML
cat > "$work/limits.toml" <<TOML
[apps.bench.limits]
template_send = [{ limit = 1000000, window_ms = 1000 }]
per_recipient = [{ limit = 5, window_ms = 60000 }]
[apps.bench.quotas]
template_send = 1000000000
TOML
for variant in redis redis-limits; do
  cat "$work/gw.toml" "$work/redis.toml" > "$work/gw-$variant.toml"
  [ "$variant" = redis-limits ] && cat "$work/limits.toml" >> "$work/gw-$variant.toml"
  WXGATE_LOG=warn "$bin" serve --config "$work/gw-$variant.toml" >"$work/gw-$variant.log" 2>&1 & gw=$!; pids+=($gw)
  wait_up "http://127.0.0.1:$gw_port/readyz"
  echo "== gateway, 1 worker, $variant store, logs at warn: wrk -t1 -c$conns -d${dur}s"
  wrk -t1 -c"$conns" -d"${dur}s" -s bench/gateway-template.lua "http://127.0.0.1:$gw_port/v1/apps/bench/messages/template" | grep -E 'Requests/sec|Latency|non-200|p50'
  kill $gw; wait $gw 2>/dev/null || true
done
# The floor: the bare hop (parse, one EVALSHA, one POST to the same fake, answer).
"${CARGO_TARGET_DIR:-target}/release/examples/bare_hop" "127.0.0.1:$gw_port" "redis://127.0.0.1:$redis_port" "http://127.0.0.1:$fake_port" wx0123456789abcdef demo-secret >"$work/hop.log" 2>&1 & hop=$!; pids+=($hop)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$gw_port/" && break; sleep 0.1; done
echo "== bare hop (toolbox.md §6), 1 worker, same fake and Redis: wrk -t1 -c$conns -d${dur}s"
wrk -t1 -c"$conns" -d"${dur}s" -s bench/gateway-template.lua "http://127.0.0.1:$gw_port/send" | grep -E 'Requests/sec|Latency|non-200|p50'
kill $hop; wait $hop 2>/dev/null || true
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true

sends=$(curl -s "http://127.0.0.1:$fake_port/_fake/calls?path=/cgi-bin/message/template/send" | python3 -c 'import json,sys;c=json.load(sys.stdin);print(len(c), sum(1 for x in c if x["errcode"]!=0))')
echo "fake record (last 100000 kept): template sends, non-zero errcodes: $sends"
