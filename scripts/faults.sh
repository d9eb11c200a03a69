#!/usr/bin/env bash
# The fault-injection suite (tests/faults.rs) with its narration shown: a 3-node ZooKeeper
# ensemble losing its leader, a follower and its quorum; 100 random SIGKILLs of the agent; a
# full local_dir; a worker storm against the restart budget. About a minute after the build.
# Needs root (the full-disk scenario mounts a tmpfs). Pass test-name filters or env through:
#   scripts/faults.sh                          # all four scenarios, fixed seeds
#   GALE_FAULT_SEED=7 scripts/faults.sh sigkill
#   GALE_FAULT_ROUNDS=500 scripts/faults.sh sigkill
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo test --locked --release --test faults -- --nocapture "$@"
