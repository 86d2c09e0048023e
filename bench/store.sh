#!/usr/bin/env bash
# acquire() throughput against local Redis, next to the raw EVAL rate of a trivial script at the
# same concurrency, measured in the same run; plus Redis's own CPU per acquire from
# INFO commandstats (the EVALSHA time over the decisions). Not a test. Usage: bash bench/store.sh [CONCURRENCY=50] [SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
conc=${1:-50}; secs=${2:-5}
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release -q -p wxgate-store --example acquire_bench
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/r.pid" --logfile "$dir/r.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

n=$(( 30000 * secs ))
raw=$(redis-benchmark -p "$port" -c "$conc" -n "$n" -q eval "return redis.call('incr',KEYS[1])" 1 bench:k | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | awk '{print $1}')
echo "raw redis-benchmark EVAL (trivial incr), concurrency $conc: $raw req/s"
for mode in single full; do
  redis-cli -p "$port" config resetstat >/dev/null
  out=$("${CARGO_TARGET_DIR:-target}/release/examples/acquire_bench" "redis://127.0.0.1:$port" "$conc" "$secs" "$mode")
  ours=$(echo "$out" | awk '{print $2}')
  # Total EVALSHA time over the decisions made: concurrent acquires share script calls (see
  # src/redis_store/batch.rs), so Redis's time per call is not its time per decision.
  stats=$(redis-cli -p "$port" info commandstats | tr -d '\r' | grep -E '^cmdstat_evalsha:')
  calls=$(echo "$stats" | sed -E 's/^cmdstat_evalsha:calls=([0-9]+),.*/\1/')
  total=$(echo "$stats" | sed -E 's/^cmdstat_evalsha:calls=[0-9]+,usec=([0-9]+),.*/\1/')
  usec=$(python3 -c "print(f'{$total / max(float(\"$ours\") * $secs, 1):.1f}')")
  echo "  script calls: $calls for $(python3 -c "print(int(float(\"$ours\") * $secs))") decisions"
  echo "$out"
  if [ "$mode" = single ]; then
    key=$(redis-cli -p "$port" --scan --pattern '*win:template_send:1000' | head -1)
    n=$(redis-cli -p "$port" llen "$key"); bytes=$(redis-cli -p "$port" memory usage "$key" samples 0)
    python3 -c "print(f'sliding log memory: {$n} entries in {$bytes} bytes = {$bytes/max($n,1):.0f} bytes per entry (a key never holds more than its limit N)')"
  fi
  python3 -c "print(f'  ratio to raw EVAL: {float(\"$ours\")/float(\"$raw\")*100:.0f}%; Redis CPU per acquire (commandstats evalsha usec / decisions): $usec µs')"
done
