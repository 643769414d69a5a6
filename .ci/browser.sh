#!/usr/bin/env bash
# The shop's pages in a real browser: headless Chromium (Debian's) driven by playwright-core and
# checked with axe-core (both pinned in web/package-lock.json, from npm), against `bookstore up`
# on ports of its own. Screenshots of every page land in web/screenshots (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || { echo "no $CHROMIUM: install Debian's chromium"; exit 1; }
"$CHROMIUM" --version
(cd web && npm ci --no-audit --no-fund --loglevel=error)
source .ci/up.sh
admin_password="browser admin passphrase"
start_up "$admin_password"
cd web
BOOKSTORE_URL="$base" BOOKSTORE_ADMIN_PASSWORD="$admin_password" SCREENSHOTS_DIR=screenshots npm test
