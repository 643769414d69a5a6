#!/usr/bin/env bash
# The gateway as a reverse proxy against nginx, side by side in one run:
#   1. GET /ext/items/{n} through a gateway pass-through route (strip_prefix) to one backend
#   2. the same through nginx (bench/nginx/pass-through.conf: as many workers as the gateway's
#      runtime threads, access logs off, a keep-alive upstream)
# against the same backend (an nginx answering a fixed body), with wrk; prints req/s, p50 and p99
# of both and their ratios. Needs nginx and wrk (apt-get install nginx wrk).
#
#   bench/pass-through.sh                    # defaults: 15 s each, 64 connections
#   DURATION=30 CONNECTIONS=128 bench/pass-through.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
# The gateway's tokio runtime has one worker thread per core; nginx gets as many workers.
WORKERS=${WORKERS:-$(nproc)}
UPSTREAM=127.0.0.1:18201
NGINX=127.0.0.1:18202
GATEWAY=127.0.0.1:18203
ADMIN=127.0.0.1:18204
work=$(mktemp -d)
cleanup() {
  [ -n "${gateway_pid:-}" ] && kill "$gateway_pid" 2>/dev/null
  for pid in "$work"/nginx.pid "$work"/upstream.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null; done
  wait 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT

for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install nginx wrk curl)"; exit 1; }
done

render() { sed -e "s|@WORK@|$work|g" -e "s|@UPSTREAM@|$UPSTREAM|g" -e "s|@PROXY@|$NGINX|g" -e "s|@WORKERS@|$WORKERS|g" "$1" >"$2"; }
render bench/nginx/upstream.conf "$work/upstream.conf"
render bench/nginx/pass-through.conf "$work/nginx.conf"

echo "building (release)..."
cargo build --release --quiet -p bookstore

nginx -c "$work/upstream.conf"
nginx -c "$work/nginx.conf"
cat >"$work/bookstore.toml" <<TOML
[gateway]
rate_limit_requests = 0
concurrency_limit = 100000

[[gateway.routes]]
prefix = "/ext"
strip_prefix = true
backends = [{ url = "http://$UPSTREAM" }]
TOML
RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/bookstore" --config "$work/bookstore.toml" serve gateway \
  --http "$GATEWAY" --admin-http "$ADMIN" --data-dir "$work" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 1 100); do curl -sf "http://$GATEWAY/ext/items/1" >/dev/null && break; sleep 0.1; done
curl -sf "http://$NGINX/ext/items/1" | grep -q "in stock" || { cat "$work"/nginx-error.log; exit 1; }
curl -sf "http://$GATEWAY/ext/items/1" | grep -q "in stock" || { cat "$work/gateway.log"; exit 1; }

cat >"$work/items.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/ext/items/" .. n)
end
LUA

# One load: warm up, measure, print the lines that matter; leaves "rps p50_ms p99_ms" in $work/result.
load() {
  local label=$1 addr=$2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/items.lua" "http://$addr" >/dev/null
  echo "$label: GET /ext/items/{n}, $CONNECTIONS connections, ${DURATION}s"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/items.lua" "http://$addr" >"$work/wrk.txt"
  grep -E '^\s+(50|99)%|Requests/sec' "$work/wrk.txt"
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "FAILED: some requests were not 200"; exit 1; fi
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^Requests\/sec:/ {rps=$2} /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)}
    END {print rps, p50, p99}' "$work/wrk.txt" >"$work/result"
}

# Alternate, so drift on a shared machine falls on both.
load "gateway route" "$GATEWAY"; read -r g1 gp50a gp99a <"$work/result"
load "nginx" "$NGINX"; read -r n1 np50a np99a <"$work/result"
load "gateway route" "$GATEWAY"; read -r g2 gp50b gp99b <"$work/result"
load "nginx" "$NGINX"; read -r n2 np50b np99b <"$work/result"

python3 - "$g1" "$g2" "$n1" "$n2" "$gp99a" "$gp99b" "$np99a" "$np99b" "$gp50a" "$gp50b" "$np50a" "$np50b" "$WORKERS" <<'PY'
import sys
g1, g2, n1, n2, gp99a, gp99b, np99a, np99b, gp50a, gp50b, np50a, np50b = map(float, sys.argv[1:13])
workers = sys.argv[13]
g, n = (g1 + g2) / 2, (n1 + n2) / 2
gp99, np99 = (gp99a + gp99b) / 2, (np99a + np99b) / 2
gp50, np50 = (gp50a + gp50b) / 2, (np50a + np50b) / 2
print()
print(f"gateway pass-through: {g:8.0f} req/s  p50 {gp50:6.2f} ms  p99 {gp99:6.2f} ms   (runs: {g1:.0f}, {g2:.0f})")
print(f"nginx ({workers} workers):    {n:8.0f} req/s  p50 {np50:6.2f} ms  p99 {np99:6.2f} ms   (runs: {n1:.0f}, {n2:.0f})")
print(f"gateway / nginx: throughput {g / n:4.2f}x, p99 {gp99 / np99:4.2f}x (lower is better)")
PY
