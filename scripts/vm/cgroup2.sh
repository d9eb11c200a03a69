#!/usr/bin/env bash
# The cgroup v2 VM stage of the tests (issue 14): boots Debian's kernel with virtme-ng under
# TCG over this machine's own files, and runs there, as root on a cgroup v2 kernel, the
# already-built test binaries that touch cgroups: the library's isolation tests and the
# worker and agent integration tests that create, limit, adopt and kill workers' cgroups
# (against a real ZooKeeper the harness starts in the guest). Each runs twice, in the root
# cgroup and in a systemd-like delegated /system.slice/gale.service (scripts/vm/cgroup2-guest.sh).
#
#   scripts/vm/cgroup2.sh          # after the host tests (scripts/test.sh runs it)
#
# Fails naming the cause when the VM cannot boot, the guest cannot set up, a test fails or
# skips, or the stage runs out of time; never skips. Output: target/vm/cgroup2/ (console.log,
# results, one log per place and step). Needs scripts/vm/install.sh's packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/vm/common.sh

# What runs in the guest. Filters are libtest's (substring of the test path); for a quicker
# look at one test, VM_LIB_FILTERS / VM_INTEGRATION_FILTERS (space-separated) replace them.
LIB_FILTERS=(isolation::)
INTEGRATION_FILTERS=(
  agent_restarts::
  isolation::
  workers::processes_left_behind_by_an_exited_worker_are_killed
  upgrade::the_previous_release_
  usage::
)
[ -z "${VM_LIB_FILTERS:-}" ] || read -r -a LIB_FILTERS <<<"$VM_LIB_FILTERS"
[ -z "${VM_INTEGRATION_FILTERS:-}" ] || read -r -a INTEGRATION_FILTERS <<<"$VM_INTEGRATION_FILTERS"
FAULT_ROUNDS=10 # for faults::sigkill when a filter names it (too slow under TCG for every run)
ZK_SECS=240
LIB_SECS=150
INTEGRATION_SECS=330
BOOT_SECS=900

vm_find_vng
command -v java >/dev/null || vm_fail "java is missing: run scripts/install-deps.sh (the tests start ZooKeeper in the guest)"

# The test binaries, built on the host (nothing is compiled in the guest).
binaries=$(cargo test --locked --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        if (kind, m["target"]["name"]) in (("lib", "gale"), ("test", "tests")):
            print(kind, m["executable"])')
lib_test=$(awk '$1 == "lib" {print $2}' <<<"$binaries")
integration_test=$(awk '$1 == "test" {print $2}' <<<"$binaries")
[ -x "$lib_test" ] && [ -x "$integration_test" ] || vm_fail "cgroup2: test binaries not found in cargo's output: $binaries"
target=$(cargo metadata --locked --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# The upgrade tests run the previous release's binary: built (cached) here, never in the guest.
GALE_PREVIOUS_RELEASE=${GALE_PREVIOUS_RELEASE:-$(scripts/build-previous-release.sh)}

out=$target/vm/cgroup2
rm -rf "$out"
mkdir -p "$out"
{
  declare -p LIB_FILTERS INTEGRATION_FILTERS
  printf 'LIB_TEST=%q\nINTEGRATION_TEST=%q\nGALE_PREVIOUS_RELEASE=%q\n' "$lib_test" "$integration_test" "$GALE_PREVIOUS_RELEASE"
  printf 'ZK_SECS=%d\nLIB_SECS=%d\nINTEGRATION_SECS=%d\nFAULT_ROUNDS=%d\n' "$ZK_SECS" "$LIB_SECS" "$INTEGRATION_SECS" "$FAULT_ROUNDS"
} >"$out/plan.sh"

echo "vm cgroup2: booting $(vm_kernel) (TCG) for: lib ${LIB_FILTERS[*]}; tests ${INTEGRATION_FILTERS[*]}" >&2
start=$(date +%s)
boot_status=0
vm_boot "$out" "$BOOT_SECS" "$target" -- bash "$PWD/scripts/vm/cgroup2-guest.sh" "$out" || boot_status=$?
secs=$(($(date +%s) - start))
grep '^guest: ' "$out/console.log" >&2 || true
[ "$boot_status" -ne 124 ] || echo "vm cgroup2: the VM ran out of its $BOOT_SECS s" >&2
vm_check_results "$out/results" "cgroup2 (vng exit $boot_status, $secs s, logs in $out)"
echo "vm cgroup2: passed in $secs s: $(grep -c '^step ' "$out/results") steps; logs in $out" >&2
