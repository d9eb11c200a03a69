#!/usr/bin/env bash
# Installs gale from this checkout on a host without the Debian package, laid out like it:
#
#   sudo scripts/install.sh                        # release build, install into /
#   scripts/install.sh --binary PATH --root DIR    # an already built binary, into a scratch root
#
# /usr/bin/gale, /lib/systemd/system/gale.service, /etc/gale/gale.toml (kept if present: an
# operator's config is never overwritten), /etc/gale/healthchecks/, /usr/share/doc/gale/.
# With systemd running (and --root /), the service is enabled but not started: set
# zookeeper.servers in /etc/gale/gale.toml, then `systemctl start gale`.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
root="/"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --root) root="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--root DIR]" >&2; exit 2 ;;
  esac
done
. scripts/layout.sh
binary=$(gale_binary "$binary")
install_layout "$root" "$binary" keep

if [ "$root" = "/" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable gale.service
  echo "install: enabled. Set zookeeper.servers in /etc/gale/gale.toml, then: systemctl start gale"
  echo "install: an upgrade is this script again, then: systemctl restart gale (workers keep running)"
fi
