#!/usr/bin/env bash
# Installs what the systemd VM stage (scripts/vm/systemd.sh) needs on a Debian 12 host, from
# Debian's packages: mmdebstrap (builds the guest's root filesystem), qemu-system-x86 (boots
# it, TCG), linux-image-amd64 (the guest's kernel and initrd, booted with -kernel/-initrd),
# e2fsprogs (mke2fs -d: a disk image from a directory, no loop mount). Idempotent: does nothing
# when everything is there.
set -euo pipefail

need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v mke2fs >/dev/null 2>&1 || need+=(e2fsprogs)
# objcopy: the debug info of the tested binary is stripped before packaging (a smaller .deb).
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
# A kernel with its initrd (the initrd loads virtio_blk and ext4 for the guest's root disk).
compgen -G '/boot/initrd.img-*-amd64' >/dev/null || need+=(linux-image-amd64)

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "vm/systemd-deps: installing ${need[*]}" >&2
  $SUDO apt-get update -o DPkg::Lock::Timeout=600 -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends "${need[@]}" >&2
fi
