#!/usr/bin/env bash
# Refreshes the committed copy of the RustSec advisory database (deny/advisory-db) that
# `cargo deny check advisories` reads in CI, which reaches only package registries. Run it on a
# machine with network access, on purpose: after adding a dependency, and at least every few
# months; commit the result. Only the crate advisories are kept (about 1 MB).
#   deny/refresh-advisories.sh PATH-TO-A-FRESH-CLONE-OF-THE-RUSTSEC-ADVISORY-DB
set -euo pipefail
src=$(realpath "${1:?usage: $0 PATH-TO-A-FRESH-CLONE-OF-THE-RUSTSEC-ADVISORY-DB}")
cd "$(dirname "$0")"
rm -rf advisory-db
mkdir -p advisory-db
git -C "$src" archive HEAD crates LICENSE.txt | tar -x -C advisory-db
git -C "$src" log -1 --format='commit %H%ndate %cI' > advisory-db/SNAPSHOT
echo "advisory database at $(cat advisory-db/SNAPSHOT | tr '\n' ' ')"
