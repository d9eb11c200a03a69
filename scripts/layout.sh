# Sourced by scripts/build-deb.sh and scripts/install.sh: the one place that says where gale's
# files go on a host (docs/operations.md "Installing and upgrading").

# The binary to install: $1 if given, else a fresh release build.
gale_binary() {
  if [ -n "${1:-}" ]; then
    echo "$1"
  else
    cargo build --release --locked --quiet
    echo "target/release/gale"
  fi
}

# install_layout ROOT BINARY [keep]: lays the files out under ROOT. With "keep", an existing
# ROOT/etc/gale/gale.toml (the operator's) is left as it is.
install_layout() {
  local root="$1" binary="$2" keep="${3:-}"
  install -D -m 0755 "$binary" "$root/usr/bin/gale"
  install -D -m 0644 systemd/gale.service "$root/lib/systemd/system/gale.service"
  if [ "$keep" = keep ] && [ -e "$root/etc/gale/gale.toml" ]; then
    echo "install: keeping the existing $root/etc/gale/gale.toml (the new example is in /usr/share/doc/gale)"
  else
    install -D -m 0644 config/gale.toml "$root/etc/gale/gale.toml"
  fi
  install -d -m 0755 "$root/etc/gale/healthchecks" "$root/usr/share/doc/gale/docs"
  install -m 0644 README.md ARCHITECTURE.md "$root/usr/share/doc/gale/"
  install -m 0644 docs/*.md "$root/usr/share/doc/gale/docs/"
  install -m 0644 config/gale.toml "$root/usr/share/doc/gale/gale.toml.example"
}
