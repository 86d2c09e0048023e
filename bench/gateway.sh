#!/usr/bin/env bash
# Gateway throughput benchmark (not a test): release wxgate on this machine's loopback, loaded by
# wrk (template sends, a new openid per request), every variant reported as a ratio of the "bare
# hop" measured in the same run (crates/wxgate-server/examples/bare_hop.rs: parse the JSON, one
# sliding-log EVALSHA, one upstream POST, answer — the floor of any gateway with shared limits).
#
# Variants, in each round:
#   hop            the bare hop (measured first and last in each round; the ratio uses their mean)
#   memory         one gateway node, memory store, logs at warn
#   memory-info    the same with info logs (one JSON line per send) written to a file
#   redis          shared state in a local redis-server, no limits (one acquire script: the blocks)
#   redis-limits   the same with an app window, a per-recipient window and a daily quota
#   hop-reqwest    the bare hop posting with reqwest (as first written; the gateway and the hop
#                  now use hyper's client directly): shows what the HTTP client costs
# and, for the hops and Redis variants, Redis commands per send (INFO commandstats, scripts' inner
# commands included, divided by the sends wrk completed).
#
# Upstream: UPSTREAM=zero (default: crates/wxgate-fake-wechat/examples/zero.rs, answers without
# parsing or recording, so its own cost does not hide the gateway's) or UPSTREAM=fake (the full
# fake WeChat; its record is checked for non-zero errcodes at the end).
#
# VARIANTS="redis redis-limits" runs only those variants (hop-first and hop-last always run).
# BASELINE=path/to/wxgate adds `redis-limits-base`: the redis-limits variant served by that
# binary (a release build of an earlier commit), run next to redis-limits in each round (after
# it in odd rounds, before it in even ones), so a change is measured against its baseline in
# the same rounds.
#
# Usage: [UPSTREAM=zero|fake] [VARIANTS=...] [BASELINE=...] bash bench/gateway.sh [DURATION_SECS=5] [CONNECTIONS=32] [ROUNDS=1]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-5}; conns=${2:-32}; rounds=${3:-1}; upstream=${UPSTREAM:-zero}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release -q -p wxgate
cargo build --release -q -p wxgate-server --example bare_hop
cargo build --release -q -p wxgate-fake-wechat --example zero
target=${CARGO_TARGET_DIR:-target}/release
bin=$target/wxgate
work=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${redis_port:-}" ] && redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
up_port=$(port); gw_port=$(port); redis_port=$(port)
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }

case $upstream in
  zero)
    "$target/examples/zero" "127.0.0.1:$up_port" >/dev/null 2>&1 & pids+=($!) ;;
  fake)
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
    "$bin" fake-wechat --listen "127.0.0.1:$up_port" --config "$work/fake.toml" >/dev/null 2>&1 & pids+=($!) ;;
  *) echo "UPSTREAM must be zero or fake"; exit 2 ;;
esac
wait_up "http://127.0.0.1:$up_port/cgi-bin/token"

redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

cat > "$work/base.toml" <<TOML
[server]
listen = "127.0.0.1:$gw_port"
workers = 1
[upstream]
base_url = "http://127.0.0.1:$up_port"
[apps.bench]
appid = "wx0123456789abcdef"
kind = "official_account"
secret = "demo-secret"
[api_keys.bench]
key = "bench-key-0123456789abcdef"
apps = ["bench"]
TOML
cat > "$work/store.toml" <<TOML
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
cp "$work/base.toml" "$work/memory.toml"
cp "$work/base.toml" "$work/memory-info.toml"
cat "$work/base.toml" "$work/store.toml" > "$work/redis.toml"
cat "$work/base.toml" "$work/store.toml" "$work/limits.toml" > "$work/redis-limits.toml"

