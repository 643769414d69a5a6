# Sourced by the CI steps that drive a running shop from outside (schemathesis.sh, browser.sh):
# `start_up ADMIN_PASSWORD` builds the binary, runs `bookstore up` with its data in a temporary
# folder on ports of its own (0: the system picks; read back from its log), waits until it is
# ready, and sets `base` (the gateway's URL). It stops, and its folder goes, when the script
# exits.

addr_of() {
  sed -n "s/.*\"message\":\"listening\".*\"service\":\"$1\".*\"addr\":\"\\([^\"]*\\)\".*/\\1/p; s/.*\"addr\":\"\\([^\"]*\\)\".*\"message\":\"listening\".*\"service\":\"$1\".*/\\1/p" "$up_work/server.log" | head -n 1
}

start_up() {
  up_work=$(mktemp -d)
  trap stop_up EXIT
  local admin_password=$1 any=127.0.0.1:0
  cargo build --locked -q -p bookstore
  BOOKSTORE_ADMIN_PASSWORD="$admin_password" RUST_LOG=info "${CARGO_TARGET_DIR:-target}/debug/bookstore" up \
    --data-dir "$up_work/data" --http "$any" --admin-http "$any" --books-grpc "$any" --users-grpc "$any" \
    --orders-grpc "$any" --fulfillment-grpc "$any" --recommendations-grpc "$any" >"$up_work/server.log" 2>&1 &
  server_pid=$!
  local admin
  for _ in $(seq 1 300); do
    admin=$(addr_of admin); [ -n "$admin" ] && curl -sf "http://$admin/readyz" >/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$up_work/server.log"; echo "bookstore up stopped"; exit 1; }
    sleep 0.2
  done
  base="http://$(addr_of gateway)"
  echo "bookstore up at $base"
}

stop_up() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$up_work"
}
