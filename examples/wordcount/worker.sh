#!/bin/sh
# A toy wordcount worker for gale (SPEC §4 worker contract), POSIX sh (Debian's dash).
#
# Shipped as blob `wordcount-code` (a tar.gz of this directory, unpacked by the agent) and run
# by examples/wordcount.json as: /bin/sh {blob:code}/worker.sh --port {port}. The demo publishes
# the blob (`gale blob put`) before `gale topology submit examples/wordcount.json --auto-place 2`;
# publishing a changed copy restarts the workers on it (`restart_on_update`).
#
# It logs its start, then every second pretends to count some words and touches
# $GALE_HEARTBEAT_FILE (liveness "heartbeat": a stale file means hung). SIGTERM (gale's stop)
# ends it with exit 0.

set -u

log() {
    echo "wordcount[$$]: $*"
}

port="${GALE_PORT:-unknown}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port)
            # `shift 2` past the end would abort dash, so check first.
            [ $# -ge 2 ] || { log "--port needs a value"; exit 2; }
            port="$2"
            shift 2
            ;;
        *) shift ;;
    esac
done

stopping=0
# The trap only sets a flag: `wait` below returns as soon as a signal arrives, and the loop
# checks the flag, so a stop never waits for a whole sleep.
trap 'stopping=1' TERM INT

log "starting topology=${GALE_TOPOLOGY_ID:-?} worker_id=${GALE_WORKER_ID:-?} port=$port pid=$$"

words=0
beat=0
while [ "$stopping" -eq 0 ]; do
    beat=$((beat + 1))
    # Deterministic but uneven, so the log looks like work.
    words=$((words + (beat * 7) % 13 + 1))
    if [ -n "${GALE_HEARTBEAT_FILE:-}" ]; then
        touch "$GALE_HEARTBEAT_FILE"
    fi
    log "counted $words words"
    sleep 1 &
    sleeper=$!
    wait "$sleeper" 2>/dev/null
done
# Woken by a signal mid-sleep: do not leave the sleep behind when stopped by pid alone.
kill "$sleeper" 2>/dev/null

log "stopping after counting $words words"
exit 0
