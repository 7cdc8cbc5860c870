#!/usr/bin/env bash
# renew.sh — certificate issuance over the wire: meshd against step-ca, on
# this machine, with the same load generator, connections and concurrency,
# in the same run.
#
#   meshd   POST /renew keep-alive mTLS, each request a new certificate for
#           the presented node certificate, signed and durably recorded:
#             same-key  body {}: re-issue for the key the TLS handshake
#                       proved (what step-ca's renew does)
#             csr       body {"csr": ...}: a CSR for the same key
#           POST /agent-cert: a new agent certificate from a CSR
#           POST /enroll with a join token (no client certificate), each
#                       request a new node: meshd in-process (meshdprof)
#                       on a copy of the mesh CA, its enrollment rate
#                       limits lifted (with them, /enroll's throughput is
#                       theirs), $ENROLL_N tokens made before the load
#   step-ca POST /1.0/renew keep-alive mTLS (re-issue of the presented
#           certificate, stored in its badger database)
#
# It builds meshd, meshctl and hbload, installs step-ca into the cache
# (scripts/stepca.sh), creates a throwaway mesh CA with $C node certificates
# and, for step-ca, a P-256 root and intermediate (openssl) with $C leaves,
# starts both servers on 127.0.0.1, and runs each load $ROUNDS times,
# alternating the order, $DUR each. It prints each figure's median and the
# median paired ratio against step-ca (summary.txt in $OUT). Both servers
# are stopped by PID on exit.
#
# With PROFILE=1 it then runs meshd in-process (bench/cmd/meshdprof) under
# each meshd load for PROF_DUR and writes go tool pprof -top -cum of it to
# $OUT/<load>.cum.
#
# Env: C (32), ROUNDS (3), DUR (8s), OUT (results dir, default a temp dir),
#      PROFILE (0), PROF_DUR (5s), ENROLL_N (8000).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
C=${C:-32}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8s}
PROFILE=${PROFILE:-0}
PROF_DUR=${PROF_DUR:-5s}
ENROLL_N=${ENROLL_N:-8000}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-renew.XXXXXX")
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-renew-out.XXXXXX")}
mkdir -p "$OUT"
BIN=$WORK/bin

