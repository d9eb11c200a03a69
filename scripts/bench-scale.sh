#!/usr/bin/env bash
# The scale benchmark (benches/scale.rs): N gale agents as separate processes against one local
# ZooKeeper; prints a markdown summary. About 3 minutes at N = 200 after the release build.
#
#   scripts/bench-scale.sh                          # N = 200
#   GALE_SCALE_AGENTS=50 scripts/bench-scale.sh     # any knob below, passed through as is
#   scripts/bench-scale.sh 2>&1 | tee scale.txt
#
# Knobs: GALE_SCALE_AGENTS (200), GALE_SCALE_SECS (60, steady-state window),
# GALE_SCALE_ROUNDS (6), GALE_SCALE_TOPOLOGIES (20; 0 skips that window),
# GALE_SCALE_TOPO_SECS (30), GALE_SCALE_SETTLE_MS (3000), GALE_BENCH_LOG (info),
# GALE_BENCH_KEEP (set: keep the temp dir with every agent's log).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# Environment variables reach the bench as they are; list the ones set, for the record.
env | grep -E '^GALE_(SCALE_|BENCH_)' >&2 || true
exec cargo bench --locked --bench scale
