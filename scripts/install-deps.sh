#!/usr/bin/env bash
# Installs what gale's demo and tests need on Debian 12 that a fresh machine lacks:
# ZooKeeper (Debian's package, run by the tests and the demo themselves, never as a service).
# Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
# The demo picks a free port and pretty-prints JSON with python3.
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The tests verify the systemd unit (systemd-analyze) and build the Debian package (dpkg-deb).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
command -v cargo >/dev/null 2>&1 || { echo "install-deps: cargo is missing; install a Rust toolchain (rustup) first" >&2; exit 1; }

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${need[*]}" >&2
  $SUDO apt-get update -o DPkg::Lock::Timeout=600 -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${need[@]}" >&2
  # The package enables a system ZooKeeper on :2181 on some setups; the tests start their own
  # servers on free ports, so a running system one is harmless, but we do not need it.
fi
