#!/usr/bin/env bash
# run.sh — the whole benchmark harness in one command, on a 2-core machine
# about four minutes and not much more than BUDGET seconds (270; a step stopped
# at the deadline still stops its servers, which takes up to ~25 s):
#
#   1. bench/heartbeat.sh   meshd vs MCP Mesh 3.7.1 heartbeats/s, meshd vs a
#                           bare Go TLS server with a new connection per
#                           request, and (PROFILE=1, the default here) CPU
#                           profiles of meshd under both loads
#   2. revlat               revocation-to-refusal latency over 100 agents:
#                           admin API and offline (store + poll) paths
#   3. agentmem             memory per registered agent at 100,000 agents
#                           through registry.Heartbeat (and at 25,000
#                           through meshd's HTTP path, TLS off)
#   4. go test -bench       an unchanged heartbeat's cost as the providers of
#                           its dependency grow (1, 100, 10,000)
#   5. pushlat              revocation push: revoke returning to every one of
#                           PUSH_SUBS (1000) /revocations/watch subscribers
#                           holding the serial, and one event's size (~2 s)
#
# Every figure is printed with the baseline it was measured against in the
# same run. Results go to $OUT (default: a new temp dir), summary.txt last.
#
# Env: OUT, BUDGET (270), PROFILE (1), and heartbeat.sh's C, ROUNDS, DUR,
#      ...; AGENTS (100000) and AGENTS_HTTP (25000) for agentmem's registry
#      and HTTP paths, REV_AGENTS (100) for revlat, PUSH_SUBS (1000) for
#      pushlat.
# A step that would overrun the budget is stopped (SIGTERM: servers are
# still stopped by PID) and the steps after it are skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-bench.XXXXXX")}
mkdir -p "$OUT"
export PROFILE=${PROFILE:-1}
AGENTS=${AGENTS:-100000}
AGENTS_HTTP=${AGENTS_HTTP:-25000}
REV_AGENTS=${REV_AGENTS:-100}
PUSH_SUBS=${PUSH_SUBS:-1000}
BUDGET=${BUDGET:-270}
START=$SECONDS

log() { printf 'run.sh: %s\n' "$*" >&2; }

# step NAME MAX-SECONDS CMD...: runs CMD under timeout, for at most
# MAX-SECONDS and at most what is left of the budget.
step() {
	local name=$1 max=$2 left
	shift 2
	left=$((BUDGET - (SECONDS - START)))
	((left < max)) && max=$left
	if ((max < 10)); then
		log "skipping $name: the ${BUDGET}s budget is spent"
		echo "$name: skipped (budget spent)" >>"$OUT/skipped.txt"
		return 0
	fi
	timeout --signal=TERM "${max}s" "$@" || {
		log "$name failed or ran out of time (exit $?)"
		echo "$name: failed or out of time" >>"$OUT/skipped.txt"
	}
}

{
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), shared (load average at start: $(cut -d' ' -f1-3 /proc/loadavg))"
	echo "$(go version), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) plus working tree"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

log "building revlat, agentmem and pushlat"
go build -o "$OUT/bin/" ./bench/cmd/revlat ./bench/cmd/agentmem ./bench/cmd/pushlat

log "1/5 heartbeat throughput (bench/heartbeat.sh)"
OUT=$OUT/heartbeat step heartbeat 190 bash bench/heartbeat.sh

log "2/5 revocation-to-refusal latency ($REV_AGENTS agents per path)"
step revlat 60 sh -c 'exec "$1" -agents "$2" >"$3/revlat.txt" 2>"$3/revlat.log"' _ "$OUT/bin/revlat" "$REV_AGENTS" "$OUT"
cat "$OUT/revlat.txt" 2>/dev/null || true

log "3/5 memory per agent at $AGENTS agents (registry) and $AGENTS_HTTP (HTTP)"
step agentmem-registry 45 sh -c 'exec "$1" -agents "$2" >"$3/agentmem-registry.txt" 2>"$3/agentmem-registry.log"' _ "$OUT/bin/agentmem" "$AGENTS" "$OUT"
cat "$OUT/agentmem-registry.txt" 2>/dev/null || true
step agentmem-http 40 sh -c 'exec "$1" -agents "$2" -path http -workers 32 >"$3/agentmem-http.txt" 2>"$3/agentmem-http.log"' _ "$OUT/bin/agentmem" "$AGENTS_HTTP" "$OUT"
cat "$OUT/agentmem-http.txt" 2>/dev/null || true

log "4/5 unchanged heartbeat vs providers of its dependency"
step resolve 30 sh -c 'go test -run "^\$" -bench BenchmarkUnchangedHeartbeatProviders -benchtime 1000x ./bench/ >"$1/resolve.raw" 2>&1' _ "$OUT"
awk '/^BenchmarkUnchangedHeartbeatProviders\// {
		split($1, a, "="); sub(/-[0-9]+$/, "", a[2]); ns[a[2]] = $3; order[++n] = a[2]
	}
	END {
		if (!n) { print "resolve: no benchmark output (see resolve.raw)"; exit }
		print "unchanged heartbeat (registry.Heartbeat) vs providers of its one dependency:"
		for (i = 1; i <= n; i++) printf "  providers=%-6s %10.0f ns/op  ratio to providers=1: %.0fx\n", order[i], ns[order[i]], ns[order[i]] / ns[order[1]]
	}' "$OUT/resolve.raw" >"$OUT/resolve.txt" 2>/dev/null || true
cat "$OUT/resolve.txt"

log "5/5 revocation push to $PUSH_SUBS subscribers"
step pushlat 30 sh -c 'exec "$1" -subs "$2" >"$3/pushlat.txt" 2>"$3/pushlat.log"' _ "$OUT/bin/pushlat" "$PUSH_SUBS" "$OUT"
cat "$OUT/pushlat.txt" 2>/dev/null || true

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); took $((SECONDS - START))s" >>"$OUT/machine.txt"
cat "$OUT/machine.txt" "$OUT/heartbeat/summary.txt" "$OUT/revlat.txt" "$OUT/agentmem-registry.txt" "$OUT/agentmem-http.txt" "$OUT/resolve.txt" "$OUT/pushlat.txt" "$OUT/skipped.txt" >"$OUT/summary.txt" 2>/dev/null || true
rm -rf "$OUT/bin"
log "done; summary in $OUT/summary.txt"
