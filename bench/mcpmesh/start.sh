#!/usr/bin/env bash
# start.sh — run the MCP Mesh registry v3.7.1 as a benchmark/compat peer,
# bound to 127.0.0.1 only, with TLS on by default.
#
# Usage: bench/mcpmesh/start.sh [PORT]
#
# Environment (all optional unless noted):
#   MCPMESH_PORT          listen port (default 18700; the PORT argument wins)
#   MCPMESH_STATE_DIR     pid/log/db/HOME dir (default ${TMPDIR:-/tmp}/meshtrust-mcpmesh-<port>)
#   MCPMESH_BIN           registry binary (default: whatever scripts/mcpmesh.sh fetch prints)
#   MCP_MESH_TLS_MODE     off | auto | strict (default strict)
#   MCP_MESH_TLS_CERT     server cert PEM  (required unless mode=off)
#   MCP_MESH_TLS_KEY      server key PEM   (required unless mode=off)
#   MCP_MESH_TLS_CA       CA used by the readiness probe to verify the server
#   MCP_MESH_TRUST_BACKEND  trust backends, comma separated (default filestore)
#   MCP_MESH_TRUST_DIR    dir of trusted entity CA PEMs (*.pem and entities/*.pem);
#                         required for filestore/localca
#   MCPMESH_CLIENT_CERT / MCPMESH_CLIENT_KEY
#                         client cert for the readiness probe. In strict mode
#                         the registry answers /health with 403 to certless
#                         callers; without a client cert a 403 counts as "up".
#   DATABASE_URL          default: SQLite file in the state dir (fresh each start)
#   MCPMESH_KEEP_DB=1     keep an existing SQLite file instead of deleting it
#   MCPMESH_WAIT_SECS     readiness timeout (default 20)
#   Passed through untouched: DEFAULT_TIMEOUT_THRESHOLD, HEALTH_CHECK_INTERVAL,
#   MCP_MESH_RETENTION, MCP_MESH_SWEEP_INTERVAL, MCP_MESH_LOG_LEVEL, ...
#   MCP_MESH_ADMIN_PORT is refused: upstream binds the admin listener to
#   ":<port>" (all interfaces, plaintext, unauthenticated).
#
# stdout: "pid=<pid> url=<url> state=<dir>" once /health answers.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${MCPMESH_PORT:-18700}}"
HOST="127.0.0.1" # never anything else: this is a local benchmark peer
STATE="${MCPMESH_STATE_DIR:-${TMPDIR:-/tmp}/meshtrust-mcpmesh-${PORT}}"
WAIT="${MCPMESH_WAIT_SECS:-20}"
MODE="${MCP_MESH_TLS_MODE:-strict}"
BACKEND="${MCP_MESH_TRUST_BACKEND:-filestore}"

die() { printf 'start.sh: error: %s\n' "$*" >&2; exit 1; }

[[ "$PORT" =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) || die "bad port '$PORT'"
case "$MODE" in off | auto | strict) ;; *) die "MCP_MESH_TLS_MODE must be off|auto|strict" ;; esac

[[ -z "${MCP_MESH_ADMIN_PORT:-}" ]] ||
  die "MCP_MESH_ADMIN_PORT is not supported here (upstream binds it on all interfaces); unset it"

BIN="${MCPMESH_BIN:-}"
[[ -n "$BIN" ]] || BIN="$("$HERE/../../scripts/mcpmesh.sh" fetch)"
[[ -x "$BIN" ]] || die "registry binary not executable: $BIN"

mkdir -p "$STATE/home"
chmod 0700 "$STATE"
PIDFILE="$STATE/registry.pid"
LOG="$STATE/registry.log"

if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  die "already running (pid $(cat "$PIDFILE")); run stop.sh first"
fi
if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
  die "$HOST:$PORT is already in use"
fi

ENVV=(HOST="$HOST" PORT="$PORT" HOME="$STATE/home" MCP_MESH_TLS_MODE="$MODE")
if [[ "$MODE" != off ]]; then
  [[ -r "${MCP_MESH_TLS_CERT:-}" && -r "${MCP_MESH_TLS_KEY:-}" ]] ||
    die "TLS mode $MODE needs readable MCP_MESH_TLS_CERT and MCP_MESH_TLS_KEY"
  ENVV+=(MCP_MESH_TLS_CERT="$MCP_MESH_TLS_CERT" MCP_MESH_TLS_KEY="$MCP_MESH_TLS_KEY")
  ENVV+=(MCP_MESH_TRUST_BACKEND="$BACKEND")
  if [[ ",$BACKEND," == *",filestore,"* || ",$BACKEND," == *",localca,"* ]]; then
    [[ -d "${MCP_MESH_TRUST_DIR:-}" ]] || die "backend $BACKEND needs MCP_MESH_TRUST_DIR (a directory)"
    ENVV+=(MCP_MESH_TRUST_DIR="$MCP_MESH_TRUST_DIR")
  fi
fi

if [[ -z "${DATABASE_URL:-}" ]]; then
  DB="$STATE/registry.db"
  [[ "${MCPMESH_KEEP_DB:-0}" == 1 ]] || rm -f "$DB" "$DB-wal" "$DB-shm"
  ENVV+=(DATABASE_URL="$DB")
fi

# The registry binary itself is the background process, so $! is its PID.
env "${ENVV[@]}" nohup "$BIN" --host "$HOST" --port "$PORT" >"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"

SCHEME=https
[[ "$MODE" == off ]] && SCHEME=http
URL="$SCHEME://$HOST:$PORT"
CURL=(curl -sS -o /dev/null -w '%{http_code}' --max-time 2)
if [[ "$SCHEME" == https ]]; then
  if [[ -n "${MCP_MESH_TLS_CA:-}" ]]; then CURL+=(--cacert "$MCP_MESH_TLS_CA"); else CURL+=(-k); fi
  if [[ -n "${MCPMESH_CLIENT_CERT:-}" ]]; then
    CURL+=(--cert "$MCPMESH_CLIENT_CERT" --key "${MCPMESH_CLIENT_KEY:?MCPMESH_CLIENT_KEY needed with MCPMESH_CLIENT_CERT}")
  fi
fi

deadline=$((SECONDS + WAIT))
while :; do
  if ! kill -0 "$PID" 2>/dev/null; then
    rm -f "$PIDFILE"
    tail -n 20 "$LOG" >&2 || true
    die "registry exited during startup (log: $LOG)"
  fi
  code="$("${CURL[@]}" "$URL/health" 2>/dev/null || true)"
  if [[ "$code" == 200 ]] || [[ "$code" == 403 && "$MODE" == strict && -z "${MCPMESH_CLIENT_CERT:-}" ]]; then
    break
  fi
  if ((SECONDS >= deadline)); then
    kill "$PID" 2>/dev/null || true
    rm -f "$PIDFILE"
    tail -n 20 "$LOG" >&2 || true
    die "no healthy answer from $URL/health within ${WAIT}s (last code: ${code:-none})"
  fi
  sleep 0.2
done
printf 'pid=%s url=%s state=%s\n' "$PID" "$URL" "$STATE"
