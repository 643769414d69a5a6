#!/usr/bin/env bash
# The instruction-count gate: what a book read and a checkout cost, counted in instructions by
# callgrind (the same for the same binary and inputs, however busy the machine is), against the
# counts recorded in bench/instructions.baseline. Fails when a read costs more than its baseline
# by more than READ_MARGIN percent (default 3), a checkout by more than CHECKOUT_MARGIN (default
# 20: a checkout's path still has work that a clock paces, so its count moves with how fast
# the machine runs the workload; see bench/README.md).
#
#   .ci/instructions.sh             # check
#   .ci/instructions.sh --record    # write the counts measured now as the new baseline
#
# It counts the workload example of the test build (crates/bookstore/examples/workload.rs:
# dependencies at opt-level 1, the project's own code unoptimised), so it needs no build of its
# own in CI. A path's cost is (the run with N requests - the run with none) / N.
set -euo pipefail
cd "$(dirname "$0")/.."

READ_MARGIN=${READ_MARGIN:-3}
CHECKOUT_MARGIN=${CHECKOUT_MARGIN:-20}
READS=${READS:-1000}
CHECKOUTS=${CHECKOUTS:-100}
baseline=bench/instructions.baseline
bin="${CARGO_TARGET_DIR:-target}/debug/examples/workload"

command -v valgrind >/dev/null || { echo "the instruction gate needs valgrind"; exit 1; }
cargo build --quiet --locked -p bookstore --example workload

# The instructions one run of the workload executes, every thread counted.
instructions() {
  local out
  out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1) || { echo "$out" | tail -n 30; exit 1; }
  echo "$out" | awk '/Collected :/ {print $4}'
}

start=$(instructions start)
reads=$(instructions reads "$READS")
checkouts=$(instructions checkouts "$CHECKOUTS")
read_cost=$(( (reads - start) / READS ))
checkout_cost=$(( (checkouts - start) / CHECKOUTS ))
echo "start: $start instructions; book read: $read_cost per request ($READS); checkout: $checkout_cost per order ($CHECKOUTS)"

if [ "${1:-}" = "--record" ]; then
  {
    echo "# Instructions per request of the workload example (test build), as .ci/instructions.sh counts them."
    echo "# Recorded on purpose, with .ci/instructions.sh --record, in a commit that says why."
    echo "read $read_cost"
    echo "checkout $checkout_cost"
  } >"$baseline"
  echo "recorded in $baseline"
  exit 0
fi

failed=0
check() {
  local path=$1 measured=$2 MARGIN=$3 recorded
  recorded=$(awk -v p="$path" '$1 == p {print $2}' "$baseline")
  [ -n "$recorded" ] || { echo "no baseline for $path in $baseline"; failed=1; return; }
  local permille=$(( measured * 1000 / recorded ))
  printf '%-9s %12d now, %12d recorded: %d.%d%% of the baseline\n' "$path" "$measured" "$recorded" $((permille / 10)) $((permille % 10))
  if [ "$measured" -gt $(( recorded * (100 + MARGIN) / 100 )) ]; then
    echo "FAILED: a $path costs more than $MARGIN% over its baseline. Find what added the work, or, if it is"
    echo "worth it, record a new baseline (.ci/instructions.sh --record) in a commit that says why."
    failed=1
  elif [ "$measured" -lt $(( recorded * (100 - 2 * MARGIN) / 100 )) ]; then
    echo "note: a $path now costs well under its baseline; record the gain (.ci/instructions.sh --record)."
  fi
}
check read "$read_cost" "$READ_MARGIN"
check checkout "$checkout_cost" "$CHECKOUT_MARGIN"
exit "$failed"
