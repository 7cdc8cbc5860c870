#!/usr/bin/env bash
# Builds and caches a real SPIRE server and agent for the tests of the SPIFFE
# paths (credentials/spire, trust/spirebundle, meshd's spire backend).
#
#   scripts/spire.sh build    build spire-server and spire-agent once into
#                             the cache (idempotent)
#   scripts/spire.sh path     print the directory holding both binaries
#   scripts/spire.sh start DIR [TRUST_DOMAIN]
#                             start a server (sqlite3 datastore, disk key
#                             manager, join_token node attestation) and an
#                             agent attested by a join token (unix workload
#                             attestor with discover_workload_path, so
#                             unix:path selectors tell workloads apart) on
#                             127.0.0.1, trust domain TRUST_DOMAIN
#                             (mcp-mesh.local); ca_ttl 1h and
#                             default_x509_svid_ttl 2m, so rotations happen
#                             in minutes; prints and writes DIR/env
#                             (SPIRE_SH_PARENT=PID: stop both when PID exits)
#                             With SPIRE_SH_BUNDLE_ENDPOINT=1 the server
#                             also serves its bundle as a SPIFFE bundle
#                             endpoint (https_spiffe) on a free loopback
#                             port, for another server to federate with
#                             (env: SPIRE_BUNDLE_ENDPOINT_URL)
#   scripts/spire.sh restart-agent DIR
#                             stop the agent started in DIR and start it
#                             again with its data dir (its join token is
#                             spent: it comes back with the SVID it kept)
#   scripts/spire.sh federate DIR PARTNER_DIR
#                             make the server in DIR federate with the one in
#                             PARTNER_DIR (started with a bundle endpoint):
#                             it trusts PARTNER_DIR's bundle and refreshes it
#                             from that endpoint (https_spiffe profile)
#   scripts/spire.sh stop DIR stop the agent and the server started in DIR
#
# SPIRE is not downloadable as a binary here, so it is built from its Go
# module, through a throwaway module that requires it as a tool (SPIRE's own
# go.mod pins what it builds with). The binaries are cached outside the
# repository, in
# ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}/spire-$SPIRE_VERSION/; cached
# binaries that answer `--version` with that version are never rebuilt. A
# fresh machine pays one build (about 20 minutes on two cores; cgo, for the
# SQLite datastore).
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SPIRE_VERSION=1.13.3
cache_root=${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}
spire_dir=$cache_root/spire-$SPIRE_VERSION

cached_ok() {
	local b
	for b in spire-server spire-agent; do
		[ -x "$spire_dir/$b" ] || return 1
		# Both print their version on stderr.
		"$spire_dir/$b" --version 2>&1 | grep -qF "$SPIRE_VERSION" || return 1
	done
}

build() {
	if cached_ok; then
		echo "spire.sh: cached SPIRE $SPIRE_VERSION at $spire_dir"
		return 0
	fi
	command -v go >/dev/null 2>&1 || die "build: go is not on PATH"
	command -v gcc >/dev/null 2>&1 || die "build: gcc is not on PATH (SPIRE builds with cgo)"

	local started=$SECONDS b
	# Global, not local: the EXIT trap runs after build has returned.
	work=$(mktemp -d -t meshtrust-spire-build.XXXXXX)
	trap 'rm -rf "$work"' EXIT
	(
		cd "$work"
		go mod init meshtrust.local/spirebuild >/dev/null 2>&1
		echo "spire.sh: resolving SPIRE $SPIRE_VERSION's modules"
		for b in spire-server spire-agent; do
			GOFLAGS=-mod=mod go get -tool "github.com/spiffe/spire/cmd/$b@v$SPIRE_VERSION"
		done
		echo "spire.sh: building SPIRE $SPIRE_VERSION (cgo; about 20 minutes on two cores)"
		# nice: the build takes every core; whatever else runs goes first.
		for b in spire-server spire-agent; do
			CGO_ENABLED=1 GOFLAGS=-mod=mod nice -n 19 go build -o "$work/bin/$b" "github.com/spiffe/spire/cmd/$b"
		done
	)
	for b in spire-server spire-agent; do
		"$work/bin/$b" --version >/dev/null 2>&1 || die "build: the built $b does not run"
		install_cached "$work/bin/$b" "$spire_dir" "$b"
	done
	cached_ok || die "build: the cached binaries do not report version $SPIRE_VERSION"
	echo "spire.sh: built SPIRE $SPIRE_VERSION at $spire_dir in $((SECONDS - started))s"
}

