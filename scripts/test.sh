#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the integration tests that start real
# ZooKeeper servers and the real gale binary. Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The upgrade tests run workers under the previous release's binary: build it (from git, cached
# under target/) before the tests, so the build does not eat into their deadlines.
GALE_PREVIOUS_RELEASE=$(scripts/build-previous-release.sh)
export GALE_PREVIOUS_RELEASE
cargo test --locked
