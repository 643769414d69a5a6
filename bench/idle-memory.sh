#!/usr/bin/env bash
# Resident memory of an idle shop: `bookstore up` (every service, SQLite and the embedded log)
# and `bookstore serve books` alone (SQLite), each started on a fresh data folder, asked once
# whether it is ready, then left alone for SETTLE seconds before /proc is read. Prints VmRSS and
# its parts: RssAnon (heap, stacks), RssFile (the executable's pages in use).
#
# Idle means after start-up's transient memory is given back: the password hasher's 19 MiB
# (a dummy hash at start, the first admin's) is freed on a blocking-pool thread, and mimalloc
# returns it to the kernel when that thread retires, 10 s after its last task. Read at 5 s,
# `up` measured 52 or 36 MiB of heap from one run to the next; from 15 s on, 32-33 every time.
#
#   bench/idle-memory.sh                    # SETTLE=15 by default
set -euo pipefail
cd "$(dirname "$0")/.."
SETTLE=${SETTLE:-15}
work=$(mktemp -d)
trap '[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

echo "building (release)..."
cargo build --release --quiet -p bookstore
bin=./target/release/bookstore
key=$($bin admin generate-master-key)

# Starts `bookstore $@` on a data folder of its own, waits for /readyz, settles, prints memory.
measure() {
  local label=$1 admin=$2
  shift 2
  mkdir -p "$work/$label"
  BOOKSTORE_MASTER_KEY=$key BOOKSTORE_ADMIN_PASSWORD="idle admin passphrase of some length" RUST_LOG=warn \
    "$bin" "$@" --data-dir "$work/$label" --admin-http "$admin" >"$work/$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://$admin/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://$admin/readyz" >/dev/null || { cat "$work/$label.log"; exit 1; }
  sleep "$SETTLE"
  awk -v label="$label" '/^(VmRSS|RssAnon|RssFile):/ {v[$1]=$2} END {
    printf "%-22s VmRSS %6.1f MiB   RssAnon %6.1f MiB   RssFile %6.1f MiB\n", label, v["VmRSS:"]/1024, v["RssAnon:"]/1024, v["RssFile:"]/1024 }' "/proc/$pid/status"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

measure "up" 127.0.0.1:18189 up --http 127.0.0.1:18180 --books-grpc 127.0.0.1:18151 --users-grpc 127.0.0.1:18152 \
  --orders-grpc 127.0.0.1:18153 --fulfillment-grpc 127.0.0.1:18154 --recommendations-grpc 127.0.0.1:18155
measure "serve books" 127.0.0.1:18190 serve books --books-grpc 127.0.0.1:18161
