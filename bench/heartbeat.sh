#!/usr/bin/env bash
# heartbeat.sh — heartbeat throughput of meshd against MCP Mesh 3.7.1, and
# new-connection mTLS throughput of meshd against a bare Go TLS server, on
# this machine, in the same run.
#
# It builds meshd, meshctl, hbload, baretls and meshdprof, creates a
# throwaway mesh CA in a temp dir, issues $C agent certificates
# (weather-agent-N@bench, so meshd admits agent_id weather-agent-N), and
# starts, all on 127.0.0.1:
#   meshd        --tls-mode strict, localca backend
#   MCP Mesh     3.7.1 (bench/mcpmesh/start.sh), TLS strict, a filestore
#                trust dir holding the mesh root, the same server cert
#   baretls      same server cert, RequireAndVerifyClientCert on the root
# Each agent registers once with each registry; then the same hbload runs
# against each, alternating (A then B in odd rounds, B then A in even
# ones), $ROUNDS rounds:
#   POST /heartbeat keep-alive, C=$C  meshd vs mcpmesh   (target >= 10x)
#   HEAD /heartbeat keep-alive, C=$C  meshd vs mcpmesh   (information)
#   POST, fresh timestamp      C=$C  meshd vs mcpmesh   (information: every
#                                    heartbeat then changes the payload)
#   POST /heartbeat keep-alive, C=$C  meshd vs baretls   (target >= 0.9x:
#                                    what meshd adds to HTTP on a warm
#                                    connection)
#   HEAD /heartbeat/{id} keep-alive   meshd vs baretls   (target >= 0.95x)
#   POST /heartbeat new conn,  C=$NC  meshd vs baretls   (target >= 0.8x)
# and prints each figure's median and the median over rounds of the paired
# ratio (summary.txt in $OUT). Every server it starts is stopped by PID on
# exit.
#
# Env: C (32), ROUNDS (3), DUR (10s), VARY_DUR (3s), HEAD_DUR (3s),
#      NEW_DUR (4s), PROF_DUR (5s), BARE_DUR (=HEAD_DUR), NC (=C),
#      ONLY=bare (the two keep-alive pairs against baretls alone: no MCP
#      Mesh, no new-conn runs),
#      OUT (results dir, default a temp dir), PROFILE=1 (also profile meshd
#      in-process under the POST, HEAD and new-conn loads: go tool pprof
#      -top into $OUT/post.top, post.cum, head.top, head.cum, newconn.top,
#      newconn.cum).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
C=${C:-32}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10s}
VARY_DUR=${VARY_DUR:-3s}
PROF_DUR=${PROF_DUR:-5s}
HEAD_DUR=${HEAD_DUR:-3s}
NEW_DUR=${NEW_DUR:-4s}
NC=${NC:-$C}
BARE_DUR=${BARE_DUR:-$HEAD_DUR}
PROFILE=${PROFILE:-0}
ONLY=${ONLY:-}
[[ -z "$ONLY" || "$ONLY" == bare ]] || { echo "heartbeat.sh: ONLY=$ONLY: want bare or nothing" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-hb.XXXXXX")
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-hb-out.XXXXXX")}
mkdir -p "$OUT"
BIN=$WORK/bin
PAYLOAD=$ROOT/bench/mcpmesh/heartbeat.json

log() { printf 'heartbeat.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

MESHD_PID= BARE_PID= PROF_PID= MCPMESH_STATE= MCPMESH_PORT=
cleanup() {
	local pid
	for pid in "$MESHD_PID" "$BARE_PID" "$PROF_PID"; do
		[[ -n "$pid" ]] || continue
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "$MESHD_PID" "$BARE_PID" "$PROF_PID"; do
		[[ -n "$pid" ]] || continue
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	done
	if [[ -n "$MCPMESH_STATE" ]]; then
		MCPMESH_STATE_DIR=$MCPMESH_STATE bench/mcpmesh/stop.sh "$MCPMESH_PORT" >&2 || true
	fi
	if [[ -f "$MCPMESH_STATE/registry.log" ]]; then
		tail -n 200 "$MCPMESH_STATE/registry.log" >"$OUT/mcpmesh-tail.log" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# free_port and wait_port.
source scripts/lib.sh

log "building meshd, meshctl, hbload, baretls, meshdprof"
go build -o "$BIN/" ./cmd/meshd ./cmd/meshctl ./bench/cmd/hbload ./bench/cmd/baretls ./bench/cmd/meshdprof

log "creating a throwaway mesh CA and $C agent certificates in $WORK"
MESHCTL=("$BIN/meshctl" --root-dir "$WORK/root" --ca-dir "$WORK/ca")
"${MESHCTL[@]}" ca init >/dev/null
"${MESHCTL[@]}" ca issue-intermediate >/dev/null
"${MESHCTL[@]}" ca issue-node meshd localhost IP:127.0.0.1 >/dev/null
mkdir -p "$WORK/agents"
for i in $(seq "$C"); do
	"${MESHCTL[@]}" ca issue-agent "weather-agent-$i" bench >/dev/null
	ln -s "$WORK/ca/issued/weather-agent-$i@bench.crt" "$WORK/agents/weather-agent-$i.crt"
	ln -s "$WORK/ca/issued/weather-agent-$i@bench.key" "$WORK/agents/weather-agent-$i.key"
done
ROOTCA=$WORK/root/ca.crt
SRVCERT=$WORK/ca/issued/meshd.crt
SRVKEY=$WORK/ca/issued/meshd.key

MESHD_PORT=$(free_port)
log "starting meshd on 127.0.0.1:$MESHD_PORT"
mkdir -p "$WORK/meshd"
"$BIN/meshd" --data-dir "$WORK/meshd" --root-dir "$WORK/root" --ca-dir "$WORK/ca" \
	--listen "127.0.0.1:$MESHD_PORT" --tls-mode strict --tls-cert "$SRVCERT" --tls-key "$SRVKEY" \
	--trust-backend localca >"$OUT/meshd.log" 2>&1 </dev/null &
MESHD_PID=$!
wait_port "$MESHD_PORT" "$MESHD_PID" || { tail -20 "$OUT/meshd.log" >&2; die "meshd did not start"; }

if [[ "$ONLY" != bare ]]; then
MCPMESH_PORT=$(free_port)
log "starting MCP Mesh 3.7.1 on 127.0.0.1:$MCPMESH_PORT"
mkdir -p "$WORK/mm-trust"
# The filestore backend trusts every *.pem in the dir; the agents present
# leaf + intermediate (+ root), which is what it needs for a chained leaf.
cp "$ROOTCA" "$WORK/mm-trust/meshtrust.pem"
MCPMESH_STATE=$WORK/mcpmesh
MCPMESH_STATE_DIR=$MCPMESH_STATE MCP_MESH_TLS_MODE=strict \
	MCP_MESH_TLS_CERT=$SRVCERT MCP_MESH_TLS_KEY=$SRVKEY MCP_MESH_TLS_CA=$ROOTCA \
	MCP_MESH_TRUST_BACKEND=filestore MCP_MESH_TRUST_DIR=$WORK/mm-trust \
	MCPMESH_CLIENT_CERT=$WORK/agents/weather-agent-1.crt MCPMESH_CLIENT_KEY=$WORK/agents/weather-agent-1.key \
	bench/mcpmesh/start.sh "$MCPMESH_PORT" >&2
fi

BARE_PORT=$(free_port)
log "starting baretls on 127.0.0.1:$BARE_PORT"
"$BIN/baretls" -listen "127.0.0.1:$BARE_PORT" -cert "$SRVCERT" -key "$SRVKEY" -client-ca "$ROOTCA" \
	>"$OUT/baretls.log" 2>&1 </dev/null &
BARE_PID=$!
wait_port "$BARE_PORT" "$BARE_PID" || die "baretls did not start"

declare -A URL=(
	[meshd]=https://127.0.0.1:$MESHD_PORT
	[mcpmesh]=https://127.0.0.1:$MCPMESH_PORT
	[baretls]=https://127.0.0.1:$BARE_PORT
)
HB=("$BIN/hbload" -ca "$ROOTCA" -certs "$WORK/agents" -payload "$PAYLOAD" -json)

# Register every agent once with each registry; a refusal here (MCP Mesh
# not admitting the mesh CA's chain, say) stops the run.
TARGETS=(meshd mcpmesh)
[[ "$ONLY" != bare ]] || TARGETS=(meshd)
for t in "${TARGETS[@]}"; do
	"${HB[@]}" -label "$t" -url "${URL[$t]}" -c "$C" -n 1 >"$OUT/register-$t.json" ||
		die "registering $C agents with $t failed: $(cat "$OUT/register-$t.json")"
	log "registered $C agents with $t"
done

# load NAME TARGET ARGS...: one hbload run, its JSON line appended to
# $OUT/NAME.jsonl. Failed requests are reported, not fatal.
load() {
	local name=$1 t=$2
	shift 2
	local line
	line=$("${HB[@]}" -label "$t" -url "${URL[$t]}" "$@" || true)
	[[ -n "$line" ]] || die "hbload against $t printed nothing"
	printf '%s\n' "$line" >>"$OUT/$name.jsonl"
	log "$name $t: $(printf '%s' "$line" | field rps) req/s p50 $(printf '%s' "$line" | field p50_ms) ms p99 $(printf '%s' "$line" | field p99_ms) ms errors $(printf '%s' "$line" | field errors)"
}

# field KEY: a number from a JSON line on stdin.
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }

# median NAME TARGET KEY: the median of KEY over NAME's runs against TARGET.
median() {
	grep "\"label\":\"$2\"" "$OUT/$1.jsonl" | field "$3" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) { print 0; exit } if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

errors_of() { grep "\"label\":\"$2\"" "$OUT/$1.jsonl" | field errors | awk '{ s += $1 } END { print s + 0 }'; }

# pair NAME A B ARGS...: one run against each, A first in odd rounds and B
# first in even ones, so neither always gets the machine as the other
# left it.
pair() {
	local name=$1 a=$2 b=$3
	shift 3
	if ((r % 2)); then
		load "$name" "$a" "$@"
		load "$name" "$b" "$@"
	else
		load "$name" "$b" "$@"
		load "$name" "$a" "$@"
	fi
}

for r in $(seq "$ROUNDS"); do
	log "round $r/$ROUNDS"
	if [[ "$ONLY" != bare ]]; then
		pair post meshd mcpmesh -c "$C" -d "$DUR"
		# HEAD right after the unchanged POSTs: every agent has POSTed
		# since the last change, so HEAD answers 200 where nothing
		# changed. (After the vary runs meshd answers 202: it counts any
		# payload change as a topology change.)
		pair head meshd mcpmesh -c "$C" -d "$HEAD_DUR" -method head
		pair vary meshd mcpmesh -c "$C" -d "$VARY_DUR" -vary-timestamp
	fi
	pair bare meshd baretls -c "$C" -d "$BARE_DUR"
	# After the unchanged POSTs of "bare", so meshd answers 200 here too.
	pair barehead meshd baretls -c "$C" -d "$BARE_DUR" -method head
	[[ "$ONLY" == bare ]] || pair newconn meshd baretls -c "$NC" -d "$NEW_DUR" -new-conn
done

# profile NAME HBLOAD-ARGS...: meshd in-process under one hbload run, its
# CPU profile summarised with go tool pprof -top into $OUT.
profile() {
	local name=$1
	shift
	PROF_PORT=$(free_port)
	rm -rf "$WORK/prof" && mkdir -p "$WORK/prof"
	"$BIN/meshdprof" -root-dir "$WORK/root" -ca-dir "$WORK/ca" -data-dir "$WORK/prof" -listen "127.0.0.1:$PROF_PORT" \
		-tls-cert "$SRVCERT" -tls-key "$SRVKEY" -cpuprofile "$OUT/$name.cpu" >"$OUT/meshdprof-$name.log" 2>&1 </dev/null &
	PROF_PID=$!
	wait_port "$PROF_PORT" "$PROF_PID" || die "meshdprof did not start"
	URL[meshdprof]=https://127.0.0.1:$PROF_PORT
	# Registered first, so the profile is of the steady state (and HEAD
	# answers 200).
	"${HB[@]}" -label meshdprof -url "${URL[meshdprof]}" -c "$C" -n 1 >/dev/null ||
		die "registering $C agents with meshdprof failed"
	load "profile-$name" meshdprof "$@"
	kill -TERM "$PROF_PID"
	wait "$PROF_PID" || true
	PROF_PID=
	go tool pprof -top -nodecount=45 "$BIN/meshdprof" "$OUT/$name.cpu" >"$OUT/$name.top" 2>/dev/null || true
	go tool pprof -top -cum -nodecount=60 "$BIN/meshdprof" "$OUT/$name.cpu" >"$OUT/$name.cum" 2>/dev/null || true
	log "profile of meshd under $name: $OUT/$name.top, $OUT/$name.cum"
}

if [[ "$PROFILE" == 1 ]]; then
	profile post -c "$C" -d "$PROF_DUR"
	profile head -c "$C" -d "$PROF_DUR" -method head
	[[ "$ONLY" == bare ]] || profile newconn -c "$NC" -d "$PROF_DUR" -new-conn
fi

# report NAME A B TARGET: medians of A and B, and the median over rounds
# of the paired ratio A/B (round i of A ran right next to round i of B, so
# the pair shares the machine's mood); the verdict is on the paired median.
report() {
	local a b
	a=$(grep "\"label\":\"$2\"" "$OUT/$1.jsonl" | field rps | paste -sd' ')
	b=$(grep "\"label\":\"$3\"" "$OUT/$1.jsonl" | field rps | paste -sd' ')
	awk -v n="$1" -v a="$2" -v b="$3" -v ra="$a" -v rb="$b" -v t="$4" \
		-v pa="$(median "$1" "$2" p99_ms)" -v pb="$(median "$1" "$3" p99_ms)" \
		-v ea="$(errors_of "$1" "$2")" -v eb="$(errors_of "$1" "$3")" '
	function med(arr, k,   i, j, x) {
		for (i = 2; i <= k; i++) { x = arr[i]; for (j = i - 1; j >= 1 && arr[j] > x; j--) arr[j + 1] = arr[j]; arr[j + 1] = x }
		return k % 2 ? arr[(k + 1) / 2] : (arr[k / 2] + arr[k / 2 + 1]) / 2
	}
	BEGIN {
		na = split(ra, xa, " "); nb = split(rb, xb, " ")
		k = na < nb ? na : nb
		for (i = 1; i <= k; i++) { r[i] = xb[i] > 0 ? xa[i] / xb[i] : 0; rounds = rounds sprintf(" %.2f", r[i]) }
		ratio = k ? med(r, k) : 0
		ma = na ? med(xa, na) : 0; mb = nb ? med(xb, nb) : 0
		rom = mb ? ma / mb : 0
		verdict = t == "" ? "" : (ratio >= t ? sprintf(" (target >= %s: met)", t) : sprintf(" (target >= %s: MISSED)", t))
		printf "%-8s %-8s %10.1f req/s (median)  p99 %7.2f ms  errors %d\n", n, a, ma, pa, ea
		printf "%-8s %-8s %10.1f req/s (median)  p99 %7.2f ms  errors %d\n", n, b, mb, pb, eb
		printf "%-8s ratio %s/%s = %.2f, median of paired rounds (rounds:%s; ratio of medians %.2f)%s\n\n", n, a, b, ratio, rounds, rom, verdict
	}'
}

{
	echo "heartbeat benchmark: $(nproc) cores, $ROUNDS rounds, medians; C=$C keep-alive, NC=$NC new-conn"
	echo "$(go version)"
	echo
	if [[ "$ONLY" != bare ]]; then
		report post meshd mcpmesh 10
		report vary meshd mcpmesh ""
		report head meshd mcpmesh ""
	fi
	report bare meshd baretls 0.9
	report barehead meshd baretls 0.95
	[[ "$ONLY" == bare ]] || report newconn meshd baretls 0.8
} | tee "$OUT/summary.txt"
log "results in $OUT"
