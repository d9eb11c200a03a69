#!/usr/bin/env bash
# Runs INSIDE the cgroup v2 VM that scripts/vm/cgroup2.sh boots (root, the host's files
# read-only, OUT writable): the already-built test binaries named in OUT/plan.sh, first in the
# root cgroup, then in a systemd-like delegated service cgroup, /system.slice/gale.service with
# +memory +cpu +pids enabled in / and /system.slice (the test process, hence the agents it
# starts, moved into it first). Appends the result lines of scripts/vm/common.sh to
# OUT/results; each step's output goes to OUT/<place>-<step>.log.
#
#   cgroup2-guest.sh OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$1
results=$out/results
# shellcheck source=/dev/null
source "$out/plan.sh"

fail() {
  echo "fail $*" >>"$results"
  exit 1
}

# A clean environment: the host's PATH may point into a pyenv or a toolchain the guest need not see.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The host's /tmp is a 9p overlay here; the tests' temp dirs (ZooKeeper data, local dirs,
# control sockets) go on a tmpfs of the guest's own.
mkdir -p /run/gale-vm-tmp && mount -t tmpfs -o size=1g tmpfs /run/gale-vm-tmp || fail "cannot mount a tmpfs on /run/gale-vm-tmp"
export TMPDIR=/run/gale-vm-tmp HOME=/run/gale-vm-tmp
export GALE_PREVIOUS_RELEASE RUST_BACKTRACE=1

cg=/sys/fs/cgroup
grep -qw memory $cg/cgroup.controllers 2>/dev/null || fail "no cgroup v2 with memory at $cg (cgroup.controllers: $(cat $cg/cgroup.controllers 2>&1))"
for c in cpu pids; do grep -qw $c $cg/cgroup.controllers || fail "no $c controller in $cg/cgroup.controllers"; done
echo "guest: kernel $(uname -r), cgroup controllers: $(cat $cg/cgroup.controllers)"

# One ZooKeeper for both runs (tests/common's GALE_TEST_ZOOKEEPER), in the root cgroup. A JVM
# under TCG on a busy machine can take longer to serve than the harness waits for its own.
source scripts/local-zk.sh
local_zk_config "$TMPDIR"
java -Xmx256m -Dzookeeper.jmx.log4j.disable=true -cp /usr/share/java/zookeeper.jar \
  org.apache.zookeeper.server.ZooKeeperServerMain "$TMPDIR/zk/zoo.cfg" >"$TMPDIR/zk/zk.log" 2>&1 &
zk_start=$(date +%s)
until timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && echo srvr >&3 && cat <&3" 2>/dev/null | grep -q '^Mode:'; do
  [ $(($(date +%s) - zk_start)) -lt "$ZK_SECS" ] ||
    fail "ZooKeeper did not serve on 127.0.0.1:$ZK_PORT in $ZK_SECS s in the guest: $(tail -n 5 "$TMPDIR/zk/zk.log" | tr '\n' ' ')"
  sleep 0.5
done
echo "guest: ZooKeeper serves on 127.0.0.1:$ZK_PORT after $(($(date +%s) - zk_start)) s"
export GALE_TEST_ZOOKEEPER=127.0.0.1:$ZK_PORT

# step PLACE NAME SECS CMD...: runs CMD under a deadline, its output to a log, and records it.
step() {
  local place=$1 name=$2 secs=$3
  shift 3
  local log=$out/$place-$name.log start rc
  start=$(date +%s)
  echo "guest: $place $name: $*"
  timeout --kill-after=5 "$secs" "$@" >"$log" 2>&1
  rc=$?
  echo "step $place-$name rc=$rc secs=$(($(date +%s) - start)) log=$log" >>"$results"
  echo "guest: $place $name: exit $rc after $(($(date +%s) - start)) s; $(grep -E '^test result:' "$log" | tail -n 1)"
  check_log "$place" "$name" "$log"
}

# A test that printed that it skipped (no root, no cgroup, no controller) did not test
# anything here, where everything is there: that is a failure, named with its line.
check_log() {
  local place=$1 name=$2 log=$3 skipped
  skipped=$(grep -inE 'skipp|not testable|cannot be tracked|not checked' "$log" | head -n 3)
  if [ -n "$skipped" ]; then
    echo "step $place-$name-skipped rc=1 secs=0 log=$log (a test skipped in the VM: $(echo "$skipped" | tr '\n' ' '))" >>"$results"
  fi
}

# run_suites PLACE: every step of the plan, in this shell's cgroup.
run_suites() {
  local place=$1
  echo "guest: $place: in $(cat /proc/self/cgroup)"
  step "$place" lib "$LIB_SECS" "$LIB_TEST" --show-output "${LIB_FILTERS[@]}"
  if ! grep -q 'isolation mechanism: cgroup v2' "$out/$place-lib.log"; then
    echo "step $place-lib-mechanism rc=1 secs=0 log=$out/$place-lib.log (detection did not report cgroup v2)" >>"$results"
  fi
  # --nocapture: a panic shows in the log at once, even in a step that then runs out of time.
  step "$place" integration "$INTEGRATION_SECS" env GALE_FAULT_ROUNDS="$FAULT_ROUNDS" \
    "$INTEGRATION_TEST" --nocapture "${INTEGRATION_FILTERS[@]}"
}

# 1. The root cgroup (the root is exempt from the "no internal processes" rule).
[ "$(cat /proc/self/cgroup)" = "0::/" ] || fail "the guest script does not start in the root cgroup: $(cat /proc/self/cgroup)"
run_suites root
# The agents' workers' parents (gale-<id>) stay after their tests; the same ids come back in
# the delegated run, which must find only what it makes itself. Empty cgroups go (workers'
# cgroups one level down); one that cannot go is shown with what is in it.
for parent in "$cg"/gale-*; do
  [ -d "$parent" ] || continue
  for worker in "$parent"/*/; do [ ! -d "$worker" ] || rmdir "$worker" 2>/dev/null || true; done
  rmdir "$parent" 2>/dev/null ||
    echo "guest: left after the root run: $parent: $(ls "$parent" | grep -v '^cgroup\.\|^[a-z]*\.' | head -n 3) procs: $(cat "$parent"/cgroup.procs "$parent"/*/cgroup.procs 2>/dev/null | head -n 5 | tr '\n' ' ')"
done

# 2. A delegated service cgroup, laid out as systemd lays out a service in its slice.
unit=$cg/system.slice/gale.service
mkdir -p "$unit" || fail "cannot create $unit"
echo "+memory +cpu +pids" >$cg/cgroup.subtree_control || fail "cannot enable +memory +cpu +pids in $cg"
echo "+memory +cpu +pids" >$cg/system.slice/cgroup.subtree_control || fail "cannot enable +memory +cpu +pids in $cg/system.slice"
(
  echo $BASHPID >"$unit/cgroup.procs" || fail "cannot move the test shell into $unit"
  [ "$(cat /proc/self/cgroup)" = "0::/system.slice/gale.service" ] || fail "the test shell is in $(cat /proc/self/cgroup), not the unit"
  run_suites delegated
  # What the tests left where systemd would look: only the unit, empty again.
  left=$(find $cg/system.slice -mindepth 1 -type d ! -path "$unit" | head -n 3)
  [ -z "$left" ] || echo "step delegated-layout rc=1 secs=0 log=- (cgroups left under system.slice: $left)" >>"$results"
)
echo done >>"$results"
