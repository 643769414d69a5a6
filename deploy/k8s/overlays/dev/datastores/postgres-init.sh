#!/usr/bin/env bash
# Dev PostgreSQL, first start only (the image runs /docker-entrypoint-initdb.d/ while the data
# directory is empty): one role and one database per bookstore service, the database owned by
# its role and closed to the others. Name, password and database come from the service's URL in
# the Secret bookstore-secrets (<service>-database-url: postgres://ROLE:PASSWORD@postgres:5432/DB),
# so what the services connect with and what exists cannot disagree. Passwords must need no
# percent-escaping (letters, digits, - . _ ~; `openssl rand -hex 24` makes such).
set -euo pipefail

for service in books users orders fulfillment recommendations; do
  url=$(<"/run/secrets/${service}-database-url")
  if [[ ! $url =~ ^postgres(ql)?://([a-z_][a-z0-9_]*):([A-Za-z0-9._~-]+)@[^/]+/([a-z_][a-z0-9_]*)(\?.*)?$ ]]; then
    echo "postgres-init: ${service}-database-url is not postgres://ROLE:PASSWORD@HOST:PORT/DATABASE" \
      "with a lowercase role and database and an unescaped password" >&2
    exit 1
  fi
  role=${BASH_REMATCH[2]} password=${BASH_REMATCH[3]} database=${BASH_REMATCH[4]}
  # psql quotes (:"x" an identifier, :'x' a literal), not the shell.
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v role="$role" -v password="$password" -v database="$database" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
  echo "postgres-init: database ${database} owned by role ${role} (${service})"
done
