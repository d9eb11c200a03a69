#!/usr/bin/env bash
# Prints the path of a Debian 12 disk image that boots with systemd as PID 1, for the systemd
# VM stage (scripts/vm/systemd.sh). Built from Debian's packages with mmdebstrap, then made
# into an ext4 image with `mke2fs -d` (no loop mount). Cached under target/vm/, keyed by a hash
# of this file (the package list and the setup are in it): a second run on the same machine
# reuses the image, a fresh machine (or a change here) builds it. Older images are removed.
#
# The image holds no gale: the stage installs the .deb of the tree under test at every run.
# It does hold one unit of its own, gale-vmtest.service, which mounts the second disk the stage
# attaches (/dev/vdb, read-only) and runs the guest script from it, then powers the VM off
# whatever the script's outcome (SuccessAction=/FailureAction=).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Kept small: systemd as init (+ udev, as on a real host), what ZooKeeper needs, python3 (the
# guest script reads JSON with it; scripts/local-zk.sh picks a port with it), procps (ps).
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,udev,kmod,default-jre-headless,zookeeper,python3,procps
# Run by mmdebstrap on the host with the root directory as $1.
HOOKS=(
  'echo gale-vm > "$1/etc/hostname"'
  'printf "127.0.0.1 localhost\n127.0.1.1 gale-vm\n" > "$1/etc/hosts"'
  'mkdir -p "$1/mnt/in"'
  'cp scripts/vm/guest-systemd.service "$1/etc/systemd/system/gale-vmtest.service"'
  'chroot "$1" systemctl enable gale-vmtest.service'
  # No first-boot prompts, no apt timers, no login prompts on the consoles.
  'chroot "$1" systemctl mask systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer getty@tty1.service serial-getty@ttyS0.service'
)
# The key covers what the image is made of, not how this script reports.
key=$(printf '%s\n' "$SUITE" "$PACKAGES" "${HOOKS[@]}" | cat - scripts/vm/guest-systemd.service | sha256sum | cut -c1-16)
dir=target/vm
image="$dir/systemd-$SUITE-$key.ext4"
if [ -s "$image" ]; then
  echo "$image"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "vm/systemd-image: building the image needs root (mmdebstrap --mode=root)" >&2; exit 1; }
mkdir -p "$dir"
rm -f "$dir"/systemd-*.ext4
root=$(mktemp -d "$dir/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

started=$(date +%s)
hook_args=()
for hook in "${HOOKS[@]}"; do hook_args+=(--customize-hook="$hook"); done
mmdebstrap --mode=root --variant=minbase --include="$PACKAGES" "${hook_args[@]}" "$SUITE" "$root" >&2 ||
  { echo "vm/systemd-image: mmdebstrap failed (see above)" >&2; exit 1; }
mke2fs -q -t ext4 -L gale-vm -d "$root" "$image.tmp" 2G >&2
mv "$image.tmp" "$image"
echo "vm/systemd-image: built $image in $(( $(date +%s) - started )) s ($(du -sh --apparent-size "$root" | cut -f1) of files)" >&2
echo "$image"
