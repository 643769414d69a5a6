#!/usr/bin/env bash
# The shop under open-loop load (bookstore-load, crates/load): requests start at a constant rate
# whatever the answers do, and each is timed from when it was meant to start, so time queued in
# the shop is in the latencies. All six services in one `serve` process on PostgreSQL, events on
# RabbitMQ, the per-client rate limit off (one generator would be throttled) and the gateway's
# concurrency limit low enough for the generator to reach it, so overload is shed with 503:
#   1. reads (browse, search, a book's page and recommendations, a book): the highest rate whose
#      p99 is within 5 ms, then a run at twice that rate;
#   2. checkout (one-line baskets, 64 customers): the highest rate whose p99 is within 20 ms,
#      then a run at twice that rate;
# and prints, for each, the rate found, and at twice it the goodput as a share of the rate
# found and how fast the rejections came back. Needs psql, curl, python3 and a RabbitMQ at
# AMQP_URL.
#
#   bench/load.sh                           # 10 s steps, 20 s overload runs
#   STEP=5s OVERLOAD=10s OUT=load-results bench/load.sh   # keep the JSON and .hgrm files
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${BOOKSTORE_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
STEP=${STEP:-10s}
OVERLOAD=${OVERLOAD:-20s}
READ_P99=${READ_P99:-5ms}
CHECKOUT_P99=${CHECKOUT_P99:-20ms}
# The generator may hold more requests in flight than the gateway admits, so that past its
# capacity the shop, not the generator, decides what waits.
CONCURRENCY_LIMIT=${CONCURRENCY_LIMIT:-256}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-1024}
HTTP=127.0.0.1:18190
ADMIN=127.0.0.1:15169
export BOOKSTORE_ADMIN_PASSWORD="bench admin passphrase of some length"
B=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
OUT=${OUT:-$work/out}
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for tool in psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool"; exit 1; }
done
db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_URL" "$1"; }
fresh_db() { psql "$PG_URL" -qc "drop database if exists $1 with (force)" -c "create database $1"; }
# Up to MAX_IN_FLIGHT connections from the generator, as many into the gateway.
ulimit -n 16384 2>/dev/null || true

echo "building (release)..."
cargo build --release --quiet -p bookstore -p bookstore-load
services="books users orders fulfillment recommendations"
for db in $services; do fresh_db "bookstore_load_$db"; done

BOOKSTORE_MASTER_KEY=$("$B/bookstore" admin generate-master-key) \
BOOKSTORE_REGISTRATIONS_PER_ADDRESS=0 RUST_LOG=warn \
  "$B/bookstore" serve users books orders fulfillment recommendations gateway --seed \
  --amqp-url "$AMQP_URL" --amqp-namespace "load-$$" \
  --rate-limit-requests 0 --concurrency-limit "$CONCURRENCY_LIMIT" \
  --books-database-url "$(db_url bookstore_load_books)" --users-database-url "$(db_url bookstore_load_users)" \
  --orders-database-url "$(db_url bookstore_load_orders)" \
  --fulfillment-database-url "$(db_url bookstore_load_fulfillment)" \
  --recommendations-database-url "$(db_url bookstore_load_recommendations)" \
  --data-dir "$work" --http "$HTTP" --admin-http "$ADMIN" \
  --books-grpc 127.0.0.1:15161 --users-grpc 127.0.0.1:15162 --orders-grpc 127.0.0.1:15163 \
  --fulfillment-grpc 127.0.0.1:15164 --recommendations-grpc 127.0.0.1:15165 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 150); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.2; done
kill -0 "$server_pid" 2>/dev/null && curl -sf "http://$ADMIN/readyz" >/dev/null ||
  { echo "bookstore did not start:"; cat "$work/server.log"; exit 1; }
mkdir -p "$OUT"

# search NAME MIX P99 FROM: the highest rate for MIX within P99, then twice it; results in $OUT.
search() {
  local name=$1 mix=$2 p99=$3 from=$4
  echo
  echo "== $name ($mix): the highest rate with p99 ≤ $p99, then twice it"
  "$B/bookstore-load" search --target "http://$HTTP" --mix "$mix" --p99 "$p99" --from "$from" \
    --step "$STEP" --overload --overload-duration "$OVERLOAD" --max-in-flight "$MAX_IN_FLIGHT" \
    --json "$OUT/$name.json" --hgrm "$OUT/$name"
}
search reads browse=20,search=10,book=20,read=50 "$READ_P99" 500
search checkout checkout=1 "$CHECKOUT_P99" 50

kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
for db in $services; do psql "$PG_URL" -qc "drop database if exists bookstore_load_$db with (force)"; done

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print()
print(f"{'':10} {'rate found':>11} {'p99 there':>10} {'at 2x: goodput':>15} {'share':>6} {'rejected':>9} {'their p99':>10}")
for name in ("reads", "checkout"):
    r = json.load(open(f"{out}/{name}.json"))
    if r["max_rate_per_sec"] is None:
        print(f"{name:10} no rate met p99 <= {r['p99_objective_ms']} ms")
        continue
    p99 = r["at_max"]["total"]["latency_ms"]["p99"]
    o = r["overload"]
    rej = "-" if o["rejections_p99_ms"] is None else f"{o['rejections_p99_ms']:.2f} ms"
    print(f"{name:10} {r['max_rate_per_sec']:9.0f}/s {p99:7.2f} ms {o['goodput_per_sec']:13.0f}/s "
          f"{o['goodput_fraction_of_max']:6.2f} {o['rejections']:9d} {rej:>10}")
PY
echo "(JSON and .hgrm files in $OUT; set OUT to keep them)"
