#!/usr/bin/env bash
# Builds, caches and runs a real Kubernetes API server (kube-apiserver on
# etcd) and Helm for the tests of the k8s-secrets trust backend
# (trust/k8ssecrets) and of the Helm chart (deploy/helm/meshtrust).
#
#   scripts/kube.sh build       build kube-apiserver and helm once into the
#                               cache (idempotent)
#   scripts/kube.sh path        print where the cached binaries live
#   scripts/kube.sh start DIR   start etcd and kube-apiserver on 127.0.0.1;
#                               prints and writes DIR/env, writes
#                               DIR/kubeconfig (KUBE_SH_PARENT=PID: stop both
#                               when PID exits)
#   scripts/kube.sh stop DIR    stop the servers started in DIR
#   scripts/kube.sh stop-apiserver DIR, start-apiserver DIR
#                               stop the API server alone (an outage; etcd
#                               keeps the data) and start it again on the
#                               same port
#
# Neither is downloadable as a binary here, so both are built from their Go
# modules. kube-apiserver needs a recipe: the k8s.io/kubernetes module
# replaces its k8s.io/* dependencies with ./staging directories that the
# module zip does not hold, so the build copy drops those replaces and uses
# the published v0.$MINOR.$PATCH modules instead. The binaries are cached
# outside the repository, in ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}/
# kube-apiserver-$KUBE_VERSION/ and helm-$HELM_VERSION/; a cached binary that
# answers its version command is never rebuilt. A fresh machine pays one
# build (about 10 minutes on two cores). etcd comes from Debian's
# etcd-server package (scripts/install-test-deps.sh).
set -euo pipefail

KUBE_VERSION=1.36.3
HELM_VERSION=3.22.0
cache_root=${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}
kube_dir=$cache_root/kube-apiserver-$KUBE_VERSION
kube_bin=$kube_dir/kube-apiserver
helm_dir=$cache_root/helm-$HELM_VERSION
helm_bin=$helm_dir/helm

kube_cached_ok() {
	[ -x "$kube_bin" ] && "$kube_bin" --version >/dev/null 2>&1
}

helm_cached_ok() {
	[ -x "$helm_bin" ] && "$helm_bin" version --short >/dev/null 2>&1
}

