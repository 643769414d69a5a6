#!/usr/bin/env bash
# Builds the previous release (release/previous: its version and commit) and prints the path of
# its `bookstore` binary, for the upgrade test (BOOKSTORE_TEST_PREVIOUS_RELEASE).
#
# Its source comes from this repository's history (git archive), so it needs no network beyond
# the package registries. It builds in a folder of its own, seeded with hard links to the
# dependencies this tree's build has compiled (the same crates, at the same versions), so only
# the release's own crates compile; theirs are never shared, since cargo would take one
# release's build-script output (the generated protobuf code) for the other's.
#
#   .ci/previous-release.sh    # prints e.g. target/previous-release/0.1.0/debug/bookstore
set -euo pipefail
cd "$(dirname "$0")/.."
read -r version commit < <(grep -v '^#' release/previous | awk 'NF == 2 {print $1, $2; exit}')
[ -n "${commit:-}" ] || { echo "release/previous names no release" >&2; exit 1; }
current=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
[ "$version" != "$current" ] || {
  echo "this tree is still version $current, the previous release's: bump the workspace version" >&2
  exit 1
}
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "the previous release's commit $commit is not in this clone (a shallow clone? fetch its history)" >&2
  exit 1
}
build_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
out="$build_dir/previous-release/$version"
if [ ! -x "$out/debug/bookstore" ] || [ "$(cat "$out/commit" 2>/dev/null)" != "$commit" ]; then
  rm -rf "$out"
  mkdir -p "$out/src"
  git archive "$commit" | tar -x -C "$out/src"
  # The dependencies already built, linked in (a link costs nothing; cargo writes a rebuilt
  # unit under a new name, never into a linked file); the project's own crates left out.
  for part in deps build .fingerprint; do
    mkdir -p "$out/debug/$part"
    [ -d "$build_dir/debug/$part" ] || continue
    find "$build_dir/debug/$part" -mindepth 1 -maxdepth 1 ! -name '*bookstore*' \
      -exec cp -al -t "$out/debug/$part" {} +
  done
  # Its own lock file, so it builds exactly what that release shipped with. With its examples:
  # they make cargo resolve the dependencies' features as the test build does (dev-dependencies
  # included), so the linked dependencies fit; the binary alone would need tokio, hyper, sqlx
  # and 40 more compiled again with fewer features (148 s instead of 40 s in CI).
  (cd "$out/src" && cargo build --quiet --locked -p bookstore --bin bookstore --examples --target-dir "$out" >&2)
  echo "$commit" >"$out/commit"
fi
"$out/debug/bookstore" --version >&2
echo "$out/debug/bookstore"
