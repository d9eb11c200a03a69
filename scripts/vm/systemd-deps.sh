#!/usr/bin/env bash
# Installs what the systemd VM stage (scripts/vm/systemd.sh) needs on a Debian 12 host, from
# Debian's packages: mmdebstrap (builds the guest's root filesystem), qemu-system-x86 (boots
# it, TCG), linux-image-amd64 (the guest's kernel and initrd, booted with -kernel/-initrd),
# e2fsprogs (mke2fs -d: a disk image from a directory, no loop mount). Idempotent: does nothing
# when everything is there.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/vm/common.sh

need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v mke2fs >/dev/null 2>&1 || need+=(e2fsprogs)
# objcopy: the debug info of the tested binary is stripped before packaging (a smaller .deb).
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
# A kernel with its initrd (the initrd loads virtio_blk and ext4 for the guest's root disk).
compgen -G '/boot/initrd.img-*-amd64' >/dev/null || need+=(linux-image-amd64)

vm_apt_install vm/systemd-deps ${need[@]+"${need[@]}"}
