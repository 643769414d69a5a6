#!/usr/bin/env bash
# What each service costs per request, for the capacity model (README, "Capacity"): the shop
# run as a deployment runs it, one `serve` process per service (all six), on PostgreSQL with
# events on RabbitMQ, each process's CPU time read from /proc before and after a load, and
# PostgreSQL's and RabbitMQ's too. Two departures from a deployment: peers are found by static
# URLs rather than etcd (discovery is off the request path either way), and the gateway's rate
# limit is off (one load generator would be throttled), so Redis is not on the path. Two
# loads, one after the other:
#   1. browse: GET /api/v1/books/{id} of random seeded books (wrk, closed loop)
#   2. checkout: POST /api/v1/orders, one-line baskets, 64 customers' tokens
# Prints, per load and process, CPU milliseconds per request and requests per second per core.
# Needs wrk, psql, curl, python3 and a RabbitMQ at AMQP_URL.
#
#   bench/capacity.sh                       # 20 s per load; DURATION=60 CONNECTIONS=64 to change
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${BOOKSTORE_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ADMIN_PASSWORD="capacity admin passphrase of some length"
ORDERS_SECRET=$(head -c 32 /dev/urandom | base64)
RECOMMENDATIONS_SECRET=$(head -c 32 /dev/urandom | base64)
B=${CARGO_TARGET_DIR:-target}/release/bookstore
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for tool in wrk psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool"; exit 1; }
done
db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_URL" "$1"; }
fresh_db() { psql "$PG_URL" -qc "drop database if exists $1 with (force)" -c "create database $1"; }

echo "building (release)..."
cargo build --release --quiet -p bookstore
services="books users orders fulfillment recommendations"
for db in $services; do fresh_db "bookstore_capacity_$db"; done

# One process per service, each with its own ports, as separate hosts would run them.
export BOOKSTORE_BOOKS_URL=http://127.0.0.1:16051 BOOKSTORE_USERS_URL=http://127.0.0.1:16052
export BOOKSTORE_ORDERS_URL=http://127.0.0.1:16053 BOOKSTORE_FULFILLMENT_URL=http://127.0.0.1:16054
export BOOKSTORE_RECOMMENDATIONS_URL=http://127.0.0.1:16055 BOOKSTORE_AMQP_URL="$AMQP_URL"
export BOOKSTORE_AMQP_NAMESPACE="capacity-$$" BOOKSTORE_DATA_DIR="$work"
export BOOKSTORE_BOOKS_DATABASE_URL=$(db_url bookstore_capacity_books)
export BOOKSTORE_USERS_DATABASE_URL=$(db_url bookstore_capacity_users)
export BOOKSTORE_ORDERS_DATABASE_URL=$(db_url bookstore_capacity_orders)
export BOOKSTORE_FULFILLMENT_DATABASE_URL=$(db_url bookstore_capacity_fulfillment)
export BOOKSTORE_RECOMMENDATIONS_DATABASE_URL=$(db_url bookstore_capacity_recommendations)
export BOOKSTORE_MASTER_KEY=$($B admin generate-master-key)
export BOOKSTORE_ORDERS_CLIENT_ID=svc-orders BOOKSTORE_ORDERS_CLIENT_SECRET="$ORDERS_SECRET"
export BOOKSTORE_RECOMMENDATIONS_CLIENT_ID=svc-recommendations
export BOOKSTORE_RECOMMENDATIONS_CLIENT_SECRET="$RECOMMENDATIONS_SECRET"
export RUST_LOG=warn
$B migrate >/dev/null
$B admin provision-service-accounts >/dev/null
start() {
  local name=$1 admin=$2; shift 2
  "$B" serve "$name" --admin-http "$admin" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
  for _ in $(seq 1 150); do curl -sf "http://$admin/readyz" >/dev/null && return; sleep 0.2; done
  cat "$work/$name.log"; echo "$name did not become ready"; exit 1
}
BOOKSTORE_ADMIN_PASSWORD="$ADMIN_PASSWORD" BOOKSTORE_REGISTRATIONS_PER_ADDRESS=0 \
  start users 127.0.0.1:16152 --users-grpc 127.0.0.1:16052
start books 127.0.0.1:16151 --books-grpc 127.0.0.1:16051 --seed
start orders 127.0.0.1:16153 --orders-grpc 127.0.0.1:16053
start fulfillment 127.0.0.1:16154 --fulfillment-grpc 127.0.0.1:16054
start recommendations 127.0.0.1:16155 --recommendations-grpc 127.0.0.1:16055
start gateway 127.0.0.1:16150 --http 127.0.0.1:18095 --rate-limit-requests 0
HTTP=127.0.0.1:18095

# CPU seconds (user + system) of a process, and of every process of a program by name.
cpu_of_pid() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
cpu_of_program() {
  local total=0 pid
  for pid in $(pgrep -x "$1" || true); do
    total=$(python3 -c "print($total + $(cpu_of_pid "$pid" 2>/dev/null || echo 0))")
  done
  echo "$total"
}
snapshot() {
  echo "gateway $(cpu_of_pid "$pid_gateway")"
  echo "books $(cpu_of_pid "$pid_books")"
  echo "users $(cpu_of_pid "$pid_users")"
  echo "orders $(cpu_of_pid "$pid_orders")"
  echo "fulfillment $(cpu_of_pid "$pid_fulfillment")"
  echo "recommendations $(cpu_of_pid "$pid_recommendations")"
  echo "postgresql $(cpu_of_program postgres)"
  echo "rabbitmq $(cpu_of_program beam.smp)"
}

echo "preparing: restocking the catalog, registering $CONNECTIONS customers..."
python3 bench/customers.py "$HTTP" "$ADMIN_PASSWORD" "$CONNECTIONS" "$work"

# Runs one load; leaves "<process> <cpu ms per request>" lines in $work/<load>.cost.
measure() {
  local load=$1
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/$load.lua" "http://$HTTP" >/dev/null
  snapshot >"$work/before"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/$load.lua" "http://$HTTP" >"$work/$load.wrk"
  snapshot >"$work/after"
  if grep -q "Non-2xx" "$work/$load.wrk"; then cat "$work/$load.wrk"; echo "FAILED: $load had errors"; exit 1; fi
  local requests
  requests=$(awk '/requests in/ {print $1}' "$work/$load.wrk")
  echo "$load: $(awk '/^Requests\/sec:/ {print $2}' "$work/$load.wrk") req/s over ${DURATION}s, $requests requests"
  python3 - "$work/before" "$work/after" "$requests" >"$work/$load.cost" <<'PY'
import sys
before = dict(l.split() for l in open(sys.argv[1]))
after = dict(l.split() for l in open(sys.argv[2]))
n = int(sys.argv[3])
for name in before:
    ms = (float(after[name]) - float(before[name])) * 1000 / n
    print(name, f"{ms:.4f}")
PY
}
measure browse
measure checkout

echo
python3 - "$work/browse.cost" "$work/checkout.cost" <<'PY'
import sys
browse = dict((k, float(v)) for k, v in (l.split() for l in open(sys.argv[1])))
checkout = dict((k, float(v)) for k, v in (l.split() for l in open(sys.argv[2])))
print(f"{'process':<12} {'browse ms/req':>14} {'req/s/core':>11} {'checkout ms/req':>16} {'req/s/core':>11}")
for name in browse:
    b, c = browse[name], checkout[name]
    rate = lambda ms: f"{1000 / ms:11.0f}" if ms > 0.0005 else f"{'-':>11}"
    print(f"{name:<12} {b:14.3f} {rate(b)} {c:16.3f} {rate(c)}")
PY
for db in $services; do psql "$PG_URL" -qc "drop database if exists bookstore_capacity_$db with (force)"; done
