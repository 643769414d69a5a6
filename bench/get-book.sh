#!/usr/bin/env bash
# The shop's read path against the database's own ceiling, side by side in one run:
#   1. GET /api/v1/books/{id} through the gateway (books on PostgreSQL, random ids, 64 connections)
#   2. pgbench -S -M prepared -c 64 (select-only) against the same PostgreSQL server
# and prints both rates and their ratio. Needs wrk and pgbench.
#
#   bench/get-book.sh                       # defaults: 20 s each, 64 connections
#   DURATION=60 CONNECTIONS=128 bench/get-book.sh
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for tool in wrk pgbench psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install wrk postgresql-client)"; exit 1; }
done

. bench/lib.sh

echo "building (release)..."
cargo build --release --quiet -p bookstore

# One gateway run: serve books + gateway with the given cache TTL, load it, print req/s.
gateway_run() {
  start_shop --books-cache-ttl-ms "$1"
  load_get_book "$2"
}

echo "warming up and measuring..."
gateway_run 1000 "read cache on, 1 s TTL"
read -r cached_rps cached_rss <"$work/result"
gateway_run 0 "read cache off: every request reaches PostgreSQL"
read -r uncached_rps uncached_rss <"$work/result"

fresh_db bookstore_bench_pgbench
pgbench -q -i -s 10 "$(db_url bookstore_bench_pgbench)" >/dev/null 2>&1
echo "pgbench -S -M prepared -c $CONNECTIONS -j $THREADS -T $DURATION"
pgbench -S -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" "$(db_url bookstore_bench_pgbench)" 2>&1 | tee "$work/pgbench.txt" | grep -E '^(tps|latency)'
pgbench_tps=$(awk '/^tps = / {print $3; exit}' "$work/pgbench.txt")

for db in bookstore_bench_books bookstore_bench_users bookstore_bench_orders bookstore_bench_pgbench; do
  psql "$PG_URL" -qc "drop database if exists $db with (force)"
done

python3 - "$cached_rps" "$cached_rss" "$uncached_rps" "$uncached_rss" "$pgbench_tps" <<'PY'
import sys
c, crss, u, urss, p = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
print()
print(f"gateway GET /api/v1/books/{{id}}, cache on:  {c:8.0f} req/s  ratio to pgbench {c/p:5.2f}x  (RSS {crss/1024:.0f} MiB)")
print(f"gateway GET /api/v1/books/{{id}}, cache off: {u:8.0f} req/s  ratio to pgbench {u/p:5.2f}x  (RSS {urss/1024:.0f} MiB)")
print(f"pgbench -S -M prepared -c 64:               {p:8.0f} tps")
PY
