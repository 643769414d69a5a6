#!/usr/bin/env bash
# cargo deny check against the committed advisory copy, without touching the network beyond
# the crate registry: the copy becomes a one-commit git repository (cargo-deny reads the
# database's HEAD date) where cargo-deny expects its clone of the default database, and
# cargo-deny runs --offline (so the crates of every platform must be fetched first).
set -euo pipefail
cd "$(dirname "$0")/.."
db_root=$(mktemp -d)
trap 'rm -rf "$db_root"' EXIT
# The folder name cargo-deny 0.20 derives from the default database URL.
db="$db_root/advisory-db-3157b0e258782691"
cp -r deny/advisory-db "$db"
date=$(sed -n 's/^date //p' deny/advisory-db/SNAPSHOT)
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
    git -c user.name=bookstore -c user.email=ci@bookstore.invalid commit -qm "advisory snapshot"
)
echo "advisory database snapshot of $date"
cargo fetch --locked >/dev/null
# The inclusion graphs of duplicate-version warnings run to pages; the warnings stay.
BOOKSTORE_ADVISORY_DB="$db_root" cargo deny --offline check --hide-inclusion-graph "$@"
