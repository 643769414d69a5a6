#!/usr/bin/env bash
# A PostgreSQL for trying the shop (the compose stack's, and the dev overlay's in Kubernetes),
# first start only (the image runs /docker-entrypoint-initdb.d/ while the data directory is
# empty): a role and a database per bookstore service, the database owned by its role and
# closed to every other.
#
# Each role's name, password and database are read from the service's own URL secret
# (/run/secrets/<service>-database-url, postgres://ROLE:PASSWORD@postgres:5432/DATABASE), so what
# the services connect with and what exists here cannot disagree. The password is taken as it
# stands, so it must need no percent-escaping in a URL: letters, digits and - . _ ~
# (deploy/compose/make-secrets.sh makes hex ones).
#
# Written to be sourced as well as run: the image sources an init script that is not executable.
set -eo pipefail

bookstore_create_databases() {
  local service url role password database
  for service in books users orders fulfillment recommendations; do
    url=$(<"/run/secrets/${service}-database-url")
    if [[ ! $url =~ ^postgres(ql)?://([^:/@]+):([^@/]+)@[^/]+/([^?]+) ]]; then
      echo "${service}-database-url is not postgres://ROLE:PASSWORD@HOST:PORT/DATABASE" >&2
      return 1
    fi
    role=${BASH_REMATCH[2]} password=${BASH_REMATCH[3]} database=${BASH_REMATCH[4]}
    if [[ ! $role =~ ^[a-z_][a-z0-9_]*$ || ! $database =~ ^[a-z_][a-z0-9_]*$ ]]; then
      echo "${service}-database-url: role and database must be lowercase letters, digits and _" >&2
      return 1
    fi
    if [[ ! $password =~ ^[A-Za-z0-9._~-]+$ ]]; then
      echo "${service}-database-url: the password must be letters, digits and - . _ ~ only" >&2
      return 1
    fi
    # psql's own quoting (:"name" an identifier, :'value' a literal), not the shell's. The
    # password goes through the environment (\getenv), not psql's arguments, which any process
    # on the host can read.
    BOOKSTORE_ROLE_PASSWORD="$password" \
      psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
      -v role="$role" -v database="$database" <<'SQL'
\getenv password BOOKSTORE_ROLE_PASSWORD
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
    echo "postgres-init: role and database ${database} for ${service}"
  done
}

bookstore_create_databases
