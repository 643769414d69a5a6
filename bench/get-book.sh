#!/usr/bin/env bash
# The shop's read path against the database's own ceiling, side by side in one run:
#   1. GET /api/v1/books/{id} through the gateway (books on PostgreSQL, random ids, 64 connections),
#      with books' in-process read cache (the gateway calling books in process, then over its
#      socket), with no cache, with the cache shared in Redis alone, and with both tiers
#   2. pgbench -S -M prepared -c 64 (select-only) against the same PostgreSQL server
# and prints the rates and their ratios. Needs wrk, pgbench and a Redis at REDIS_URL.
#
#   bench/get-book.sh                       # defaults: 20 s each, 64 connections
#   DURATION=60 CONNECTIONS=128 bench/get-book.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

work=$(mktemp -d)
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for tool in wrk pgbench psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install wrk postgresql-client)"; exit 1; }
done

. bench/lib.sh

echo "building (release)..."
cargo build --release --quiet -p bookstore

# One gateway run: serve books + gateway with the given in-process cache TTL (and any further
# flags), load it, print req/s.
gateway_run() {
  local ttl=$1 label=$2
  shift 2
  start_shop --books-cache-ttl-ms "$ttl" "$@"
  load_get_book "$label"
}
# The shared tier, under keys of this run's own.
shared() { echo --books-redis-url "$REDIS_URL" --books-redis-key-prefix "bench-$$-$1"; }

echo "warming up and measuring..."
gateway_run 1000 "read cache on, 1 s TTL"
read -r cached_rps cached_rss <"$work/result"
gateway_run 1000 "read cache on, the gateway calling books over its socket" --local-calls false
read -r sockets_rps sockets_rss <"$work/result"
gateway_run 0 "read cache off: every request reaches PostgreSQL"
read -r uncached_rps uncached_rss <"$work/result"
# shellcheck disable=SC2046
gateway_run 0 "shared cache in Redis alone (every request asks Redis)" $(shared alone)
read -r shared_rps shared_rss <"$work/result"
# shellcheck disable=SC2046
gateway_run 1000 "both tiers: in-process 1 s in front of Redis" $(shared both)
read -r both_rps both_rss <"$work/result"

fresh_db bookstore_bench_pgbench
pgbench -q -i -s 10 "$(db_url bookstore_bench_pgbench)" >/dev/null 2>&1
echo "pgbench -S -M prepared -c $CONNECTIONS -j $THREADS -T $DURATION"
pgbench -S -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" "$(db_url bookstore_bench_pgbench)" 2>&1 | tee "$work/pgbench.txt" | grep -E '^(tps|latency)'
pgbench_tps=$(awk '/^tps = / {print $3; exit}' "$work/pgbench.txt")

for db in bookstore_bench_books bookstore_bench_users bookstore_bench_orders bookstore_bench_pgbench; do
  psql "$PG_URL" -qc "drop database if exists $db with (force)"
done

python3 - "$pgbench_tps" "cache on (in-process)" "$cached_rps" "$cached_rss" \
  "cache on, over sockets" "$sockets_rps" "$sockets_rss" "cache off" "$uncached_rps" "$uncached_rss" \
  "shared in Redis alone" "$shared_rps" "$shared_rss" "both tiers" "$both_rps" "$both_rss" <<'PY'
import sys
p = float(sys.argv[1])
print()
for i in range(2, len(sys.argv), 3):
    label, rps, rss = sys.argv[i], float(sys.argv[i + 1]), int(sys.argv[i + 2])
    print(f"gateway GET /api/v1/books/{{id}}, {label:22} {rps:8.0f} req/s  ratio to pgbench {rps/p:5.2f}x  (RSS {rss/1024:.0f} MiB)")
print(f"pgbench -S -M prepared -c 64: {p:8.0f} tps")
PY
