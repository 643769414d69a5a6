#!/usr/bin/env bash
# The live queue under load, in one run: `bookstore up` (embedded SQLite and event log), 1,000
# staff WebSockets on the gateway, then (crates/bookstore/examples/live_queue.rs)
#   1. moves one after another, each timed from its request to its arrival at every socket;
#   2. four clients moving at once for DURATION seconds: moves per second that reached them all;
#   3. the floor: the same fan-out through bare Redis pub/sub (1,000 subscribers, one channel).
# Needs a Redis at REDIS_URL (default redis://127.0.0.1:6379).
#
#   bench/live-queue.sh                      # 1,000 sockets, 200 moves, 10 s of moving
#   SOCKETS=200 MOVES=100 DURATION=5 bench/live-queue.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SOCKETS=${SOCKETS:-1000}
MOVES=${MOVES:-200}
DURATION=${DURATION:-10}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
HTTP=127.0.0.1:18401
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
# Two descriptors a socket (client and server side, one process each), and then some.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building (release)..."
cargo build --release --quiet -p bookstore --bin bookstore --example live_queue

cat >"$work/bookstore.toml" <<TOML
[gateway]
rate_limit_requests = 0
concurrency_limit = 100000
queue_sockets_per_user = $((SOCKETS + 10))
TOML
BOOKSTORE_ADMIN_PASSWORD="bench admin passphrase of some length" RUST_LOG=warn \
  "$target/release/bookstore" --config "$work/bookstore.toml" up --no-seed --data-dir "$work" --http "$HTTP" \
  --admin-http 127.0.0.1:18409 --books-grpc 127.0.0.1:18402 --users-grpc 127.0.0.1:18403 \
  --orders-grpc 127.0.0.1:18404 --fulfillment-grpc 127.0.0.1:18405 --recommendations-grpc 127.0.0.1:18406 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:18409/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:18409/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }

BASE="http://$HTTP" ADMIN_PASSWORD="bench admin passphrase of some length" SOCKETS=$SOCKETS MOVES=$MOVES \
  DURATION=$DURATION REDIS_URL=$REDIS_URL "$target/release/examples/live_queue" || { echo "server log:"; tail -20 "$work/server.log"; exit 1; }
