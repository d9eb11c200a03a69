#!/usr/bin/env bash
# Writes one release's golden local dirs (tests/fixtures/<release>/) with that release's real
# binary, against a real ZooKeeper started here (Debian's zookeeper package):
#
#   running/  two workers recorded as running (the agent SIGKILLed, then the workers killed:
#             "long dead" for any later build), local assignments, earlier session ids (three
#             agent runs, each SIGKILLed), no clean-shutdown marker
#   drained/  `gale drain` in force (drained = true), no workers, two agent runs
#
# Each case dir holds `local/` (the agent's local_dir without its lock and control socket;
# git keeps no empty dirs, the agent makes them again) and `assignments/` (the payloads that
# were in ZooKeeper, which tests/fixtures.rs puts back). Nothing in them names this machine's
# paths; pids and boot ids are this machine's, and dead everywhere.
#
#   scripts/make-fixture.sh <gale-binary> <out-dir>
#   scripts/make-fixture.sh /work/old-v0.1.0/target/debug/gale tests/fixtures/v0.1.0
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 <gale-binary> <out-dir>" >&2; exit 2; }
GALE=$(realpath "$1")
OUT=$2
[ -e "$OUT" ] && { echo "$OUT exists; remove it first" >&2; exit 1; }

work=$(mktemp -d /tmp/gale-fixture.XXXXXX)
. "$(dirname "$0")/local-zk.sh"
local_zk_config "$work"
port=$ZK_PORT

ZK_PID=
agent=
cleanup() {
  [ -n "$agent" ] && kill -KILL "$agent" 2>/dev/null
  kill_workers
  [ -n "$ZK_PID" ] && kill "$ZK_PID" 2>/dev/null && wait "$ZK_PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

local_zk_start "$work" 128m

# `gale state dump`, newest version only, one key's JSON value ("" when absent).
state_value() {
  "$GALE" state dump --config "$config" 2>/dev/null | python3 -c '
import sys
key = sys.argv[1]
versions = 0
for line in sys.stdin:
    if line.startswith("version "):
        versions += 1
        if versions > 1:
            break
    elif versions == 1 and line.strip().startswith(key + " = "):
        print(line.split(" = ", 1)[1].strip())
        break
' "$1"
}

wait_until() { # <what> <command...>
  local what=$1; shift
  for _ in $(seq 1 300); do
    "$@" && return 0
    sleep 0.2
  done
  echo "timed out waiting for $what" >&2
  cat "$work"/agent-*.log >&2 || true
  exit 1
}

worker_count() { # the number of recorded workers
  state_value workers | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)) if t else 0)'
}
has_workers() { [ "$(worker_count)" = "$1" ]; }
session_is_not() { local s; s=$(state_value last-session-id); [ -n "$s" ] && [ "$s" != "$1" ]; }

recorded_pids=()
kill_workers() {
  local pid
  for pid in "${recorded_pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
}

run=0
start_agent() {
  run=$((run + 1))
  "$GALE" run --config "$config" >> "$work/agent-$case-$run.log" 2>&1 &
  agent=$!
}
kill_agent() {
  kill -KILL "$agent"
  wait "$agent" 2>/dev/null || true
  agent=
}

# <topology> <port> <launch JSON>: written to <case>/assignments/ and submitted.
assign() {
  local file="$OUT/$case/assignments/$1.json"
  mkdir -p "$(dirname "$file")"
  cat > "$file" <<JSON
{
  "schema": 1,
  "topology_id": "$1",
  "launch": $3,
  "workers": [{ "supervisor_id": "$id", "port": $2 }]
}
JSON
  "$GALE" topology submit --config "$config" "$file" > /dev/null
}

make_case() { # <case>
  case=$1
  id="fixture-$case"
  dir="$work/$case"
  config="$dir/gale.toml"
  mkdir -p "$dir"
  cat > "$config" <<CFG
[zookeeper]
servers = ["127.0.0.1:$port"]
root = "/fixture-$case"

[supervisor]
id = "$id"
local_dir = "$dir/local"
log_dir = "$dir/logs"
slots = [6700, 6701]
sync_secs = 2
monitor_secs = 1
heartbeat_secs = 1

[health]
script_dir = "$dir/health"

[admin]
listen = ""
CFG
  start_agent
  wait_until "the first session" session_is_not none
  assign t-sleep 6700 '{ "command": ["/bin/sleep", "100000"], "env": { "FIXTURE": "1" }, "start_timeout_secs": 30 }'
  assign t-beat 6701 '{ "command": ["/bin/sh", "-c", "while :; do touch \"$GALE_HEARTBEAT_FILE\"; sleep 1; done"], "liveness": "heartbeat", "heartbeat_timeout_secs": 30 }'
  wait_until "two recorded workers" has_workers 2
  mapfile -t recorded_pids < <(state_value workers | python3 -c 'import json,sys; [print(r["process"]["pid"]) for r in json.load(sys.stdin).values()]')
  if [ "$case" = drained ]; then
    "$GALE" drain --wait --config "$config"
    wait_until "no recorded workers" has_workers 0
  fi
  local runs=$([ "$case" = drained ] && echo 2 || echo 3)
  for _ in $(seq 2 "$runs"); do
    local session
    session=$(state_value last-session-id)
    kill_agent
    start_agent
    wait_until "a new session" session_is_not "$session"
    # Adoption (running) or the drain hold (drained) happen before the first sync; give the
    # agent a sync period to settle and persist.
    sleep 3
  done
  kill_agent
  kill_workers
  recorded_pids=()
  mkdir -p "$OUT/$case"
  cp -a "$dir/local" "$OUT/$case/local"
  # The lock and the control socket are the running agent's, not state.
  find "$OUT/$case/local" \( -name lock -o -type s \) -delete
}

mkdir -p "$OUT"
make_case running
make_case drained
cat > "$OUT/README.md" <<EOF
Local dirs written by \`$("$GALE" --version)\` with \`scripts/make-fixture.sh\` on $(date -u +%Y-%m-%d).
Read by \`tests/fixtures.rs\` and \`src/local_state/stored/tests.rs\`; never edit by hand.

- \`running/\`: workers t-sleep (port 6700) and t-beat (6701, heartbeat) recorded as running
  (agent SIGKILLed three times, workers killed after the last), supervisor id \`fixture-running\`.
- \`drained/\`: the same topologies after \`gale drain\` (drained = true, no workers), two runs,
  supervisor id \`fixture-drained\`.
EOF
echo "fixtures written to $OUT:"
find "$OUT" -type f | sort