redis_calls() {
  redis-cli -p "$redis_port" info commandstats | tr -d '\r' |
    sed -nE 's/^cmdstat_[^:]+:calls=([0-9]+).*/\1/p' | awk '{s+=$1} END {print s+0}'
}
# CPU time (utime + stime, clock ticks) a process has used.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# run VARIANT URL PID: wrk against URL (served by PID), appends
# "round variant rps p50 p99 cmds server_cpu_us redis_cpu_us" to results.
run() {
  local variant=$1 url=$2 pid=$3 before after out rps p50 p99 reqs cmds=- c0 c1 r0 r1 rpid
  rpid=$(cat "$work/redis.pid")
  before=$(redis_calls); c0=$(ticks "$pid"); r0=$(ticks "$rpid")
  out=$(wrk -t1 -c"$conns" -d"${dur}s" -s bench/gateway-template.lua "$url")
  after=$(redis_calls); c1=$(ticks "$pid"); r1=$(ticks "$rpid")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '/^p50/ {print $2}'); p99=$(echo "$out" | awk '/^p50/ {print $5}')
  reqs=$(echo "$out" | awk '/^requests/ {print $2}')
  bad=$(echo "$out" | awk '/^non-200/ {print $3}')
  [ "$bad" = 0 ] || { echo "$variant: $bad non-200 answers"; echo "$out" | head -5; }
  case $variant in redis*|hop*) cmds=$(python3 -c "print(f'{($after - $before) / max($reqs, 1):.2f}')") ;; esac
  local cpu rcpu
  cpu=$(python3 -c "print(f'{($c1 - $c0) * 1e6 / $hz / max($reqs, 1):.0f}')")
  rcpu=$(python3 -c "print(f'{($r1 - $r0) * 1e6 / $hz / max($reqs, 1):.0f}')")
  printf '%-13s %9.0f req/s  p50 %5.2f ms  p99 %5.2f ms  redis cmds/send %5s  CPU us/send: server %3s, redis %3s\n' \
    "$variant" "$rps" "$p50" "$p99" "$cmds" "$cpu" "$rcpu"
  echo "$round $variant $rps $p50 $p99 $cmds $cpu $rcpu" >> "$work/results"
}
hop() {
  local client=hyper
  [ "$1" = hop-reqwest ] && client=reqwest
  "$target/examples/bare_hop" "127.0.0.1:$gw_port" "redis://127.0.0.1:$redis_port" \
    "http://127.0.0.1:$up_port" wx0123456789abcdef demo-secret "$client" >"$work/hop.log" 2>&1 & local p=$!
  wait_up "http://127.0.0.1:$gw_port/"
  run "$1" "http://127.0.0.1:$gw_port/send" "$p"
  kill $p; wait $p 2>/dev/null || true
}
gateway() {
  local variant=$1 level=warn b=$bin config=$1
  [ "$variant" = memory-info ] && level=info
  [ "$variant" = redis-limits-base ] && { b=$BASELINE; config=redis-limits; }
  WXGATE_LOG=$level "$b" serve --config "$work/$config.toml" >"$work/gw-$variant.log" 2>&1 & local p=$!
  wait_up "http://127.0.0.1:$gw_port/readyz"
  until curl -sf "http://127.0.0.1:$gw_port/readyz" >/dev/null; do sleep 0.1; done
  run "$variant" "http://127.0.0.1:$gw_port/v1/apps/bench/messages/template" "$p"
  kill $p; wait $p 2>/dev/null || true
}

echo "upstream: $upstream; wrk -t1 -c$conns -d${dur}s per variant; $rounds round(s); 1 actix worker everywhere"
for round in $(seq "$rounds"); do
  echo "== round $round"
  hop hop-first
  for v in ${VARIANTS:-memory memory-info redis redis-limits hop-reqwest}; do
    # The baseline runs after redis-limits in odd rounds and before it in even ones.
    base=; [ "$v" = redis-limits ] && [ -n "${BASELINE:-}" ] && base=1
    [ -n "$base" ] && (( round % 2 == 0 )) && gateway redis-limits-base
    case $v in hop-reqwest) hop "$v" ;; *) gateway "$v" ;; esac
    [ -n "$base" ] && (( round % 2 == 1 )) && gateway redis-limits-base
  done
  hop hop-last
done

echo
echo "== ratios to the bare hop of the same round (mean of its first and last run)"
python3 - "$work/results" <<'PY'
import sys, collections
rows = [l.split() for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for r, v, rps, p50, p99, cmds, cpu, rcpu in rows:
    by[r][v] = (float(rps), float(p50), float(p99), cmds, cpu, rcpu)
variants = [v for v in ["memory", "memory-info", "redis", "redis-limits", "redis-limits-base", "hop-reqwest"]
            if all(v in d for d in by.values())]
print(f"{'round':<6}{'hop req/s':>10}" + "".join(f"{v:>19}" for v in variants) + "   (p99 ÷ hop p99)")
for r, d in by.items():
    hop = (d["hop-first"][0] + d["hop-last"][0]) / 2
    hop99 = (d["hop-first"][2] + d["hop-last"][2]) / 2
    cells = "".join(f"{d[v][0] / hop * 100:>18.0f}%" for v in variants)
    p99s = " ".join(f"{d[v][2] / hop99:.1f}x" for v in variants)
    print(f"{r:<6}{hop:>10.0f}{cells}   ({p99s})")
cmds = {v: [d[v][3] for d in by.values()]
        for v in ["hop-first", "redis", "redis-limits", "redis-limits-base"] if v in ["hop-first"] + variants}
if "redis-limits" in variants and "hop-reqwest" in variants:
    print("redis-limits as a ratio of hop-reqwest (the hop as first written, posting with reqwest):",
          ", ".join(f"{d['redis-limits'][0] / d['hop-reqwest'][0] * 100:.0f}%" for d in by.values()))
print("redis commands per send:", ", ".join(f"{v} {'/'.join(c)}" for v, c in cmds.items()))
order = ["hop-first"] + variants
print("CPU per send, server process / redis-server (us, by round):")
for v in order:
    print(f"  {v:<18}" + "  ".join(f"{d[v][4]:>3} / {d[v][5]:>3}" for d in by.values()))
PY

if [ "$upstream" = fake ]; then
  curl -s "http://127.0.0.1:$up_port/_fake/calls?path=/cgi-bin/message/template/send" |
    python3 -c 'import json,sys;c=json.load(sys.stdin);print("fake record (last 100000 kept): template sends", len(c), "non-zero errcodes", sum(1 for x in c if x["errcode"]!=0))'
fi
