#!/usr/bin/env bash
# The demo: a local ZooKeeper, one gale agent, and the example `wordcount` topology whose
# two workers you can watch.
#
#   scripts/demo.sh            # Ctrl-C stops everything: topology, workers, agent, ZooKeeper
#
# Everything lives under one temp dir (printed at start).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked --quiet
GALE="$PWD/target/release/gale"

work=$(mktemp -d /tmp/gale-demo.XXXXXX)
. scripts/local-zk.sh
local_zk_config "$work"
port=$ZK_PORT

cleanup() {
  trap - EXIT INT TERM
  echo
  if [ -n "${agent:-}" ] && kill -0 "$agent" 2>/dev/null; then
    # Workers outlive the agent by design, so take the topology away first: the agent stops
    # its workers (SIGTERM) and we wait until they are gone.
    echo "== killing the topology (the agent stops its workers)"
    "$GALE" topology kill wordcount >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      [ -z "$(ls -A "$work/local/workers" 2>/dev/null)" ] && break
      sleep 0.1
    done
    echo "== stopping the agent (SIGTERM: clean stop, ephemeral node removed at once)"
    kill -TERM "$agent"; wait "$agent" || true
  fi
  [ -n "${ZK_PID:-}" ] && kill "$ZK_PID" 2>/dev/null && wait "$ZK_PID" 2>/dev/null || true
  echo "== agent log: $work/agent.log"
}
trap cleanup EXIT INT TERM

echo "== starting ZooKeeper on 127.0.0.1:$port (data in $work/zk)"
local_zk_start "$work" 256m

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
# Its own session, so that Ctrl-C reaches only this script, which then stops things in order.
setsid "$GALE" run > "$work/agent.log" 2>&1 &
agent=$!

for _ in $(seq 1 100); do grep -q 'state=running' "$work/agent.log" && break; sleep 0.1; done
echo "== agent log so far"
cat "$work/agent.log"
echo
echo "== publishing the example's code as a blob (gale blob put wordcount-code ... --store $work/blobstore)"
mkdir -p "$work/blobstore"
tar czf "$work/wordcount-code.tar.gz" -C examples/wordcount .
"$GALE" blob put wordcount-code "$work/wordcount-code.tar.gz" --store "$work/blobstore"
echo "== submitting the example topology (gale topology submit examples/wordcount.json --auto-place 2)"
"$GALE" topology submit examples/wordcount.json --auto-place 2
for _ in $(seq 1 100); do [ -s "$work/logs/workers/wordcount/6701/worker.log" ] && break; sleep 0.1; done
echo
echo "== the local state (gale state dump)"
"$GALE" state dump | awk '/^version/ { n++ } n <= 1' | cut -c 1-160
echo "== workers, refreshed every 5 s. Ctrl-C to stop. Try:"
echo "   kill -9 <pid>                          (restarted at once)"
echo "   GALE_CONFIG=$work/gale.toml $GALE blob put wordcount-code $work/wordcount-code.tar.gz --store $work/blobstore"
echo "                                          (a new version: workers restart on it)"
while kill -0 "$agent" 2>/dev/null; do
  date +%T
  "$GALE" cluster supervisors
  "$GALE" cluster supervisors --json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    for w in s["workers"]:
        print("   port %(port)s  %(state)-8s pid %(pid)s  restarts %(restarts)s  last_exit %(last_exit)s" % w)'
  for port in 6700 6701; do
    printf '   %s: ' "$port"; tail -n 1 "$work/logs/workers/wordcount/$port/worker.log" 2>/dev/null || echo
  done
  sleep 5
done
