#!/usr/bin/env bash
# benches/peers.rs inside a cgroup v2 kernel: the same comparison as scripts/bench-peers.sh
# (the fork/exec floor, runit's runsv, gale; s6-supervise and supervisord when installed), run
# in a virtme-ng VM booted on Debian's kernel, so that gale's workers get cgroup v2 (on this
# project's machines the host has cgroup v1). The numbers are in docs/benchmarks.md.
#
#     scripts/bench-peers-vm.sh                 # ~8 min: build, ~20 s boot, the bench under TCG
#     GALE_BENCH_CYCLES=20 scripts/bench-peers-vm.sh
#     GALE_VM_KERNEL=/boot/vmlinuz-6.1.0-57-amd64 scripts/bench-peers-vm.sh
#
# Without KVM the VM runs under TCG (emulation): absolute times there mean nothing, compare the
# tools' ratios within one run. The bench's knobs (GALE_BENCH_*, head of benches/peers.rs) pass
# through; here GALE_BENCH_PEERS defaults to the tools found on PATH, GALE_BENCH_LIFETIME_MS to
# 1500, GALE_BENCH_CYCLES to 40 and GALE_BENCH_LOOP_SECS to 0 (no tight-loop phase).
#
# Inside, the bench runs as a systemd service would: in /system.slice/bench-peers.service,
# with memory, cpu and pids enabled in / and /system.slice, so gale's workers land at the
# cgroup root, /gale-<id>/<worker> (the layout of src/isolation/mod.rs under a unit). TMPDIR is a tmpfs inside the VM (9p files of the host break temp files).
#
# Needs: qemu-system-x86 and a Debian kernel image (apt), virtme-ng (pip), runit for runsv,
# java + zookeeper (scripts/install-deps.sh), gcc. Fails naming what is missing; never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "${1:-}" = "--inside" ]; then
  # In the VM, as root. $2: the (writable) directory for the printout.
  out=$2
  [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "bench-peers-vm: /sys/fs/cgroup is not cgroup v2" >&2; exit 1; }
  mount -t tmpfs -o size=1G tmpfs /tmp
  export TMPDIR=/tmp
  for dir in /sys/fs/cgroup /sys/fs/cgroup/system.slice; do
    mkdir -p "$dir"
    echo "+memory +cpu +pids" > "$dir/cgroup.subtree_control"
  done
  service=/sys/fs/cgroup/system.slice/bench-peers.service
  mkdir -p "$service"
  echo $$ > "$service/cgroup.procs"
  echo "bench-peers-vm: kernel $(uname -r), bench in $(cut -d: -f3 /proc/self/cgroup)" >&2
  "$(cat "$out/bench-exe")" > "$out/peers-vm.txt" 2> "$out/peers-vm.log" || {
    status=$?
    tail -30 "$out/peers-vm.log" >&2
    exit $status
  }
  exit 0
fi

# The pinned virtme-ng where scripts/vm/install.sh put it (pip --user), found as the VM stages
# find it (fails naming scripts/vm/install.sh when it is missing).
source scripts/vm/common.sh
vm_find_vng
kernel=${GALE_VM_KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)}
missing=()
[ -n "$kernel" ] && [ -r "$kernel" ] || missing+=("a kernel image in /boot (apt-get install linux-image-amd64)")
command -v qemu-system-x86_64 >/dev/null || missing+=("qemu-system-x86_64 (apt-get install qemu-system-x86)")
command -v runsv >/dev/null || missing+=("runsv (apt-get install runit)")
command -v cc >/dev/null || missing+=("cc (apt-get install gcc)")
command -v java >/dev/null || missing+=("java and zookeeper (scripts/install-deps.sh)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'bench-peers-vm: missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

# Build on the host (the VM sees the host's files read-only) and find the bench executable.
exe=$(cargo bench --locked --bench peers --no-run --message-format=json-render-diagnostics |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "peers" and m.get("executable"):
        print(m["executable"])')
[ -x "$exe" ] || { echo "bench-peers-vm: no bench executable from cargo (got '$exe')" >&2; exit 1; }

peers=floor
for tool in runsv:runsv s6:s6-supervise supervisord:supervisord; do
  command -v "${tool#*:}" >/dev/null && peers="$peers,${tool%%:*}"
done
peers="$peers,gale"

out="$root/target/bench-peers-vm"
rm -rf "$out"
mkdir -p "$out"
echo "$exe" > "$out/bench-exe"
echo "bench-peers-vm: booting $kernel (TCG, 2 CPUs, 2 GiB); tools: ${GALE_BENCH_PEERS:-$peers}" >&2
started=$(date +%s)
# Knobs go in through the environment of the inside command (vng does not pass ours on).
vng -r "$kernel" --disable-kvm --memory 2G --cpus 2 --rwdir "$out" -- \
  env GALE_BENCH_PEERS="${GALE_BENCH_PEERS:-$peers}" \
  GALE_BENCH_LIFETIME_MS="${GALE_BENCH_LIFETIME_MS:-1500}" \
  GALE_BENCH_CYCLES="${GALE_BENCH_CYCLES:-40}" \
  GALE_BENCH_LOOP_SECS="${GALE_BENCH_LOOP_SECS:-0}" \
  ${GALE_BENCH_BASELINE:+GALE_BENCH_BASELINE="$GALE_BENCH_BASELINE"} \
  ${GALE_BENCH_LOG:+GALE_BENCH_LOG="$GALE_BENCH_LOG"} \
  PATH="$PATH" \
  "$root/scripts/bench-peers-vm.sh" --inside "$out"
[ -s "$out/peers-vm.txt" ] || { echo "bench-peers-vm: the VM run printed nothing; see $out/peers-vm.log" >&2; exit 1; }
echo "bench-peers-vm: VM run took $(( $(date +%s) - started )) s" >&2
cat "$out/peers-vm.txt"
