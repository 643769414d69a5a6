#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI document with schemathesis (from PyPI), every check on,
# as an outside tester would: anonymous, as a customer and as an admin, against `bookstore up`
# on ports of its own (0: the system picks; read back from its log). Bounded in examples (see
# .ci/schemathesis.toml) and in time (SCHEMATHESIS_SECONDS per pass), with a fixed seed so a
# run can be repeated (SCHEMATHESIS_SEED=random explores). Any finding fails.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${SCHEMATHESIS_SECONDS:-60}"
seed="${SCHEMATHESIS_SEED:-20261201}"
venv="${SCHEMATHESIS_VENV:-$HOME/.cache/bookstore/schemathesis-4.32.5}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi
source .ci/up.sh
admin_password="schemathesis admin passphrase"
start_up "$admin_password"
token() {
  curl -sf -X POST "$base/api/v1/auth/login" -H 'content-type: application/json' -d "$1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
curl -sf -X POST "$base/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"username": "fuzzer", "email": "fuzzer@example.com", "password": "schemathesis customer passphrase", "full_name": "Fuzz Tester", "address": "1 Test Street"}' >/dev/null
customer=$(token '{"username": "fuzzer", "password": "schemathesis customer passphrase"}')
admin=$(token "{\"username\": \"admin\", \"password\": \"$admin_password\"}")

run() {
  local who=$1; shift
  echo "== schemathesis: $who"
  # Every check is on (the default; the config turns one off per operation, with its reason).
  # One worker: CPython 3.11's ast module fails ("recursion depth mismatch") when hypothesis
  # parses from several threads at once.
  "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "$base/api/openapi.json" \
    --phases examples,coverage,fuzzing --workers 1 --max-time "$seconds" \
    --seed "$seed" --no-color "$@"
}
run anonymous
# Changing or deleting the signed-in account ends the session the pass runs with (tested end to
# end instead: tests/e2e/users.rs, sessions.rs).
own='^(PATCH|DELETE) /api/v1/users/(me|\{id\})$'
run customer -H "Authorization: Bearer $customer" --exclude-name-regex "$own"
run admin -H "Authorization: Bearer $admin" --exclude-name-regex "$own"
