#!/usr/bin/env bash
# What tracing costs on the read path, side by side in one run: GET /api/v1/books/{id} through
# the gateway (books on PostgreSQL, read cache on: the cheapest request, where tracing weighs
# most), three times:
#   1. trace_sample_ratio 0, no collector: spans are made for trace ids, none is recorded
#   2. 1% of traces sampled and exported over OTLP/gRPC
#   3. every trace sampled and exported
# to a receiver that counts spans and keeps none (crates/platform/examples/otlp-sink.rs). Prints
# the rates, their ratios to run 1 and the spans received. Needs wrk and psql.
#
#   bench/tracing.sh                        # defaults: 20 s each, 64 connections
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "warming up and measuring..."
tracing_run 0 "no trace sampled, no collector"
read -r off_rps off_rss off_spans <"$work/result"
tracing_run 0.01 "1% of traces sampled and exported" export
read -r some_rps some_rss some_spans <"$work/result"
tracing_run 1 "every trace sampled and exported" export
read -r all_rps all_rss all_spans <"$work/result"

for db in bookstore_bench_books bookstore_bench_users bookstore_bench_orders; do
  psql "$PG_URL" -qc "drop database if exists $db with (force)"
done

python3 - "$off_rps" "$off_rss" "$off_spans" "$some_rps" "$some_rss" "$some_spans" "$all_rps" "$all_rss" "$all_spans" <<'PY'
import sys
a = sys.argv[1:]
runs = [("none sampled", a[0:3]), ("1% sampled, exported", a[3:6]), ("all sampled, exported", a[6:9])]
base = float(runs[0][1][0])
print()
for label, (rps, rss, spans) in runs:
    rps = float(rps)
    print(f"GET /api/v1/books/{{id}}, {label:22} {rps:8.0f} req/s  {rps/base:5.2f}x  spans received {int(spans):>9,}  (RSS {int(rss)/1024:.0f} MiB)")
PY