log() { printf 'renew.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

MESHD_PID= STEP_PID= PROF_PID=
cleanup() {
	local pid
	for pid in "$MESHD_PID" "$STEP_PID" "$PROF_PID"; do
		[[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "$MESHD_PID" "$STEP_PID" "$PROF_PID"; do
		[[ -n "$pid" ]] || continue
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# free_port and wait_port.
source scripts/lib.sh

# json_pem FILE prints FILE's PEM as a JSON string's contents.
json_pem() { awk '{ printf "%s\\n", $0 }' "$1"; }

log "building meshd, meshctl, hbload; installing step-ca"
go build -o "$BIN/" ./cmd/meshd ./cmd/meshctl ./bench/cmd/hbload ./bench/cmd/meshdprof
STEPCA=$(bash scripts/stepca.sh path)

log "creating a throwaway mesh CA and $C node certificates"
MESHCTL=("$BIN/meshctl" --root-dir "$WORK/root" --ca-dir "$WORK/ca")
"${MESHCTL[@]}" ca init >/dev/null
"${MESHCTL[@]}" ca issue-intermediate >/dev/null
"${MESHCTL[@]}" ca issue-node meshd localhost IP:127.0.0.1 >/dev/null
mkdir -p "$WORK/nodes" "$WORK/same-key" "$WORK/csr" "$WORK/agent-cert"
for i in $(seq "$C"); do
	n=node-$i
	"${MESHCTL[@]}" ca issue-node "$n" >/dev/null
	ln -s "$WORK/ca/issued/$n.crt" "$WORK/nodes/$n.crt"
	ln -s "$WORK/ca/issued/$n.key" "$WORK/nodes/$n.key"
	echo '{}' >"$WORK/same-key/$n.body"
	openssl req -new -key "$WORK/ca/issued/$n.key" -subj "/CN=$n.mesh" -out "$WORK/$n.csr" 2>/dev/null
	printf '{"csr":"%s"}' "$(json_pem "$WORK/$n.csr")" >"$WORK/csr/$n.body"
	openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/$n-agent.key" 2>/dev/null
	openssl req -new -key "$WORK/$n-agent.key" -subj "/CN=worker@$n" -out "$WORK/$n-agent.csr" 2>/dev/null
	printf '{"agent_id":"worker","csr":"%s"}' "$(json_pem "$WORK/$n-agent.csr")" >"$WORK/agent-cert/$n.body"
done

# The enrollment server's own copy of the mesh CA and its store, taken
# before meshd opens them.
cp -r "$WORK/ca" "$WORK/ca-enroll"

log "creating step-ca's P-256 root, intermediate and $C leaves"
S=$WORK/step
mkdir -p "$S/leaves" "$S/db"
openssl ecparam -name prime256v1 -genkey -noout -out "$S/root.key" 2>/dev/null
openssl req -x509 -new -key "$S/root.key" -subj "/CN=bench step root" -days 30 -out "$S/root.crt" \
	-addext "basicConstraints=critical,CA:TRUE,pathlen:1" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$S/int.key" 2>/dev/null
openssl req -new -key "$S/int.key" -subj "/CN=bench step intermediate" -out "$S/int.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$S/int.ext"
openssl x509 -req -in "$S/int.csr" -CA "$S/root.crt" -CAkey "$S/root.key" -CAcreateserial -days 30 \
	-extfile "$S/int.ext" -out "$S/int.crt" 2>/dev/null
for i in $(seq "$C"); do
	n=node-$i
	openssl ecparam -name prime256v1 -genkey -noout -out "$S/leaves/$n.key" 2>/dev/null
	openssl req -new -key "$S/leaves/$n.key" -subj "/CN=$n" -out "$S/$n.csr" 2>/dev/null
	printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=DNS:%s\n' "$n" >"$S/$n.ext"
	openssl x509 -req -in "$S/$n.csr" -CA "$S/int.crt" -CAkey "$S/int.key" -CAcreateserial -days 1 \
		-extfile "$S/$n.ext" -out "$S/leaves/$n.pem" 2>/dev/null
	cat "$S/leaves/$n.pem" "$S/int.crt" >"$S/leaves/$n.crt"
done

STEP_PORT=$(free_port)
cat >"$S/ca.json" <<EOF
{
	"root": "$S/root.crt",
	"crt": "$S/int.crt",
	"key": "$S/int.key",
	"address": "127.0.0.1:$STEP_PORT",
	"dnsNames": ["localhost", "127.0.0.1"],
	"logger": {"format": "text"},
	"db": {"type": "badgerv2", "dataSource": "$S/db"},
	"authority": {"provisioners": [{"type": "ACME", "name": "acme"}]},
	"tls": {"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false}
}
EOF

MESHD_PORT=$(free_port)
log "starting meshd on 127.0.0.1:$MESHD_PORT and step-ca on 127.0.0.1:$STEP_PORT"
mkdir -p "$WORK/meshd"
"$BIN/meshd" --data-dir "$WORK/meshd" --root-dir "$WORK/root" --ca-dir "$WORK/ca" \
	--listen "127.0.0.1:$MESHD_PORT" --tls-mode strict \
	--tls-cert "$WORK/ca/issued/meshd.crt" --tls-key "$WORK/ca/issued/meshd.key" \
	--trust-backend localca --agent-cert-burst 1000000000 --agent-cert-interval 1ns \
	>"$OUT/meshd.log" 2>&1 </dev/null &
MESHD_PID=$!
"$STEPCA" "$S/ca.json" >"$OUT/step-ca.log" 2>&1 </dev/null &
STEP_PID=$!
wait_port "$MESHD_PORT" "$MESHD_PID" || { tail -20 "$OUT/meshd.log" >&2; die "meshd did not start"; }
wait_port "$STEP_PORT" "$STEP_PID" || { tail -20 "$OUT/step-ca.log" >&2; die "step-ca did not start"; }

# cpu_us PID prints the CPU time (user and system) process PID has used, in
# microseconds.
TICK=$(getconf CLK_TCK)
cpu_us() { awk -v t="$TICK" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000000 / t }' "/proc/$1/stat"; }

# load NAME PID CMD...: one hbload run against the server PID, its report
# appended to $OUT/NAME.txt with the server's CPU time per request
# (server-cpu-us): throughput on two shared cores also pays for the load
# generator, and CPU per request holds up better on a busy machine.
load() {
	local name=$1 pid=$2 before report ok
	shift 2
	before=$(cpu_us "$pid")
	report=$("$BIN/hbload" -method raw -c "$C" -d "$DUR" -label "$name" "$@")
	ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$report")
	report+=$(awk -v a="$before" -v b="$(cpu_us "$pid")" -v n="$ok" 'BEGIN { printf " server-cpu-us=%.0f", n ? (b - a) / n : 0 }')
	tee -a "$OUT/$name.txt" <<<"$report" >&2
}
meshd_load() { # meshd_load NAME PATH BODY-DIR
	load "$1" "$MESHD_PID" -url "https://127.0.0.1:$MESHD_PORT" -ca "$WORK/root/ca.crt" -certs "$WORK/nodes" -path "$2" -body "$3"
}
step_load() {
	load step-ca "$STEP_PID" -url "https://127.0.0.1:$STEP_PORT" -ca "$S/root.crt" -certs "$S/leaves" -path /1.0/renew
}

# enroll_load: the /enroll load, on a fresh copy of the mesh CA each time.
enroll_load() {
	local dir=$WORK/enroll addr
	rm -rf "$dir"
	mkdir -p "$dir/requests" "$dir/data"
	cp -r "$WORK/ca-enroll" "$dir/ca"
	"$BIN/meshdprof" -root-dir "$WORK/root" -ca-dir "$dir/ca" -data-dir "$dir/data" \
		-tls-cert "$WORK/ca/issued/meshd.crt" -tls-key "$WORK/ca/issued/meshd.key" \
		-join-tokens "$ENROLL_N" -requests-dir "$dir/requests" >"$dir/out" 2>>"$OUT/meshdprof.log" </dev/null &
	PROF_PID=$!
	for _ in $(seq 600); do grep -q '^addr=' "$dir/out" && break; sleep 0.1; done
	addr=$(sed -n 's/^addr=//p' "$dir/out")
	[[ -n "$addr" ]] || die "meshdprof did not start (see $OUT/meshdprof.log)"
	load meshd-enroll-token "$PROF_PID" -url "https://$addr" -ca "$WORK/root/ca.crt" -certs none -requests "$dir/requests" -path /enroll
	kill -TERM "$PROF_PID"
	wait "$PROF_PID" 2>/dev/null || true
	PROF_PID=
	rm -rf "$dir"
}

for r in $(seq "$ROUNDS"); do
	log "round $r/$ROUNDS"
	if ((r % 2)); then
		step_load
		meshd_load meshd-renew-same-key /renew "$WORK/same-key"
		meshd_load meshd-renew-csr /renew "$WORK/csr"
		meshd_load meshd-agent-cert /agent-cert "$WORK/agent-cert"
		enroll_load
	else
		enroll_load
		meshd_load meshd-agent-cert /agent-cert "$WORK/agent-cert"
		meshd_load meshd-renew-csr /renew "$WORK/csr"
		meshd_load meshd-renew-same-key /renew "$WORK/same-key"
		step_load
	fi
done

# rps NAME prints NAME's rps figures, one per round.
rps() { sed -n 's/.* rps=\([0-9.]*\).*/\1/p' "$OUT/$1.txt"; }
# cpu NAME prints NAME's server CPU per request, one per round.
cpu() { sed -n 's/.* server-cpu-us=\([0-9.]*\).*/\1/p' "$OUT/$1.txt"; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
{
	echo "machine: $(nproc) cores, load average at end: $(cut -d' ' -f1-3 /proc/loadavg); C=$C, $ROUNDS rounds of $DUR"
	echo "step-ca: $("$STEPCA" version 2>/dev/null | head -1)"
	step=$(rps step-ca | median)
	printf '%-22s %9.0f/s  %5.0f server-cpu-us/req\n' step-ca "$step" "$(cpu step-ca | median)"
	for name in meshd-renew-same-key meshd-renew-csr meshd-agent-cert meshd-enroll-token; do
		# The ratio of medians, and the median over rounds of the paired ratio.
		paired=$(paste <(rps "$name") <(rps step-ca) | awk '{ print $1 / $2 }' | median)
		cpaired=$(paste <(cpu step-ca) <(cpu "$name") | awk '{ print $1 / $2 }' | median)
		printf '%-22s %9.0f/s  %5.0f server-cpu-us/req  x%.2f step-ca (median of paired ratios x%.2f; server CPU per request x%.2f)\n' \
			"$name" "$(rps "$name" | median)" "$(cpu "$name" | median)" \
			"$(awk -v a="$(rps "$name" | median)" -v b="$step" 'BEGIN { print a / b }')" "$paired" "$cpaired"
	done
} | tee "$OUT/summary.txt"

if [[ "$PROFILE" == 1 ]]; then
	kill -TERM "$MESHD_PID" "$STEP_PID"
	wait "$MESHD_PID" "$STEP_PID" 2>/dev/null || true
	MESHD_PID= STEP_PID=
	for spec in "meshd-renew-same-key /renew same-key" "meshd-renew-csr /renew csr" "meshd-agent-cert /agent-cert agent-cert"; do
		read -r name path body <<<"$spec"
		log "profiling meshd in-process under $name"
		mkdir -p "$WORK/prof-$name"
		"$BIN/meshdprof" -root-dir "$WORK/root" -ca-dir "$WORK/ca" -data-dir "$WORK/prof-$name" \
			-tls-cert "$WORK/ca/issued/meshd.crt" -tls-key "$WORK/ca/issued/meshd.key" \
			-cpuprofile "$OUT/$name.prof" >"$WORK/prof.out" 2>"$OUT/meshdprof.log" </dev/null &
		PROF_PID=$!
		for _ in $(seq 100); do grep -q '^addr=' "$WORK/prof.out" && break; sleep 0.1; done
		addr=$(sed -n 's/^addr=//p' "$WORK/prof.out")
		[[ -n "$addr" ]] || die "meshdprof did not start"
		"$BIN/hbload" -method raw -c "$C" -d "$PROF_DUR" -label "$name-profiled" -url "https://$addr" \
			-ca "$WORK/root/ca.crt" -certs "$WORK/nodes" -path "$path" -body "$WORK/$body" >&2 || true
		kill -TERM "$PROF_PID"
		wait "$PROF_PID" 2>/dev/null || true
		PROF_PID=
		go tool pprof -top -cum -nodecount=60 "$BIN/meshdprof" "$OUT/$name.prof" >"$OUT/$name.cum" 2>/dev/null || true
	done
fi
