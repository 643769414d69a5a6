#!/usr/bin/env bash
# Book reads through the gateway with one books replica, then with two, side by side in one run:
#   GET /api/v1/books/{id} (random seeded ids, wrk, 64 connections), books on one SQLite file
#   shared by its replicas (both `serve books` processes on this machine), the gateway balancing
#   over a static list; prints both rates and their ratio. Needs wrk.
#
#   bench/replicas.sh                        # defaults: 15 s each, 64 connections
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
BIN="${CARGO_TARGET_DIR:-target}/release/bookstore"
GATEWAY=127.0.0.1:18301
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install wrk curl)"; exit 1; }
done

. bench/lib.sh

echo "building (release)..."
cargo build --release --quiet -p bookstore

books_db="sqlite://$work/books.db"
# books replica N on 127.0.0.1:1831N (the first seeds the shared catalog).
start_books() {
  local n=$1 seed=${2:-}
  RUST_LOG=warn "$BIN" serve books $seed --books-grpc "127.0.0.1:1831$n" --admin-http "127.0.0.1:1832$n" \
    --books-database-url "$books_db" --data-dir "$work" >"$work/books$n.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:1832$n/readyz" >/dev/null && return; sleep 0.1; done
  cat "$work/books$n.log"; exit 1
}
start_gateway() {
  RUST_LOG=warn "$BIN" serve gateway --http "$GATEWAY" --admin-http 127.0.0.1:18302 --books-url "$1" \
    --rate-limit-requests 0 --data-dir "$work" >"$work/gateway.log" 2>&1 &
  gateway_pid=$!
  pids+=($gateway_pid)
  for _ in $(seq 1 100); do curl -sf "http://$GATEWAY/api/v1/books?limit=1" >/dev/null && return; sleep 0.1; done
  cat "$work/gateway.log"; exit 1
}
load() {
  wrk_get "http://$GATEWAY" "$1" 2>&1
  cp "$work/rps" "$work/result"
}

start_books 1 --seed
start_books 2
start_gateway "http://127.0.0.1:18311"
write_get_lua "http://$GATEWAY"

load "one books replica"; read -r one <"$work/result"
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true
start_gateway "http://127.0.0.1:18311,http://127.0.0.1:18312"
load "two books replicas"; read -r two <"$work/result"

python3 - "$one" "$two" "$(nproc)" <<'PY'
import sys
one, two, cores = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print()
print(f"one books replica:  {one:8.0f} req/s")
print(f"two books replicas: {two:8.0f} req/s   ratio {two / one:4.2f}x  (all processes share {cores} cores)")
PY
