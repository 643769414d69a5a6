#!/usr/bin/env bash
# Makes the secrets of the compose stack (deploy/compose.yaml), one file each in deploy/secrets/
# (or the folder given), from /dev/urandom. A file that exists is kept: the database and the
# broker remember the passwords of their first start, so new ones would lock the services out.
# To start over: `docker compose -f deploy/compose.yaml down -v`, delete the files, run this again.
#
#   deploy/compose/make-secrets.sh [DIR]
#
# The names are those of deploy/env/secrets.example.env, plus the stack's own postgres-password
# (PostgreSQL's superuser) and grafana-admin-password. Passwords inside URLs are hex, so they need
# no escaping; the PostgreSQL init script (deploy/k8s/overlays/dev/datastores/postgres-init.sh)
# and the rabbitmq and redis services read them back out of the URLs.
set -euo pipefail

dir=${1:-"$(cd "$(dirname "$0")/.." && pwd)/secrets"}

# n random bytes as hex, and as base64.
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
b64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }

umask 077
mkdir -p "$dir"
# Closed before any secret is written into it (a checkout made it 0755 for its README).
chmod 0700 "$dir"

# Writes the secret $1 with the value $2 unless it exists. The containers read these files as
# their own users (65532 for the bookstore, postgres, rabbitmq, redis, grafana), not as the
# owner on this machine, so the files are world-readable; the folder is not (0700), which keeps
# other users of this machine out.
put() {
  local file="$dir/$1"
  if [ -e "$file" ]; then
    echo "kept    $file"
  else
    printf '%s' "$2" >"$file"
    chmod 0644 "$file"
    echo "created $file"
  fi
}

# The master key: 32 random bytes, base64 (what `bookstore admin generate-master-key` prints).
put master-key "$(b64 32)"
put admin-password "$(b64 32)"
put orders-client-secret "$(b64 32)"
put recommendations-client-secret "$(b64 32)"
for service in books users orders fulfillment recommendations; do
  put "$service-database-url" "postgres://$service:$(hex 24)@postgres:5432/$service"
done
put amqp-url "amqp://bookstore:$(hex 24)@rabbitmq:5672/%2f"
put redis-url "redis://:$(hex 24)@redis:6379"
put postgres-password "$(hex 24)"
put grafana-admin-password "$(hex 16)"
