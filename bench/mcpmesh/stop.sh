#!/usr/bin/env bash
# stop.sh — stop a registry started by start.sh, by the PID it recorded.
#
# Usage: bench/mcpmesh/stop.sh [PORT]
#   Uses MCPMESH_STATE_DIR (default ${TMPDIR:-/tmp}/meshtrust-mcpmesh-<port>,
#   port default MCPMESH_PORT or 18700) to find registry.pid.
# Sends SIGTERM, waits up to MCPMESH_STOP_SECS (default 15; the registry's
# own graceful shutdown can take ~5s+), then SIGKILL. Only ever signals the
# recorded PID, and only if that PID is still the mcp-mesh-registry binary.
set -euo pipefail

PORT="${1:-${MCPMESH_PORT:-18700}}"
STATE="${MCPMESH_STATE_DIR:-${TMPDIR:-/tmp}/meshtrust-mcpmesh-${PORT}}"
PIDFILE="$STATE/registry.pid"
WAIT="${MCPMESH_STOP_SECS:-15}"

if [[ ! -f "$PIDFILE" ]]; then
  echo "stop.sh: no pid file at $PIDFILE (not running?)" >&2
  exit 0
fi
PID="$(cat "$PIDFILE")"
[[ "$PID" =~ ^[0-9]+$ ]] || { echo "stop.sh: bad pid file $PIDFILE" >&2; exit 1; }

if ! kill -0 "$PID" 2>/dev/null; then
  echo "stop.sh: pid $PID is not running; removing stale pid file" >&2
  rm -f "$PIDFILE"
  exit 0
fi
# Guard against a recycled PID: it must still be the registry binary.
exe="$(readlink "/proc/$PID/exe" 2>/dev/null || true)"
if [[ "$exe" != *mcp-mesh-registry* ]]; then
  echo "stop.sh: pid $PID is '$exe', not mcp-mesh-registry; not signalling it" >&2
  rm -f "$PIDFILE"
  exit 1
fi

kill -TERM "$PID"
for ((i = 0; i < WAIT * 10; i++)); do
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$PID" 2>/dev/null; then
  echo "stop.sh: pid $PID still alive after ${WAIT}s; sending SIGKILL" >&2
  kill -KILL "$PID" 2>/dev/null || true
fi
rm -f "$PIDFILE"
echo "stopped pid=$PID"
