# Sourced by the VM stages (scripts/vm/*.sh, host side): the kernel and virtme-ng to boot
# with, one boot of the host's files under a Debian kernel with TCG, and the check of the
# result lines a guest writes. Every failure names its cause; nothing here skips.
#
#   vm_fail MESSAGE...                    prints "vm: MESSAGE" and exits 1
#   vm_kernel                             newest /boot/vmlinuz-*-amd64 (fails if none)
#   vm_find_vng                           puts the pinned virtme-ng on PATH (fails naming
#                                         scripts/vm/install.sh if it is not installed)
#   vm_boot OUT SECS RWDIR -- CMD...      boots CMD in a 2-CPU, 2 GB guest with RWDIR writable,
#                                         the console in OUT/console.log; returns vng's status
#                                         (124 when SECS ran out)
#   vm_apt_install WHO PACKAGE...         installs Debian packages (none given: nothing to do),
#                                         with sudo when not root; WHO names the caller
#   vm_check_results FILE NAME            reads FILE, the guest's result lines (below); fails
#                                         naming the first failed step, or a guest that never
#                                         started or never finished
#
# Result lines, one per step, appended by the guest to a file in an --rwdir:
#   step <name> rc=<exit code> secs=<seconds> log=<file>   (rc 0 = passed)
#   fail <reason>                                          (setup in the guest failed)
#   done                                                   (the guest reached its end)

VM_VIRTME_NG_VERSION=1.42

vm_apt_install() {
  local who=$1
  shift
  [ $# -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "$who: installing $*" >&2
  $sudo apt-get update -o DPkg::Lock::Timeout=600 -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends "$@" >&2
}

vm_fail() {
  echo "vm: $*" >&2
  exit 1
}

vm_kernel() {
  local kernel
  kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$kernel" ] || vm_fail "no /boot/vmlinuz-*-amd64: run scripts/vm/install.sh (Debian's linux-image-amd64)"
  [ -r "$kernel" ] || vm_fail "$kernel is not readable by $(id -un) (the VM stage runs as root, as CI does)"
  echo "$kernel"
}

vm_find_vng() {
  # pip --user puts the scripts there; vng itself runs `virtme-run` from PATH.
  local user_bin
  user_bin=$(python3 -m site --user-base 2>/dev/null)/bin
  PATH="$user_bin:$PATH"
  export PATH
  local version
  version=$(vng --version 2>/dev/null) || vm_fail "vng (virtme-ng) not found: run scripts/vm/install.sh"
  [ "$version" = "virtme-ng $VM_VIRTME_NG_VERSION" ] ||
    vm_fail "found $version, want virtme-ng $VM_VIRTME_NG_VERSION: run scripts/vm/install.sh"
}

vm_boot() {
  local out=$1 secs=$2 rwdir=$3
  shift 4 # out secs rwdir --
  local kernel
  kernel=$(vm_kernel)
  # --disable-kvm: KVM is not usable on the machines this runs on (qemu aborts setting MSRs),
  # so the guest runs under TCG: slow, but a real kernel. vng's own exit status is kept for
  # the report only; the result file is what decides.
  # timeout leads a process group of its own (vng, virtme-run, qemu): a stage that is
  # interrupted takes the whole VM down with it, not only vng.
  timeout --kill-after=10 "$secs" vng -r "$kernel" --disable-kvm --memory 2G --cpus 2 \
    --rwdir "$rwdir" -- "$@" </dev/null >"$out/console.log" 2>&1 &
  VM_PGID=$!
  trap 'kill -TERM -- -$VM_PGID 2>/dev/null' EXIT INT TERM
  local status=0
  wait "$VM_PGID" || status=$?
  trap - EXIT INT TERM
  return "$status"
}

vm_check_results() {
  local file=$1 name=$2
  [ -s "$file" ] || vm_fail "$name: the guest never started its script (the VM did not boot?); console: $(tail -n 15 "$(dirname "$file")/console.log" 2>/dev/null)"
  local reason
  reason=$(sed -n 's/^fail //p' "$file" | head -n 1)
  [ -z "$reason" ] || vm_fail "$name: guest setup failed: $reason"
  local failed
  failed=$(grep '^step ' "$file" | grep -v ' rc=0 ' | head -n 1 || true)
  if [ -n "$failed" ]; then
    local log=${failed#*log=}
    log=${log%% *}
    [ ! -f "$log" ] || grep -E '^test .* FAILED|^---- |panicked at|^  (left|right):' "$log" | head -n 30 >&2
    vm_fail "$name: failed: $failed"
  fi
  grep -qx done "$file" ||
    vm_fail "$name: the guest stopped before the end (timeout or crash) after: $(tail -n 1 "$file")"
}