build_kube() {
	if kube_cached_ok; then
		echo "kube.sh: cached $("$kube_bin" --version) at $kube_bin"
		return 0
	fi
	local started=$SECONDS
	local src=$work/kubernetes
	module_source k8s.io/kubernetes "$KUBE_VERSION" "$src"

	# The staging replaces point into the repository, not the module zip;
	# the k8s.io/* modules they stand for are published as v0.MINOR.PATCH.
	local staging=v0.${KUBE_VERSION#*.}
	grep -qE '=> \./staging/' "$src/go.mod" || die "build: go.mod has no ./staging replaces; the recipe needs updating"
	sed -i -E '/=> \.\/staging\//d' "$src/go.mod"
	sed -i -E "s#^([[:space:]]*k8s\.io/[^[:space:]]+) v0\.0\.0\$#\1 $staging#" "$src/go.mod"
	if grep -qE '=> \./staging/|^[[:space:]]*k8s\.io/[^[:space:]]+ v0\.0\.0$' "$src/go.mod"; then
		die "build: go.mod still has staging replaces or v0.0.0 requirements"
	fi

	echo "kube.sh: building kube-apiserver $KUBE_VERSION (about 10 minutes on two cores)"
	# nice: the build takes every core for minutes; whatever else runs on
	# the machine goes first.
	(cd "$src" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 \
		go build -o "$work/kube-apiserver" ./cmd/kube-apiserver)
	"$work/kube-apiserver" --version >/dev/null || die "build: the built kube-apiserver does not run"
	install_cached "$work/kube-apiserver" "$kube_dir" kube-apiserver
	echo "kube.sh: built $("$kube_bin" --version) at $kube_bin in $((SECONDS - started))s"
}

build_helm() {
	if helm_cached_ok; then
		echo "kube.sh: cached helm $("$helm_bin" version --short) at $helm_bin"
		return 0
	fi
	local started=$SECONDS
	echo "kube.sh: building helm $HELM_VERSION"
	# GOBIN into the work directory: go install never touches the caller's
	# ~/go/bin.
	GOBIN=$work/bin GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 \
		go install "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
	"$work/bin/helm" version --short >/dev/null || die "build: the built helm does not run"
	install_cached "$work/bin/helm" "$helm_dir" helm
	echo "kube.sh: built helm $("$helm_bin" version --short) at $helm_bin in $((SECONDS - started))s"
}

build() {
	if kube_cached_ok && helm_cached_ok; then
		echo "kube.sh: cached $("$kube_bin" --version) at $kube_bin"
		echo "kube.sh: cached helm $("$helm_bin" version --short) at $helm_bin"
		return 0
	fi
	command -v go >/dev/null 2>&1 || die "build: go is not on PATH"
	# Global, not local: the EXIT trap runs after build has returned.
	work=$(mktemp -d -t meshtrust-kube-build.XXXXXX)
	# What is copied from the module cache is read-only until chmod.
	trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
	build_helm
	build_kube
}

# The helpers every test-server script shares: die, free_port,
# watch_parent, pid_alive, stop_pid, module_source, install_cached.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# alive NAME reports whether the server whose pid is in DIR/NAME.pid runs.
alive() { pid_alive "$dir/$1.pid"; }

# spawn NAME CMD... runs CMD in the background, logging to DIR/NAME.log, and
# records its pid in DIR/NAME.pid.
spawn() {
	local name=$1
	shift
	"$@" </dev/null >"$dir/$name.log" 2>&1 &
	echo $! >"$dir/$name.pid"
	if [ -n "${KUBE_SH_PARENT:-}" ]; then
		# A test that dies without its cleanup (a timeout) takes its
		# servers with it.
		watch_parent "$KUBE_SH_PARENT" "$(cat "$dir/$name.pid")" </dev/null >/dev/null 2>&1 &
	fi
}

# credentials writes what the API server needs once per DIR: a self-signed
# serving certificate for 127.0.0.1, a service-account key pair and the
# static token file (an admin in system:masters, and "meshd", a user with
# no permission of its own that tests grant roles to).
credentials() {
	[ -f "$dir/tokens.csv" ] && return 0
	local log=$dir/openssl.log
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj /CN=kube-apiserver -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-keyout "$dir/serving.key" -out "$dir/serving.crt" >"$log" 2>&1 ||
		die "start: openssl could not make the serving certificate; see $log"
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/sa.key" >>"$log" 2>&1 ||
		die "start: openssl could not make the service-account key; see $log"
	openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub" >>"$log" 2>&1 ||
		die "start: openssl could not write the service-account public key; see $log"
	chmod 600 "$dir/serving.key" "$dir/sa.key"
	local admin meshd
	admin=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
	meshd=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
	{
		echo "$admin,admin,uid-admin,\"system:masters\""
		echo "$meshd,meshd,uid-meshd"
	} >"$dir/tokens.csv"
	chmod 600 "$dir/tokens.csv"
	echo "$admin" >"$dir/admin.token"
	echo "$meshd" >"$dir/meshd.token"
}

# kubeconfig FILE TOKEN writes a kubeconfig for the API server at $addr.
kubeconfig() {
	local ca
	ca=$(base64 -w0 <"$dir/serving.crt")
	cat >"$1" <<CONFIG
apiVersion: v1
kind: Config
clusters:
- name: meshtrust-test
  cluster:
    server: $addr
    certificate-authority-data: $ca
users:
- name: user
  user:
    token: $2
contexts:
- name: meshtrust-test
  context:
    cluster: meshtrust-test
    user: user
    namespace: default
current-context: meshtrust-test
CONFIG
	chmod 600 "$1"
}

# ready waits until the API server answers /readyz as the admin.
ready() {
	local i
	for i in $(seq 1 240); do
		alive etcd || return 1
		alive apiserver || return 1
		if curl -fsS --max-time 2 --cacert "$dir/serving.crt" \
			-H "Authorization: Bearer $(cat "$dir/admin.token")" \
			"$addr/readyz" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.25
	done
	return 1
}

# spawn_apiserver runs kube-apiserver on $port against the etcd on
# $etcd_port.
spawn_apiserver() {
	spawn apiserver "$kube_bin" \
		--etcd-servers "http://127.0.0.1:$etcd_port" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
		--cert-dir "$dir/certs" \
		--tls-cert-file "$dir/serving.crt" --tls-private-key-file "$dir/serving.key" \
		--service-account-key-file "$dir/sa.pub" \
		--service-account-signing-key-file "$dir/sa.key" \
		--service-account-issuer https://kubernetes.default.svc \
		--token-auth-file "$dir/tokens.csv" \
		--authorization-mode RBAC \
		--service-cluster-ip-range 10.96.0.0/16 \
		--enable-priority-and-fairness=false
}

# start runs etcd and kube-apiserver in DIR, each on a free loopback port.
start() {
	kube_cached_ok || die "start: no kube-apiserver at $kube_bin; build it first: scripts/kube.sh build"
	command -v etcd >/dev/null 2>&1 || die "start: etcd is not on PATH; install it: scripts/install-test-deps.sh (Debian package etcd-server)"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if alive etcd || alive apiserver; then
		die "start: servers already run in $dir; scripts/kube.sh stop $dir"
	fi
	credentials
	local attempt peer_port
	for attempt in 1 2 3; do
		etcd_port=$(free_port)
		peer_port=$(free_port)
		port=$(free_port)
		addr=https://127.0.0.1:$port
		rm -rf "$dir/etcd"
		spawn etcd etcd --name meshtrust-test --data-dir "$dir/etcd" \
			--listen-client-urls "http://127.0.0.1:$etcd_port" \
			--advertise-client-urls "http://127.0.0.1:$etcd_port" \
			--listen-peer-urls "http://127.0.0.1:$peer_port" \
			--initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
			--initial-cluster "meshtrust-test=http://127.0.0.1:$peer_port" \
			--log-level warn
		spawn_apiserver
		if ready; then
			echo "$etcd_port" >"$dir/etcd.port"
			echo "$port" >"$dir/apiserver.port"
			kubeconfig "$dir/kubeconfig" "$(cat "$dir/admin.token")"
			kubeconfig "$dir/meshd.kubeconfig" "$(cat "$dir/meshd.token")"
			{
				echo "KUBE_ADDR=$addr"
				echo "KUBECONFIG=$dir/kubeconfig"
				echo "KUBE_MESHD_KUBECONFIG=$dir/meshd.kubeconfig"
				echo "KUBE_CA=$dir/serving.crt"
				echo "KUBE_ETCD_PID=$(cat "$dir/etcd.pid")"
				echo "KUBE_APISERVER_PID=$(cat "$dir/apiserver.pid")"
			} >"$dir/env"
			cat "$dir/env"
			return 0
		fi
		local taken=false
		grep -q "address already in use" "$dir/etcd.log" "$dir/apiserver.log" 2>/dev/null && taken=true
		stop_servers
		if [ "$taken" != true ]; then
			tail -20 "$dir/etcd.log" "$dir/apiserver.log" >&2
			die "start: the API server did not become ready within 60s; see $dir/apiserver.log and $dir/etcd.log"
		fi
	done
	die "start: could not bind free ports in 3 attempts"
}

# stop_apiserver stops the API server alone, as an outage: etcd and its
# data stay.
stop_apiserver() {
	[ -f "$dir/apiserver.port" ] || die "stop-apiserver: no servers were started in $dir"
	stop_pid "$dir/apiserver.pid"
}

# start_apiserver starts the API server again, on the port it had, over
# the same etcd.
start_apiserver() {
	[ -f "$dir/apiserver.port" ] || die "start-apiserver: no servers were started in $dir"
	alive apiserver && die "start-apiserver: the API server already runs in $dir"
	alive etcd || die "start-apiserver: etcd is not running in $dir"
	etcd_port=$(cat "$dir/etcd.port")
	port=$(cat "$dir/apiserver.port")
	addr=https://127.0.0.1:$port
	spawn_apiserver
	ready || die "start-apiserver: the API server did not become ready within 60s; see $dir/apiserver.log"
	echo "KUBE_APISERVER_PID=$(cat "$dir/apiserver.pid")"
}

# stop_servers stops the API server, then its etcd.
stop_servers() {
	stop_pid "$dir/apiserver.pid"
	stop_pid "$dir/etcd.pid"
}

# stop kills the servers started in DIR.
stop() {
	[ -f "$dir/apiserver.pid" ] || [ -f "$dir/etcd.pid" ] || die "stop: no pid files in $dir; were the servers started in $dir?"
	stop_servers
}

case ${1:-} in
build) build ;;
start | stop | stop-apiserver | start-apiserver)
	[ -n "${2:-}" ] || die "usage: $0 $1 DIR"
	dir=$2
	"${1/-/_}"
	;;
path)
	echo "$kube_bin"
	echo "$helm_bin"
	;;
*)
	echo "usage: $0 build | path | start DIR | stop DIR | stop-apiserver DIR | start-apiserver DIR" >&2
	exit 2
	;;
esac
