#!/usr/bin/env bash
# Installs what the VM stages of the tests need on Debian 12, that a fresh machine lacks:
# Debian's qemu-system-x86 (run under TCG), linux-image-amd64 (the kernel booted: cgroup v2),
# busybox-static (virtme-ng's initramfs) and virtme-ng from PyPI, pinned (boots that kernel
# over the host's own files). Idempotent: does nothing when everything is there.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/vm/common.sh

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || need+=(linux-image-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
vm_apt_install vm/install ${need[@]+"${need[@]}"}

if ! (vm_find_vng) 2>/dev/null; then
  echo "vm/install: installing virtme-ng $VM_VIRTME_NG_VERSION from PyPI (pip --user)" >&2
  # Debian's own python3 refuses pip outside a venv (PEP 668); a pyenv or other python does not.
  python3 -m pip install --quiet --user "virtme-ng==$VM_VIRTME_NG_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages "virtme-ng==$VM_VIRTME_NG_VERSION"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  vm_find_vng
fi
