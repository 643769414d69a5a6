# Shared by the read-path benchmarks (sourced, not run): a bookstore on PostgreSQL databases of
# its own, and wrk loading GET /api/v1/books/{id} with random seeded ids.
#
# The sourcing script sets work (a temporary folder), and may set DURATION, CONNECTIONS, THREADS
# and BOOKSTORE_BENCH_POSTGRES_URL before it sources this.

PG_URL=${BOOKSTORE_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}

HTTP=127.0.0.1:18080
ADMIN=127.0.0.1:18089

db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_URL" "$1"; }
fresh_db() { psql "$PG_URL" -qc "drop database if exists $1 with (force)" -c "create database $1"; }

# Starts users, books, orders and the gateway in one release process on fresh databases, with
# the extra flags given and the per-client rate limit off (one wrk client would be throttled);
# sets server_pid and returns once it is ready.
start_shop() {
  fresh_db bookstore_bench_books
  fresh_db bookstore_bench_users
  fresh_db bookstore_bench_orders
  BOOKSTORE_MASTER_KEY=$(./target/release/bookstore admin generate-master-key) \
  RUST_LOG=warn ./target/release/bookstore serve users books orders gateway --seed --rate-limit-requests 0 "$@" \
    --books-database-url "$(db_url bookstore_bench_books)" --users-database-url "$(db_url bookstore_bench_users)" \
    --orders-database-url "$(db_url bookstore_bench_orders)" --data-dir "$work" \
    --http "$HTTP" --admin-http "$ADMIN" --books-grpc 127.0.0.1:15051 --users-grpc 127.0.0.1:15052 --orders-grpc 127.0.0.1:15053 --fulfillment-grpc 127.0.0.1:15054 --recommendations-grpc 127.0.0.1:15055 >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://$ADMIN/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }
  # Something else answering on our port would be measured instead of us.
  kill -0 "$server_pid" 2>/dev/null || { echo "bookstore did not start:"; cat "$work/server.log"; exit 1; }
}

# Writes $work/get.lua: GET /api/v1/books/{id} with the ids of the first 100 books at $1.
write_get_lua() {
  curl -sf "$1/api/v1/books?limit=100" |
    python3 -c 'import json,sys; ids=[b["id"] for b in json.load(sys.stdin)["items"]]; print("ids = {" + ",".join(json.dumps(i) for i in ids) + "}")' >"$work/get.lua"
  cat >>"$work/get.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/v1/books/" .. ids[math.random(#ids)])
end
LUA
}

# Runs $work/get.lua against $1 (3 s warm-up, then DURATION), labelled $2; prints the latency
# and rate lines on stderr and fails on any answer but 200; the rate is left in $work/rps.
wrk_get() {
  local base=$1 label=$2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/get.lua" "$base" >/dev/null
  echo "$label: GET /api/v1/books/{id}, $CONNECTIONS connections, ${DURATION}s" >&2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/get.lua" "$base" >"$work/wrk.txt"
  grep -E '^\s+(50|99)%|Requests/sec' "$work/wrk.txt" >&2
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "FAILED: some requests were not 200" >&2; exit 1; fi
  awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt" >"$work/rps"
}

# Loads the shop start_shop started with GET /api/v1/books/{id}, then stops it; leaves
# "<req/s> <RSS KiB>" in $work/result.
load_get_book() {
  write_get_lua "http://$HTTP"
  wrk_get "http://$HTTP" "gateway ($1)"
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  echo "$(cat "$work/rps") $rss_kb" >"$work/result"
}
