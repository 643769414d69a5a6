#!/usr/bin/env bash
# What tracing costs on the read path, side by side in one run: GET /api/v1/books/{id} through
# the gateway (books on PostgreSQL, read cache on: the cheapest request, where tracing weighs
# most), three times:
#   1. trace_sample_ratio 0, no collector: spans are made for trace ids, none is recorded
#   2. 1% of traces sampled and exported over OTLP/gRPC
#   3. every trace sampled and exported
# to a receiver that counts spans and keeps none (crates/platform/examples/otlp-sink.rs), in
# ROUNDS rounds of the three (the order of runs moves rates more than tracing does). Prints each
# one's median rate, its ratio to run 1's and the spans received. Needs wrk and psql.
#
#   bench/tracing.sh                        # defaults: 3 rounds, 20 s a run, 64 connections
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SINK=127.0.0.1:14317
work=$(mktemp -d)
trap '[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for tool in wrk psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install wrk postgresql-client)"; exit 1; }
done

. bench/lib.sh

echo "building (release)..."
cargo build --release --quiet -p bookstore
cargo build --release --quiet -p bookstore-platform --example otlp-sink
./target/release/examples/otlp-sink "$SINK" >"$work/sink.txt" &
sink_pid=$!

spans() { sleep 1.2; tail -n 1 "$work/sink.txt"; }

tracing_run() {
  local ratio=$1 label=$2 export=${3:-}
  local before
  before=$(spans)
  start_shop --trace-sample-ratio "$ratio" ${export:+--otlp-endpoint "http://$SINK"}
  load_get_book "$label"
  # The graceful stop has flushed what was buffered.
  echo "$(cat "$work/result") $(( $(spans) - before ))" >"$work/result"
}

echo "warming up and measuring, $ROUNDS rounds..."
: >"$work/runs"
for round in $(seq 1 "$ROUNDS"); do
  tracing_run 0 "round $round: no trace sampled, no collector"
  echo "off $(cat "$work/result")" >>"$work/runs"
  tracing_run 0.01 "round $round: 1% of traces sampled and exported" export
  echo "some $(cat "$work/result")" >>"$work/runs"
  tracing_run 1 "round $round: every trace sampled and exported" export
  echo "all $(cat "$work/result")" >>"$work/runs"
done

for db in bookstore_bench_books bookstore_bench_users bookstore_bench_orders; do
  psql "$PG_URL" -qc "drop database if exists $db with (force)"
done

python3 - "$work/runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, rps, rss, spans = line.split()
    runs.setdefault(label, []).append((float(rps), int(rss), int(spans)))
base = statistics.median(r[0] for r in runs["off"])
print()
names = {"off": "none sampled", "some": "1% sampled, exported", "all": "all sampled, exported"}
for label in ("off", "some", "all"):
    rates = [r[0] for r in runs[label]]
    median = statistics.median(rates)
    spans = statistics.median(r[2] for r in runs[label])
    rss = max(r[1] for r in runs[label])
    each = " ".join(f"{r:.0f}" for r in rates)
    print(f"GET /api/v1/books/{{id}}, {names[label]:22} median {median:8.0f} req/s  {median/base:5.2f}x"
          f"  (runs: {each}; spans received {int(spans):,} a run; RSS up to {rss/1024:.0f} MiB)")
PY
