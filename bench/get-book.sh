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

PG_URL=${BOOKSTORE_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
HTTP=127.0.0.1:18080
ADMIN=127.0.0.1:18089
GRPC=127.0.0.1:15051
USERS_GRPC=127.0.0.1:15052
work=$(mktemp -d)
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for tool in wrk pgbench psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install wrk postgresql-client)"; exit 1; }
done

db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_URL" "$1"; }
fresh_db() { psql "$PG_URL" -qc "drop database if exists $1 with (force)" -c "create database $1"; }

echo "building (release)..."
cargo build --release --quiet -p bookstore

# One gateway run: serve books + gateway with the given cache TTL, load it, print req/s.
gateway_run() {
  local ttl=$1 label=$2
  fresh_db bookstore_bench_books
  fresh_db bookstore_bench_users
  fresh_db bookstore_bench_orders
  BOOKSTORE_MASTER_KEY=$(./target/release/bookstore admin generate-master-key) \
  RUST_LOG=warn ./target/release/bookstore serve users books orders gateway --seed --books-cache-ttl-ms "$ttl" \
    --books-database-url "$(db_url bookstore_bench_books)" --users-database-url "$(db_url bookstore_bench_users)" \
    --orders-database-url "$(db_url bookstore_bench_orders)" --data-dir "$work" \
    --http "$HTTP" --admin-http "$ADMIN" --books-grpc "$GRPC" --users-grpc "$USERS_GRPC" --orders-grpc 127.0.0.1:15053 --fulfillment-grpc 127.0.0.1:15054 --recommendations-grpc 127.0.0.1:15055 >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://$ADMIN/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }
  # Something else answering on our port would be measured instead of us.
  kill -0 "$server_pid" 2>/dev/null || { echo "bookstore did not start:"; cat "$work/server.log"; exit 1; }
  curl -sf "http://$HTTP/api/v1/books?limit=100" |
    python3 -c 'import json,sys; ids=[b["id"] for b in json.load(sys.stdin)["items"]]; print("ids = {" + ",".join(json.dumps(i) for i in ids) + "}")' >"$work/get.lua"
  cat >>"$work/get.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/v1/books/" .. ids[math.random(#ids)])
end
LUA
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/get.lua" "http://$HTTP" >/dev/null
  echo "gateway ($label): GET /api/v1/books/{id}, $CONNECTIONS connections, ${DURATION}s" >&2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/get.lua" "http://$HTTP" >"$work/wrk.txt"
  grep -E '^\s+(50|99)%|Requests/sec' "$work/wrk.txt" >&2
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "FAILED: some requests were not 200" >&2; exit 1; fi
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  echo "$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt") $rss_kb" >"$work/result"
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
