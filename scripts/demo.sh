#!/usr/bin/env bash
# The demo: a local ZooKeeper, one gale agent, and a live view of its registration.
#
#   scripts/demo.sh            # Ctrl-C stops everything (the agent stops cleanly)
#
# Everything lives under one temp dir (printed at start) and goes away at the end, except
# the agent log, which is copied next to it for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked --quiet
GALE="$PWD/target/release/gale"

work=$(mktemp -d /tmp/gale-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/zk/data"
cat > "$work/zk/zoo.cfg" <<CFG
tickTime=1000
dataDir=$work/zk/data
clientPort=$port
clientPortAddress=127.0.0.1
4lw.commands.whitelist=*
admin.enableServer=false
CFG

cleanup() {
  trap - EXIT INT TERM
  echo
  if [ -n "${agent:-}" ] && kill -0 "$agent" 2>/dev/null; then
    echo "== stopping the agent (SIGTERM: clean stop, ephemeral node removed at once)"
    kill -TERM "$agent"; wait "$agent" || true
  fi
  [ -n "${zk:-}" ] && kill "$zk" 2>/dev/null && wait "$zk" 2>/dev/null || true
  echo "== agent log: $work/agent.log"
}
trap cleanup EXIT INT TERM

echo "== starting ZooKeeper on 127.0.0.1:$port (data in $work/zk)"
java -Xmx256m -cp /usr/share/java/zookeeper.jar org.apache.zookeeper.server.ZooKeeperServerMain \
  "$work/zk/zoo.cfg" > "$work/zk/zk.log" 2>&1 &
zk=$!
# `ruok` answers before the server serves; `srvr` shows a Mode: line only once it does.
for _ in $(seq 1 240); do
  if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && echo srvr >&3 && cat <&3" 2>/dev/null | grep -q '^Mode:'; then
    break
  fi
  sleep 0.25
done

cat > "$work/gale.toml" <<CFG
[zookeeper]
servers = ["127.0.0.1:$port"]
root = "/gale"

[supervisor]
local_dir = "$work/local"
log_dir = "$work/logs"
slots = [6700, 6701, 6702, 6703]
labels = { rack = "demo" }

[health]
script_dir = "$work/healthchecks"

[admin]
listen = ""
CFG
export GALE_CONFIG="$work/gale.toml"

echo "== effective config (gale check-config)"
"$GALE" check-config | sed -n '1,12p'; echo "   ..."

echo "== starting the agent (log: $work/agent.log)"
"$GALE" run > "$work/agent.log" 2>&1 &
agent=$!

for _ in $(seq 1 100); do grep -q 'state=running' "$work/agent.log" && break; sleep 0.1; done
echo "== agent log so far"
cat "$work/agent.log"
echo
echo "== the local state (gale state dump)"
"$GALE" state dump
echo "== live supervisors, refreshed every 5 s (gale cluster supervisors). Ctrl-C to stop."
while kill -0 "$agent" 2>/dev/null; do
  date +%T
  "$GALE" cluster supervisors
  "$GALE" cluster supervisors --json | python3 -c 'import json,sys; [print("   time_ms", s["time_ms"], "state", s["state"], "slots", s["slots"]) for s in json.load(sys.stdin)]'
  sleep 5
done
