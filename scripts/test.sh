#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the integration tests that start real
# ZooKeeper servers and the real gale binary. Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
