#!/usr/bin/env bash
# Checkout throughput against PostgreSQL's own write ceiling, side by side in one run:
#   1. POST /api/v1/orders through the gateway: one-line baskets of random books, 64 connections,
#      each with a real customer's token; orders, books and users on PostgreSQL, events on
#      RabbitMQ (the full saga: reserve, store order + outbox, confirm, relay)
#   2. pgbench -M prepared -c 64 (the TPC-B-like default) against the same server
# and prints both rates and their ratio. Needs wrk, pgbench and a RabbitMQ at AMQP_URL.
#
#   bench/checkout.sh                       # defaults: 20 s each, 64 connections
#   SERVE_FLAGS="--local-calls false" bench/checkout.sh   # services call each other over sockets
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${BOOKSTORE_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
HTTP=127.0.0.1:18090
ADMIN=127.0.0.1:15069
ADMIN_PASSWORD="bench admin passphrase of some length"
work=$(mktemp -d)
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for tool in wrk pgbench psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool"; exit 1; }
done
db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_URL" "$1"; }
fresh_db() { psql "$PG_URL" -qc "drop database if exists $1 with (force)" -c "create database $1"; }

echo "building (release)..."
cargo build --release --quiet -p bookstore
for db in books users orders; do fresh_db "bookstore_bench_$db"; done

BOOKSTORE_MASTER_KEY=$(./target/release/bookstore admin generate-master-key) \
BOOKSTORE_ADMIN_PASSWORD="$ADMIN_PASSWORD" BOOKSTORE_REGISTRATIONS_PER_ADDRESS=0 RUST_LOG=warn \
  ./target/release/bookstore serve users books orders gateway --seed --amqp-url "$AMQP_URL" ${SERVE_FLAGS:-} \
  --books-database-url "$(db_url bookstore_bench_books)" --users-database-url "$(db_url bookstore_bench_users)" \
  --orders-database-url "$(db_url bookstore_bench_orders)" --data-dir "$work" --http "$HTTP" \
  --admin-http 127.0.0.1:15069 --books-grpc 127.0.0.1:15061 --users-grpc 127.0.0.1:15062 --orders-grpc 127.0.0.1:15063 --fulfillment-grpc 127.0.0.1:15064 --recommendations-grpc 127.0.0.1:15065 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
kill -0 "$server_pid" 2>/dev/null && curl -sf "http://$ADMIN/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }

echo "preparing: restocking the catalog, registering $CONNECTIONS customers..."
python3 bench/customers.py "$HTTP" "$ADMIN_PASSWORD" "$CONNECTIONS" "$work"

wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/checkout.lua" "http://$HTTP" >/dev/null
echo "gateway: POST /api/v1/orders, $CONNECTIONS connections, ${DURATION}s"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/checkout.lua" "http://$HTTP" | tee "$work/wrk.txt" | grep -E '^\s+(50|99)%|Requests/sec|Non-2xx'
if grep -q "Non-2xx" "$work/wrk.txt"; then echo "FAILED: some checkouts were not 201"; exit 1; fi
orders_rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=

fresh_db bookstore_bench_pgbench
pgbench -q -i -s 10 "$(db_url bookstore_bench_pgbench)" >/dev/null 2>&1
echo "pgbench -M prepared -c $CONNECTIONS -j $THREADS -T $DURATION (tpcb-like)"
pgbench -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" "$(db_url bookstore_bench_pgbench)" 2>&1 | tee "$work/pgbench.txt" | grep -E '^(tps|latency)'
pgbench_tps=$(awk '/^tps = / {print $3; exit}' "$work/pgbench.txt")
for db in books users orders pgbench; do psql "$PG_URL" -qc "drop database if exists bookstore_bench_$db with (force)"; done

python3 - "$orders_rps" "$pgbench_tps" <<'PY'
import sys
o, p = float(sys.argv[1]), float(sys.argv[2])
print()
print(f"gateway POST /api/v1/orders: {o:8.0f} orders/s")
print(f"pgbench -M prepared (tpcb):  {p:8.0f} tps")
print(f"ratio orders / pgbench:      {o/p:8.2f}x")
PY
