#!/bin/bash
# The systemd VM stage, inside the VM (scripts/vm/systemd.sh boots it): systemd 252 is PID 1,
# this runs as gale-vmtest.service from the read-only second disk (/mnt/in), which also holds
# gale's .deb and scripts/local-zk.sh. It installs the package, starts ZooKeeper, and drives
# the shipped unit with systemctl while two workers run, checking what systemd itself sees.
#
# Each check prints one line, "PASS <name>: <detail>" or "FAIL <name>: <detail>", on the second
# serial port (/dev/ttyS1, a file on the host) and in the log; the last line is
# "GALE-VM-DONE pass=N fail=M". A step the rest depends on ends the run at once (its FAIL line,
# then the marker). Every wait is bounded. The unit powers the VM off when this script ends.
set -uo pipefail

IN=/mnt/in
RESULTS=/dev/ttyS1
ID=vmsd
TOPOLOGY=vmtest
PASSED=0
FAILED=0
export SYSTEMD_PAGER='' SYSTEMD_COLORS=0

# --- reporting --------------------------------------------------------------------------------

result() { # PASS|FAIL NAME DETAIL
  local line="$1 $2: $3"
  echo "$line" > "$RESULTS"
  echo "== $line"
  if [ "$1" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

# check NAME DETAIL CMD...: PASS when CMD succeeds.
check() {
  local name=$1 detail=$2
  shift 2
  if "$@"; then result PASS "$name" "$detail"; else result FAIL "$name" "$detail"; fi
}

finish() {
  echo "GALE-VM-DONE pass=$PASSED fail=$FAILED" > "$RESULTS"
  echo "== GALE-VM-DONE pass=$PASSED fail=$FAILED"
  exit 0
}

# fatal NAME DETAIL: a step the rest depends on failed; report it, show the agent's journal.
fatal() {
  result FAIL "$1" "$2 (the remaining checks cannot run)"
  show "journal of gale.service" journalctl -u gale.service -b --no-pager -n 80
  finish
}

show() { # TITLE CMD...: prints CMD's output into the log under a title
  local title=$1
  shift
  echo "---- $title"
  "$@" 2>&1 | sed 's/^/    /'
}

# wait_until SECONDS CMD...: polls CMD every 0.5 s until it succeeds; fails after SECONDS.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# --- what systemd and gale say ------------------------------------------------------------------

prop() { systemctl show -p "$1" --value gale.service; }
state() { systemctl show -p ActiveState -p SubState --value gale.service | paste -sd/ -; }
is_state() { [ "$(state)" = "$1" ]; }

# PID 1's own debug lines about gale.service since TS (epoch seconds): "Got notification
# message from PID ... (READY=1, ...)", "Changed running -> reload", ...
unit_journal() { journalctl -b -u gale.service --since "@$1" -o short-monotonic --no-pager 2>/dev/null; }
# The same without the forked child's mount namespace set-up lines, for the log.
show_unit_journal() { # TITLE SINCE
  echo "---- $1"
  unit_journal "$2" | grep -v '(gale)\[\|(kill)\[' | sed 's/^/    /'
}
journal_has() { unit_journal "$1" | grep -q -- "$2"; } # SINCE PATTERN
notified() { journal_has "$1" "Got notification message from PID $2 (.*$3"; } # SINCE PID MESSAGE

# "port:pid:worker_id" of each running worker, from `gale status --json` (the admin endpoint).
running_workers() {
  gale status --json 2>/dev/null | python3 -c '
import json, sys
for s in json.load(sys.stdin)["slots"]:
    if s["state"] == "running" and s["pid"]:
        print(s["port"], s["pid"], s["worker_id"], sep=":")'
}
two_running() { [ "$(running_workers | wc -l)" = 2 ]; }
same_workers() { [ "$(running_workers | sort)" = "$1" ]; } # EXPECTED
all_alive() { # "port:pid:id" lines: every pid alive
  local line
  for line in $1; do kill -0 "$(echo "$line" | cut -d: -f2)" 2>/dev/null || return 1; done
}

# --- the steps ------------------------------------------------------------------------------------

boot() {
  stty -F "$RESULTS" raw -echo 2>/dev/null
  echo "GALE-VM-STARTED" > "$RESULTS"
  local booted
  booted=$(timeout 120 systemctl is-system-running --wait)
  show "boot finished: $booted; failed units" systemctl --failed --no-legend
  show "PID 1" readlink /proc/1/exe
  show "systemd" systemctl --version
  show "kernel" uname -r
  local pid1 version fs
  pid1=$(readlink /proc/1/exe) version=$(systemctl --version | head -n 1) fs=$(stat -fc %T /sys/fs/cgroup)
  [[ $pid1 == */systemd/systemd && $version == "systemd 252 "* && $fs == cgroup2fs ]] ||
    fatal boot "PID 1 is $pid1 ($version), /sys/fs/cgroup is $fs: want systemd 252 on cgroup2"
  result PASS boot "PID 1 is $pid1, $version, unified cgroup v2, system $booted"
}

install_package() {
  show "dpkg -i gale.deb" dpkg -i "$IN/gale.deb"
  [ -x /usr/bin/gale ] || fatal install "dpkg -i $IN/gale.deb did not install /usr/bin/gale"
  local enabled active
  enabled=$(systemctl is-enabled gale.service) active=$(systemctl is-active gale.service)
  check install "package installed: gale.service is $enabled and $active (enabled, not started)" \
    test "$enabled/$active" = enabled/inactive
}

verify_unit() {
  local out rc
  out=$(systemd-analyze verify gale.service 2>&1)
  rc=$?
  show "systemd-analyze verify gale.service (exit $rc)" echo "${out:-(no output)}"
  check verify "systemd-analyze verify gale.service: exit $rc, ${out:-no warnings}" test "$rc/$out" = 0/
}

# ZooKeeper's JVM takes about a minute to start under TCG: started in the background first,
# while the package installs.
start_zookeeper() {
  # shellcheck source=../local-zk.sh
  . "$IN/local-zk.sh"
  local_zk_config /var/tmp/vm
  (local_zk_start /var/tmp/vm 256m && echo "$ZK_PID" > /var/tmp/vm/zk.pid) > /var/tmp/vm/zk-start.log 2>&1 &
  ZK_STARTER=$!
}

wait_zookeeper() {
  wait "$ZK_STARTER" || fatal zookeeper "ZooKeeper did not start in the VM: $(cat /var/tmp/vm/zk-start.log)"
  ZK_PID=$(cat /var/tmp/vm/zk.pid)
  [ "$(cat "/proc/$ZK_PID/comm" 2>/dev/null)" = java ] || fatal zookeeper "pid $ZK_PID from scripts/local-zk.sh is not the JVM"
}

configure() {
  sed -i -e "s|^servers = .*|servers = [\"127.0.0.1:$ZK_PORT\"]|" -e "s|^# id = .*|id = \"$ID\"|" \
    -e 's|^slots = .*|slots = [6700, 6701]|' /etc/gale/gale.toml
  show "gale check-config (the package's conffile, edited)" gale check-config
  gale check-config >/dev/null || fatal configure "gale check-config rejects the edited /etc/gale/gale.toml"
}

# Started while ZooKeeper does not answer: systemd must keep the unit "activating" (no READY=1
# before registration and the first sync), then make it active once ZooKeeper answers. The
# server is already up and held with SIGSTOP (not started late: its minute-long start would eat
# into the time). It is held longer than the start timeout, shortened from systemd's 90 s to
# 10 s by a drop-in for this step only: an agent waiting for ZooKeeper must not be killed and
# restarted by systemd for it (the agent extends the timeout while its loop runs).
start_before_zookeeper() {
  wait_zookeeper
  mkdir -p /etc/systemd/system/gale.service.d
  printf '[Service]\nTimeoutStartSec=10s\n' > /etc/systemd/system/gale.service.d/vm-start-timeout.conf
  systemctl daemon-reload
  kill -STOP "$ZK_PID"
  systemd-analyze log-level debug
  local t0 main seen
  t0=$(date +%s)
  systemctl start --no-block gale.service
  wait_until 60 test "$(prop MainPID)" != 0 || fatal ready "gale.service has no main process 60 s after start"
  main=$(prop MainPID)
  local until=$((SECONDS + 25))
  while [ "$SECONDS" -lt "$until" ]; do seen+="$(state) "; sleep 0.5; done
  seen=$(printf '%s\n' $seen | sort -u | paste -sd, -)
  show "while ZooKeeper is stopped: states seen $seen; StatusText" prop StatusText
  check start-timeout "ZooKeeper stopped 25 s, TimeoutStartSec=10s: states $seen, main PID $main -> $(prop MainPID), NRestarts=$(prop NRestarts), EXTEND_TIMEOUT_USEC from main PID logged by PID 1" \
    start_extended "$t0" "$main" "$seen"
  kill -CONT "$ZK_PID"
  wait_until 80 is_state active/running || fatal ready "gale.service is $(state) 80 s after ZooKeeper resumed"
  rm -r /etc/systemd/system/gale.service.d
  systemctl daemon-reload
  local waited=$(( ($(prop ActiveEnterTimestampMonotonic) - $(prop ExecMainStartTimestampMonotonic)) / 1000000 ))
  show_unit_journal "PID 1 on gale.service's start" "$t0"
  check ready "active ${waited} s after exec, on READY=1 from main PID $(prop MainPID) after it registered in ZooKeeper" \
    in_order "$t0" "registered in zookeeper" "Got notification message from PID $(prop MainPID) \(READY=1" "Changed start -> running"
  check status-text "StatusText=\"$(prop StatusText)\"" test "$(prop StatusText)" = "running: 0/2 slots used, zk connected"
  MAIN_SINCE=$t0
}

start_extended() { # SINCE MAIN STATES_SEEN: never killed for the start timeout
  [ "$3/$(prop MainPID)/$(prop NRestarts)" = "activating/start/$2/0" ] && notified "$1" "$2" "EXTEND_TIMEOUT_USEC="
}

# Two long-running workers with limits; each prints the cgroup it was born in to its log.
launch_workers() {
  cat > /var/tmp/vm/assignment.json <<JSON
{ "schema": 1, "topology_id": "$TOPOLOGY",
  "launch": { "command": ["/bin/sh", "-c", "cat /proc/self/cgroup; exec sleep 100000"],
              "liveness": "process", "memory_mb": 64, "cpu_percent": 50 },
  "workers": [ {"supervisor_id": "$ID", "port": 6700}, {"supervisor_id": "$ID", "port": 6701} ] }
JSON
  show "gale topology submit" gale topology submit /var/tmp/vm/assignment.json
  wait_until 90 two_running || fatal workers "2 workers not running 90 s after the assignment: $(running_workers | paste -sd' ')"
  WORKERS=$(running_workers | sort)
  result PASS workers "2 workers running: $(echo "$WORKERS" | paste -sd' ')"
}

# Where the workers live: /gale-<id>/<worker id> at the cgroup root, outside system.slice, with
# their limits; the unit's own cgroup holds only the agent.
cgroups_ok() {
  local line pid wid cg dir problems=""
  for line in $WORKERS; do
    pid=$(echo "$line" | cut -d: -f2) wid=$(echo "$line" | cut -d: -f3)
    cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup") dir=/sys/fs/cgroup$cg
    [ "$cg" = "/gale-$ID/$wid" ] || problems+="worker $pid in $cg, want /gale-$ID/$wid; "
    [ "$(cat "$dir/memory.max" 2>/dev/null)" = 67108864 ] || problems+="$dir/memory.max is not 64 MiB; "
    [ "$(cat "$dir/cpu.max" 2>/dev/null)" = "50000 100000" ] || problems+="$dir/cpu.max is not 50%; "
  done
  local unit_cg
  unit_cg=$(prop ControlGroup)
  [ "$(cat "/sys/fs/cgroup$unit_cg/cgroup.procs")" = "$(prop MainPID)" ] ||
    problems+="$unit_cg holds $(cat "/sys/fs/cgroup$unit_cg/cgroup.procs" | paste -sd,), want only the agent; "
  CGROUP_PROBLEMS=$problems
  [ -z "$problems" ]
}

show_cgroups() { # TITLE
  local line pid
  echo "---- $1"
  show "systemd-cgls" systemd-cgls --no-pager
  show "gale.service: ControlGroup, agent's /proc/<pid>/cgroup" \
    sh -c "systemctl show -p ControlGroup --value gale.service; cat /proc/$(prop MainPID)/cgroup"
  for line in $WORKERS; do
    pid=$(echo "$line" | cut -d: -f2)
    show "worker $line: /proc/$pid/cgroup, memory.max, cpu.max" \
      sh -c "cat /proc/$pid/cgroup; d=/sys/fs/cgroup\$(sed -n 's/^0:://p' /proc/$pid/cgroup); cat \$d/memory.max \$d/cpu.max"
  done
}

check_cgroups() { # NAME WHEN
  show_cgroups "cgroups $2"
  if cgroups_ok; then
    result PASS "$1" "$2: workers in /gale-$ID/<worker id> (not system.slice) with memory.max 64M and cpu.max 50%, only the agent in $(prop ControlGroup)"
  else
    result FAIL "$1" "$2: $CGROUP_PROBLEMS"
  fi
}

show_birth_cgroups() {
  local logs
  logs=$(cat /var/log/gale/workers/$TOPOLOGY/670[01]/worker.log 2>/dev/null | grep '^0::' | sort -u | paste -sd' ')
  show "what each worker's first act read in /proc/self/cgroup" echo "$logs"
}

watchdog_ok() { # FIRST: the timestamp moved past FIRST, and PID 1 logged the ping
  [ "$(prop WatchdogUSec)" = 30s ] && [ "$(prop WatchdogTimestampMonotonic)" -gt "$1" ] &&
    notified "$MAIN_SINCE" "$(prop MainPID)" WATCHDOG=1
}

# WatchdogSec=30: the agent pings every 15 s; systemd records each ping's time.
check_watchdog() {
  local first
  wait_until 40 test "$(prop WatchdogTimestampMonotonic)" -gt 0
  first=$(prop WatchdogTimestampMonotonic)
  wait_until 40 watchdog_ok "$first"
  check watchdog "WatchdogUSec=$(prop WatchdogUSec), WatchdogTimestampMonotonic $first -> $(prop WatchdogTimestampMonotonic), WATCHDOG=1 from main PID logged by PID 1" \
    watchdog_ok "$first"
}

# in_order SINCE PATTERN...: PID 1's lines about gale.service since SINCE match the patterns
# (extended regexps) in this order.
in_order() {
  local since=$1
  shift
  unit_journal "$since" | awk -v pats="$(printf '%s\n' "$@")" '
    BEGIN { n = split(pats, p, "\n"); i = 1 }
    i <= n && $0 ~ p[i] { i++ }
    END { exit !(i > n) }'
}

# `systemctl reload`: systemd runs ExecReload (SIGHUP) and hears RELOADING=1, then READY=1.
reload_by_systemctl() {
  local t0 main
  t0=$(date +%s) main=$(prop MainPID)
  systemctl reload gale.service || result FAIL reload "systemctl reload gale exited $?"
  wait_until 30 in_order "$t0" "Reloading gale.service" "Got notification message from PID $main \(RELOADING=1" \
    "Got notification message from PID $main \(READY=1"
  wait_until 30 is_state active/running
  show_unit_journal "PID 1 on gale.service's reload" "$t0"
  check reload "journal: Reloading..., RELOADING=1 then READY=1 from PID $main, Reloaded; now $(state), same main PID, same workers" \
    reloaded_by_systemctl "$t0" "$main"
}

reloaded_by_systemctl() { # SINCE MAIN
  in_order "$1" "Reloading gale.service" "RELOADING=1" "READY=1" &&
    journal_has "$1" "Reloaded gale.service" && is_state active/running &&
    [ "$(prop MainPID)" = "$2" ] && same_workers "$WORKERS"
}

# A reload the agent starts itself (its config file watch): no job, only RELOADING=1 and READY=1,
# and systemd moves the unit to "reload" and back on those alone.
reload_by_notify() {
  local t0 main
  t0=$(date +%s) main=$(prop MainPID)
  sed -i 's|^heartbeat_refresh_secs = .*|heartbeat_refresh_secs = 61|' /etc/gale/gale.toml
  wait_until 30 in_order "$t0" "the config file changed: reloading" "PID $main \(RELOADING=1" "Changed running -> reload" \
    "PID $main \(READY=1" "Changed reload -> running"
  show_unit_journal "PID 1 after the config file changed" "$t0"
  check reload-notify "config file edited: RELOADING=1 -> state reload -> READY=1 -> running, seen by PID 1 with no reload job" \
    in_order "$t0" "the config file changed: reloading" "PID $main \(RELOADING=1" "Changed running -> reload" \
    "PID $main \(READY=1" "Changed reload -> running"
}

# states_during SECONDS CMD...: runs CMD in the background and samples the unit's state while
# it runs (at most SECONDS); prints the distinct states in the order first seen.
states_during() {
  local limit=$1 seen="" s
  shift
  "$@" &
  local job=$! deadline=$((SECONDS + limit))
  while kill -0 "$job" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    s=$(state)
    [[ " $seen " == *" $s "* ]] || seen+="$s "
  done
  wait "$job"
  echo "${seen% }"
}

# Workers are adopted by the next agent: the same pids, running, in the same cgroups with their
# limits; no EBUSY since SINCE. Sets ADOPT_PROBLEM to what is wrong.
adopted() { # SINCE
  ADOPT_PROBLEM=""
  if ! wait_until 60 same_workers "$WORKERS"; then
    ADOPT_PROBLEM="running workers: $(running_workers | paste -sd' ' -), want $(echo $WORKERS)"
  elif ! all_alive "$WORKERS"; then
    ADOPT_PROBLEM="a worker died"
  elif ! cgroups_ok; then
    ADOPT_PROBLEM=$CGROUP_PROBLEMS
  elif ! no_ebusy "$1"; then
    ADOPT_PROBLEM="EBUSY: $(unit_journal "$1" | grep -Ei 'EBUSY|resource busy' | head -n 3)"
  fi
  [ -z "$ADOPT_PROBLEM" ]
}

check_adopted() { # NAME AFTER SINCE
  if adopted "$3"; then
    result PASS "$1" "after $2: the same 2 worker pids adopted by $(prop MainPID), in their cgroups with their limits, no EBUSY"
  else
    result FAIL "$1" "after $2: $ADOPT_PROBLEM"
  fi
}

no_ebusy() { ! unit_journal "$1" | grep -Eqi 'EBUSY|resource busy'; } # SINCE

restart_unit() {
  local t0 old seen
  t0=$(date +%s) old=$(prop MainPID)
  seen=$(states_during 90 systemctl restart gale.service)
  show_unit_journal "PID 1 on gale.service's restart (states seen: $seen)" "$t0"
  local new
  new=$(prop MainPID)
  check restart-states "restart: states $seen; stop-sigterm, STOPPING=1 from old PID $old, then READY=1 from new PID $new" \
    in_order "$t0" "Changed running -> stop-sigterm" "Got notification message from PID $old \(STOPPING=1" \
    "Got notification message from PID $new \(READY=1" "Changed start -> running"
  check_adopted restart-adopt "systemctl restart (agent $old -> $new)" "$t0"
}

stop_then_start() {
  local t0 old seen
  t0=$(date +%s) old=$(prop MainPID)
  seen=$(states_during 60 systemctl stop gale.service)
  show_unit_journal "PID 1 on gale.service's stop (states seen: $seen)" "$t0"
  show "gale status with the agent stopped" gale status
  check stop "stop: states $seen; stop-sigterm, STOPPING=1 from $old, dead; Result=$(prop Result), exit $(prop ExecMainStatus); workers alive: $(all_alive "$WORKERS" && echo yes || echo NO)" \
    stopped_cleanly "$t0" "$old"
  t0=$(date +%s)
  systemctl start gale.service || result FAIL start "systemctl start gale exited $?"
  check_adopted start-adopt "systemctl stop + start" "$t0"
}

stopped_cleanly() { # SINCE OLD_MAIN
  in_order "$1" "Changed running -> stop-sigterm" "Got notification message from PID $2 \(STOPPING=1" "-> dead" &&
    is_state inactive/dead && [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] &&
    all_alive "$WORKERS"
}

main() {
  boot
  start_zookeeper
  install_package
  verify_unit
  configure
  start_before_zookeeper
  launch_workers
  show_birth_cgroups
  check_cgroups cgroups "first start"
  check_watchdog
  reload_by_systemctl
  reload_by_notify
  restart_unit
  stop_then_start
  show_cgroups "cgroups at the end"
  check no-ebusy "no EBUSY in gale.service's journal of this boot" no_ebusy 0
  finish
}

main