# The functions below name the directory DIR root, not dir: start_server
# has a local dir (its own DIR/server or DIR/agent), which bash's dynamic
# scoping would show them instead.

# sctl runs spire-server's CLI against the server started in DIR.
sctl() { "$spire_dir/spire-server" "$@" -socketPath "$root/server/api.sock"; }

launch_server() {
	local federation=""
	if [ -f "$root/server/bundle_endpoint" ]; then
		# A fresh port per launch, as start_server gives the server's own.
		free_port >"$root/server/bundle_port"
		federation="federation {
		bundle_endpoint {
			address = \"127.0.0.1\"
			port = $(cat "$root/server/bundle_port")
			refresh_hint = \"1m\"
			profile \"https_spiffe\" {}
		}
	}"
	fi
	cat >"$root/server/server.conf" <<CONF
server {
	bind_address = "127.0.0.1"
	bind_port = "$1"
	socket_path = "$root/server/api.sock"
	trust_domain = "$td"
	data_dir = "$root/server/data"
	log_level = "INFO"
	ca_ttl = "1h"
	default_x509_svid_ttl = "2m"
	$federation
}
plugins {
	DataStore "sql" {
		plugin_data {
			database_type = "sqlite3"
			connection_string = "$root/server/data/datastore.sqlite3"
		}
	}
	KeyManager "disk" {
		plugin_data { keys_path = "$root/server/data/keys.json" }
	}
	NodeAttestor "join_token" {
		plugin_data {}
	}
}
CONF
	"$spire_dir/spire-server" run -config "$root/server/server.conf" </dev/null >"$root/server/server.log" 2>&1 &
	echo $! >"$root/server/pid"
}
server_ready() { sctl healthcheck >/dev/null 2>&1; }

# launch_agent PORT: PORT is the agent's health listener, the address
# start_server needs; readiness is asked over the Workload API socket.
launch_agent() {
	cat >"$root/agent/agent.conf" <<CONF
agent {
	data_dir = "$root/agent/data"
	log_level = "INFO"
	server_address = "127.0.0.1"
	server_port = "$(cat "$root/server/port")"
	socket_path = "$root/agent/workload.sock"
	trust_bundle_path = "$root/bundle.pem"
	trust_domain = "$td"
}
plugins {
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "disk" {
		plugin_data { directory = "$root/agent/data" }
	}
	WorkloadAttestor "unix" {
		plugin_data { discover_workload_path = true }
	}
}
health_checks {
	listener_enabled = true
	bind_address = "127.0.0.1"
	bind_port = "$1"
}
CONF
	"$spire_dir/spire-agent" run -config "$root/agent/agent.conf" -joinToken "$(cat "$root/agent/token")" \
		</dev/null >"$root/agent/agent.log" 2>&1 &
	echo $! >"$root/agent/pid"
}
agent_ready() { "$spire_dir/spire-agent" healthcheck -socketPath "$root/agent/workload.sock" >/dev/null 2>&1; }

