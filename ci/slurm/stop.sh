#!/usr/bin/env bash
# Stop the single-node SLURM started by ci/slurm/start.sh (slurmd, slurmctld, then munged).
# Idempotent: does nothing for daemons that are not running. Kills only the pids in the pid
# files written by the daemons started by start.sh.
#   ci/slurm/stop.sh [--keep-munge]
set -uo pipefail

RUNDIR=/run/slurm-ci
KEEP_MUNGE=0
[ "${1:-}" = "--keep-munge" ] && KEEP_MUNGE=1

log() { echo "ci/slurm/stop.sh: $*"; }

stop_pidfile() {  # name pidfile
  local name="$1" pidfile="$2" pid
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop_pidfile slurmd "$RUNDIR/slurmd.pid"
stop_pidfile slurmctld "$RUNDIR/slurmctld.pid"
if [ "$KEEP_MUNGE" -eq 0 ]; then
  stop_pidfile munged /run/munge/munged.pid
fi
exit 0
