#!/usr/bin/env bash
# The fault-injection suite (tests/faults.rs, the `faults` module of the integration test binary
# tests/tests.rs) with its narration shown: a 3-node ZooKeeper ensemble losing its leader, a
# follower and its quorum; 100 random SIGKILLs of the agent; a full local_dir; a worker storm
# against the restart budget. About a minute after the build. Needs root (the full-disk
# scenario mounts a tmpfs). A filter names a scenario by the start of its name (sigkill, fifty,
# the_ensemble, a_full); options (--exact, --test-threads=1, ...) and env pass through:
#   scripts/faults.sh                          # all four scenarios, fixed seeds
#   GALE_FAULT_SEED=7 scripts/faults.sh sigkill
#   GALE_FAULT_ROUNDS=500 scripts/faults.sh sigkill
set -euo pipefail
cd "$(dirname "$0")/.."

# A bare filter would also match tests of other modules: look each one up inside `faults::`.
args=()
filters=0
value_next=false
for arg in "$@"; do
  if $value_next || [[ $arg == -* ]]; then
    args+=("$arg")
    # libtest options whose value is the next argument.
    if ! $value_next && [[ $arg =~ ^(--skip|--test-threads|--color|--format|--logfile|-Z)$ ]]; then
      value_next=true
    else
      value_next=false
    fi
  else
    args+=("faults::$arg")
    filters=$((filters + 1))
  fi
done
[ "$filters" -gt 0 ] || args+=("faults::")

scripts/install-deps.sh
cargo test --locked --release --test tests -- --nocapture "${args[@]}"