start() {
	cached_ok || die "start: no SPIRE $SPIRE_VERSION at $spire_dir; build it first: scripts/spire.sh build"
	mkdir -p "$root/server/data" "$root/agent/data"
	pid_alive "$root/server/pid" && die "start: SPIRE already runs in $root; scripts/spire.sh stop $root"
	if [ "${SPIRE_SH_BUNDLE_ENDPOINT:-}" = 1 ]; then
		: >"$root/server/bundle_endpoint"
	fi
	# start_server keeps each one's pid and port in the directory it is
	# given: DIR/server and DIR/agent.
	local parent=${SPIRE_SH_PARENT:-}
	start_server "spire-server" "$root/server" "$root/server/server.log" "address already in use" "$parent" launch_server server_ready
	sctl bundle show >"$root/bundle.pem"
	# A join token is used once; a restarted agent keeps its SVID in its
	# data dir and needs none.
	[ -f "$root/agent/token" ] || sctl token generate -spiffeID "spiffe://$td/node/test" -ttl 3600 |
		sed -n 's/^Token: //p' >"$root/agent/token"
	[ -s "$root/agent/token" ] || die "start: spire-server gave no join token"
	start_server "spire-agent" "$root/agent" "$root/agent/agent.log" "address already in use" "$parent" launch_agent agent_ready
	{
		echo "SPIRE_TRUST_DOMAIN=$td"
		echo "SPIRE_SERVER_ADDR=127.0.0.1:$(cat "$root/server/port")"
		echo "SPIRE_SERVER_SOCKET=$root/server/api.sock"
		echo "SPIRE_AGENT_SOCKET=unix://$root/agent/workload.sock"
		echo "SPIRE_AGENT_ID=spiffe://$td/node/test"
		echo "SPIRE_BUNDLE=$root/bundle.pem"
		echo "SPIRE_SERVER_PID=$(cat "$root/server/pid")"
		echo "SPIRE_AGENT_PID=$(cat "$root/agent/pid")"
		if [ -f "$root/server/bundle_port" ]; then
			echo "SPIRE_BUNDLE_ENDPOINT_URL=https://127.0.0.1:$(cat "$root/server/bundle_port")"
		fi
	} >"$root/env"
	cat "$root/env"
}

restart_agent() {
	[ -f "$root/env" ] || die "restart-agent: no SPIRE started in $root"
	td=$(sed -n 's/^SPIRE_TRUST_DOMAIN=//p' "$root/env")
	stop_pid "$root/agent/pid"
	# The port kept in DIR/agent/port brings it back at the same address;
	# the spent join token is passed again and not used: the agent resumes
	# with the SVID in its data dir.
	start_server "spire-agent" "$root/agent" "$root/agent/agent.log" "address already in use" "${SPIRE_SH_PARENT:-}" launch_agent agent_ready
	sed -i "s/^SPIRE_AGENT_PID=.*/SPIRE_AGENT_PID=$(cat "$root/agent/pid")/" "$root/env"
	echo "SPIRE_AGENT_PID=$(cat "$root/agent/pid")"
}

# federate: the partner's trust domain, bundle and bundle endpoint come from
# its env file and bundle.pem, written by its start.
federate() {
	local partner=$1 ptd url
	[ -f "$partner/env" ] || die "federate: no SPIRE started in $partner"
	ptd=$(sed -n 's/^SPIRE_TRUST_DOMAIN=//p' "$partner/env")
	url=$(sed -n 's/^SPIRE_BUNDLE_ENDPOINT_URL=//p' "$partner/env")
	[ -n "$url" ] || die "federate: the server in $partner has no bundle endpoint; start it with SPIRE_SH_BUNDLE_ENDPOINT=1"
	sctl federation create -trustDomain "$ptd" -bundleEndpointURL "$url" \
		-bundleEndpointProfile https_spiffe -endpointSpiffeID "spiffe://$ptd/spire/server" \
		-trustDomainBundlePath "$partner/bundle.pem" -trustDomainBundleFormat pem
}

stop() {
	[ -f "$root/server/pid" ] || [ -f "$root/agent/pid" ] || die "stop: no pid files under $root; was SPIRE started there?"
	stop_pid "$root/agent/pid"
	stop_pid "$root/server/pid"
}

case ${1:-} in
build) build ;;
path)
	cached_ok || die "path: no SPIRE $SPIRE_VERSION at $spire_dir; build it first: scripts/spire.sh build"
	echo "$spire_dir"
	;;
start | stop)
	[ -n "${2:-}" ] || die "usage: $0 $1 DIR"
	root=$2
	td=${3:-mcp-mesh.local}
	"$1"
	;;
restart-agent)
	[ -n "${2:-}" ] || die "usage: $0 restart-agent DIR"
	root=$2
	restart_agent
	;;
federate)
	[ -n "${2:-}" ] && [ -n "${3:-}" ] || die "usage: $0 federate DIR PARTNER_DIR"
	cached_ok || die "federate: no SPIRE $SPIRE_VERSION at $spire_dir; build it first: scripts/spire.sh build"
	root=$2
	federate "$3"
	;;
*) die "usage: scripts/spire.sh build | path | start DIR [TRUST_DOMAIN] | restart-agent DIR | federate DIR PARTNER_DIR | stop DIR" ;;
esac
