#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the integration tests that start real
# ZooKeeper servers and the real gale binary, then the VM stages: the tests that touch cgroups
# again on a cgroup v2 kernel, and the package under a real systemd. Installs missing system
# packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/vm/install.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The upgrade tests run workers under the previous release's binary: build it (from git, cached
# under target/) before the tests, so the build does not eat into their deadlines.
GALE_PREVIOUS_RELEASE=$(scripts/build-previous-release.sh)
export GALE_PREVIOUS_RELEASE
cargo test --locked
# This machine's kernel may have cgroup v1 (or no root): the cgroup tests run again, already
# built, in a VM on Debian's cgroup v2 kernel, in the root cgroup and in a delegated service cgroup.
scripts/vm/cgroup2.sh
# The systemd VM stage: the .deb in a Debian 12 VM whose PID 1 is systemd 252, the unit driven
# with systemctl while workers run (scripts/vm/systemd.sh; about 5 min, the image cached under
# target/vm/). Fails naming the cause; never skipped.
scripts/vm/systemd.sh
