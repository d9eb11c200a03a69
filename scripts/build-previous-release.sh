#!/usr/bin/env bash
# Builds the gale binary of the PREVIOUS release from git, for the upgrade tests
# (tests/upgrade.rs): workers started by that binary must be adopted by this build.
#
#   scripts/build-previous-release.sh     # prints the binary's path
#
# The release's tree is `git archive`d into <target>/previous-release/<tag>/src and built there
# (dev profile without debug info, --locked) with its own target dir, so the binary is
# <tree>/target/debug/gale and the tree's own scripts (build-deb.sh) sit three levels above it.
# Cached: a second run prints the path at once; a tree from another commit is replaced. Fails
# naming the cause: no git history (neither the tag nor the commit), or the build's own error.
#
# When a release is made, point PREVIOUS_TAG and PREVIOUS_COMMIT at it (README "Releasing").
set -euo pipefail
cd "$(dirname "$0")/.."

PREVIOUS_TAG=v0.1.0
PREVIOUS_COMMIT=5602334

fail() {
  echo "build-previous-release: $*" >&2
  exit 1
}

# The commit to build: the tag, or the commit when a clone lacks the tag.
commit=""
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  fail "no git history in $(pwd): the previous release ($PREVIOUS_TAG) is built from git; run from a clone"
fi
for rev in "$PREVIOUS_TAG" "$PREVIOUS_COMMIT"; do
  if commit=$(git rev-parse --verify --quiet "$rev^{commit}"); then
    break
  fi
  commit=""
done
if [ -z "$commit" ]; then
  fail "neither the tag $PREVIOUS_TAG nor the commit $PREVIOUS_COMMIT is in this clone's history" \
    "(a shallow clone? try: git fetch --tags --unshallow)"
fi

cache=$(realpath -m "${CARGO_TARGET_DIR:-target}/previous-release/$PREVIOUS_TAG")
src="$cache/src"
binary="$src/target/debug/gale"
mkdir -p "$cache"
# One build at a time (scripts/test.sh and a test process may both ask).
exec 9>"$cache/lock"
flock 9

if [ "$(cat "$cache/built" 2>/dev/null)" = "$commit" ] && [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi

if [ "$(cat "$cache/extracted" 2>/dev/null)" != "$commit" ]; then
  rm -rf "$src" "$cache/extracted" "$cache/built"
  mkdir -p "$src"
  git archive --format=tar "$commit" | tar -x -C "$src" || fail "could not extract $commit into $src"
  echo "$commit" > "$cache/extracted"
fi

started=$(date +%s)
echo "build-previous-release: building $PREVIOUS_TAG ($commit) in $src" >&2
# No debug info and no incremental cache: the binary only has to run (a third of the disk, and
# faster to build and to package).
if ! (cd "$src" && CARGO_TARGET_DIR="$src/target" CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0 \
  cargo build --locked --bin gale >&2); then
  fail "cargo build of $PREVIOUS_TAG ($commit) failed in $src (its output is above)"
fi
[ -x "$binary" ] || fail "the build of $PREVIOUS_TAG left no binary at $binary"
echo "build-previous-release: built $PREVIOUS_TAG in $(($(date +%s) - started)) s" >&2
echo "$commit" > "$cache/built"
echo "$binary"
