#!/usr/bin/env bash
# Benchmarks gale's crash -> restart latency against supervisord, runit's runsv and s6-supervise
# on this machine (benches/peers.rs; the numbers are in docs/benchmarks.md, "Against the peers").
#
#     scripts/bench-peers.sh                         # ~5 min after the build
#     GALE_BENCH_CYCLES=60 GALE_BENCH_LOOP_SECS=60 scripts/bench-peers.sh
#
# One command: installs what the bench needs when something is missing (ZooKeeper and java for
# gale through scripts/install-deps.sh; the peers and a C compiler from Debian), makes sure the
# install left no system supervisord or runsvdir running beside the measurement, then runs
# `cargo bench --bench peers` with any extra arguments. The bench's knobs are environment
# variables, listed at the head of benches/peers.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The pids of the processes named $1 (no procps needed).
pids_named() {
  local d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = "$1" ] && echo "${d#/proc/}"
  done
  return 0
}

# Stops the system service $1 (systemd unit or init script), as the package would.
stop_service() {
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$1" 2>/dev/null; then
    $SUDO systemctl stop "$1"
  elif [ -x "/etc/init.d/$1" ]; then
    $SUDO "/etc/init.d/$1" stop || true
  fi
}

scripts/install-deps.sh

packages=(supervisor runit s6 gcc)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  supervisord_before=$(pids_named supervisord)
  runsvdir_before=$(pids_named runsvdir)
  echo "bench-peers: installing ${missing[*]}" >&2
  $SUDO apt-get update -o DPkg::Lock::Timeout=600 -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends "${packages[@]}" >&2
  # On a machine that runs services, the packages start a system supervisord (supervisor.service,
  # /etc/supervisor/supervisord.conf) and runsvdir on /etc/service (runit.service). The bench
  # runs its own; stop the ones this install started (only stopped: they start again at boot).
  if [ -z "$supervisord_before" ] && [ -n "$(pids_named supervisord)" ]; then
    echo "bench-peers: stopping the system supervisord the install started" >&2
    stop_service supervisor
  fi
  if [ -z "$runsvdir_before" ] && [ -n "$(pids_named runsvdir)" ]; then
    echo "bench-peers: stopping the system runsvdir the install started" >&2
    stop_service runit
  fi
fi

# Whatever still runs shares the two CPUs with the measurement: say so (the bench says it too).
for name in supervisord runsvdir runsv s6-svscan s6-supervise; do
  pids=$(pids_named "$name" | tr '\n' ' ')
  if [ -n "$pids" ]; then
    echo "bench-peers: warning: $name is running (pid $pids) beside the bench; its numbers may be disturbed" >&2
  fi
done

exec cargo bench --bench peers "$@"
