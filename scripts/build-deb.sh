#!/usr/bin/env bash
# Builds the Debian package of gale from this checkout, with dpkg-deb only (no extra tools).
#
#   scripts/build-deb.sh                       # release build, package in target/debian/
#   scripts/build-deb.sh --binary PATH --out DIR   # package an already built binary
#
# Layout (docs/operations.md "Installing"):
#   /usr/bin/gale
#   /lib/systemd/system/gale.service
#   /etc/gale/gale.toml            (a conffile: upgrades never overwrite the operator's edits)
#   /etc/gale/healthchecks/        (health.script_dir; empty: no checks)
#   /usr/share/doc/gale/           (README, docs, the example config)
# Installing enables the service but does not start it: the operator sets zookeeper.servers
# first, then `systemctl start gale`. An upgrade restarts the agent; workers keep running.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR]" >&2; exit 2 ;;
  esac
done
. scripts/layout.sh
binary=$(gale_binary "$binary")

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install_layout "$stage" "$binary"
cat > "$stage/usr/share/doc/gale/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gale
Files: *
License: Apache-2.0
EOF

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<EOF
Package: gale
Version: $version
Architecture: $arch
Maintainer: gale developers <gale@localhost>
Section: admin
Priority: optional
Depends: libc6
Recommends: zookeeper
Installed-Size: $(du -sk "$stage" | cut -f1)
Description: Storm-style node supervisor agent
 gale registers a worker host in ZooKeeper, runs and restarts the workers
 assigned to it, downloads their code blobs, and reports what it runs.
EOF
echo "/etc/gale/gale.toml" > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  # Enabled, not started: zookeeper.servers must be set first (docs/operations.md).
  systemctl enable gale.service >/dev/null 2>&1 || true
  if [ -n "$2" ]; then
    # An upgrade: restart the agent on the new binary; KillMode=process keeps the workers.
    systemctl try-restart gale.service >/dev/null 2>&1 || true
  else
    echo "gale: set zookeeper.servers in /etc/gale/gale.toml, then: systemctl start gale"
  fi
fi
exit 0
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# On removal stop the agent (its workers are left running: stop them first with `gale drain --wait`).
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
  systemctl stop gale.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = "purge" ]; then
  rm -rf /var/lib/gale /var/log/gale
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/gale_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
