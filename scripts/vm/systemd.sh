#!/usr/bin/env bash
# The systemd VM stage of the tests (issue 14): gale's .deb installed in a Debian 12 VM whose
# PID 1 is systemd 252, the shipped unit driven with systemctl start|reload|restart|stop while
# two workers run, and what systemd itself sees checked (scripts/vm/guest-systemd.sh has the
# checks). Run by scripts/test.sh after the host tests; alone: `scripts/vm/systemd.sh`.
#
#   1. installs the tools (scripts/vm/systemd-deps.sh) and gets the root filesystem image
#      (scripts/vm/systemd-image.sh: built with mmdebstrap on a fresh machine, then cached);
#   2. packages the binary the tests ran (target/debug/gale, debug info stripped; set
#      GALE_VM_BINARY to use another) with scripts/build-deb.sh;
#   3. boots the image under qemu (TCG: KVM is not usable on the CI machines) with the host's
#      Debian kernel and initrd, writes discarded (snapshot=on), and a second read-only disk
#      with the .deb and the guest script;
#   4. reads the checks' PASS/FAIL lines from the second serial port and fails, naming the
#      cause, if the VM does not boot, the guest script does not run or finish within
#      GALE_VM_TIMEOUT seconds (default 600), or any check fails. Never skips.
# Everything of a run is kept in target/vm/systemd-run/ (console.log: the whole serial console,
# the guest script's output included; results.log: the checks).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Every check the guest script reports; one missing is a failure, never a skip.
CHECKS="boot install verify start-timeout ready status-text workers cgroups watchdog reload reload-notify
  restart-states restart-adopt stop start-adopt no-ebusy"

# verdict QEMU_EXIT SECONDS: exits 1 naming the cause unless every check passed.
verdict() {
  local rc=$1 secs=$2 results console done_line failed
  results=$(tr -d '\r' < "$run/results.log")
  console=$(tr -d '\r' < "$run/console.log" 2>/dev/null || true)
  done_line=$(grep '^GALE-VM-DONE ' <<< "$results" || true)
  failed=$(grep '^FAIL ' <<< "$results" || true)
  if [ -z "$done_line" ]; then
    local reached cause
    if ! grep -q 'Linux version' <<< "$console"; then
      reached="before the kernel printed anything"
    elif ! grep -q 'Welcome to .*Debian' <<< "$console"; then
      reached="with the kernel up but no systemd (the root filesystem not mounted, or init failed)"
    elif ! grep -q '^GALE-VM-STARTED' <<< "$results"; then
      reached="with systemd up but gale-vmtest.service (the guest script) not started"
    else
      reached="in the guest script, after: $(grep -E '^(PASS|FAIL) ' <<< "$results" | tail -n 1 | cut -c1-120)"
    fi
    if [ "$rc" -eq 124 ]; then
      cause="timed out after $timeout_secs s, $reached"
    elif [ -z "$console" ]; then
      cause="qemu failed (exit $rc): $(head -c 2000 "$run/qemu.stderr")"
    else
      cause="the VM stopped (qemu exit $rc) $reached"
    fi
    echo "---- vm/systemd: the console's last 60 lines" >&2
    tail -n 60 <<< "$console" >&2
    echo "vm/systemd: FAIL after $secs s: $cause${failed:+; failed before that: $(cut -d: -f1 <<< "$failed" | paste -sd, -)}" >&2
    exit 1
  fi
  if [ -n "$failed" ]; then
    echo "vm/systemd: FAIL after $secs s ($done_line):" >&2
    sed 's/^/  /' <<< "$failed" >&2
    exit 1
  fi
  local name missing=""
  for name in $CHECKS; do
    grep -q "^PASS $name: " <<< "$results" || missing+=" $name"
  done
  if [ -n "$missing" ]; then
    echo "vm/systemd: FAIL after $secs s: checks that never reported:$missing" >&2
    exit 1
  fi
  echo "vm/systemd: PASS, $(grep -c '^PASS ' <<< "$results") checks in $secs s of VM" >&2
}

timeout_secs=${GALE_VM_TIMEOUT:-600}
started=$(date +%s)
run=target/vm/systemd-run

scripts/vm/systemd-deps.sh
image=$(scripts/vm/systemd-image.sh)

kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
initrd=/boot/initrd.img-${kernel#/boot/vmlinuz-}
[ -n "$kernel" ] && [ -r "$initrd" ] || { echo "vm/systemd: FAIL: no /boot/vmlinuz-*-amd64 with its initrd (linux-image-amd64)" >&2; exit 1; }

rm -rf "$run"
mkdir -p "$run/in"
binary=${GALE_VM_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --locked --quiet --bin gale
  objcopy --strip-debug target/debug/gale "$run/gale"
  binary=$run/gale
fi
deb=$(scripts/build-deb.sh --binary "$binary" --out "$run/deb")
cp "$deb" "$run/in/gale.deb"
cp scripts/vm/guest-systemd.sh scripts/local-zk.sh "$run/in/"
mke2fs -q -t ext4 -L gale-in -d "$run/in" "$run/in.ext4" $(( $(du -sm "$run/in" | cut -f1) + 16 ))M >&2

echo "vm/systemd: booting $image with $kernel under qemu TCG (bounded at $timeout_secs s)" >&2
: > "$run/results.log"
booted=$(date +%s)
set +e
timeout "$timeout_secs" qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp 2 \
  -display none -monitor none -no-reboot -nic none \
  -kernel "$kernel" -initrd "$initrd" -append "root=/dev/vda rw console=ttyS0 panic=-1 systemd.log_color=0 systemd.mask=getty-static.service" \
  -drive "file=$image,if=virtio,format=raw,snapshot=on" \
  -drive "file=$run/in.ext4,if=virtio,format=raw,readonly=on" \
  -serial "file:$run/console.log" -serial "file:$run/results.log" 2> "$run/qemu.stderr" &
qemu=$!
tail -n +1 --pid="$qemu" -f "$run/results.log" | sed -u 's/\r$//; s/^/vm: /' >&2
wait "$qemu"
rc=$?
set -e
secs=$(( $(date +%s) - booted ))

# The guest script's part of the console (the cgroups, the journal excerpts), for the CI log.
echo "---- vm/systemd: the guest script's output (whole console in $run/console.log)" >&2
tr -d '\r' < "$run/console.log" | sed -n 's/^\[ *[0-9.]*\] bash\[[0-9]*\]: //p' >&2
verdict "$rc" "$secs"
echo "vm/systemd: stage done in $(( $(date +%s) - started )) s (VM $secs s)" >&2
