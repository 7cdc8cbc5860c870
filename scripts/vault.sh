#!/usr/bin/env bash
# Builds, caches and runs a real HashiCorp Vault for the tests of the vault
# credential provider (credentials/vault).
#
#   scripts/vault.sh build       build Vault once into the cache (idempotent)
#   scripts/vault.sh path        print where the cached binary lives
#   scripts/vault.sh start DIR   start a dev server set up like MCP Mesh's
#                                integration test; prints and writes DIR/env
#                                (VAULT_SH_TLS=1: https, with Vault's dev CA;
#                                VAULT_SH_PARENT=PID: stop it when PID exits)
#   scripts/vault.sh stop DIR    stop the server started in DIR
#
# Vault is not downloadable as a binary here, so it is built from its Go
# module. The binary is cached outside the repository, in
# ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}/vault-$VAULT_VERSION/vault; a
# cached binary that answers `vault version` is never rebuilt. A fresh
# machine pays one build (about 15 minutes on two cores, a 500 MB binary).
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VAULT_VERSION=1.21.4
cache_root=${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}
vault_dir=$cache_root/vault-$VAULT_VERSION
vault_bin=$vault_dir/vault

# adapt FILE FIXED-STRING SED-EXPRESSION applies a one-line adaptation to the
# build copy, and fails loudly when the line it adapts is not there, so a
# changed recipe is noticed instead of silently building something else.
adapt() {
	local file=$1 want=$2 expr=$3
	grep -qF -- "$want" "$file" || die "build: $file no longer contains '$want'; the recipe needs updating"
	sed -i -e "$expr" "$file"
}

cached_ok() {
	[ -x "$vault_bin" ] && "$vault_bin" version >/dev/null 2>&1
}

build() {
	if cached_ok; then
		echo "vault.sh: cached $("$vault_bin" version) at $vault_bin"
		return 0
	fi
	command -v go >/dev/null 2>&1 || die "build: go is not on PATH"
	command -v gcc >/dev/null 2>&1 || die "build: gcc is not on PATH (Vault builds with cgo)"

	local started=$SECONDS
	# Global, not local: the EXIT trap runs after build has returned.
	work=$(mktemp -d -t meshtrust-vault-build.XXXXXX)
	# What is copied from the module cache is read-only until chmod.
	trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

	local src=$work/src
	module_source github.com/hashicorp/vault "$VAULT_VERSION" "$src"

	# The module's go.mod replaces api and sdk with ./api and ./sdk, which
	# the module zip does not hold; use the published versions it requires.
	sed -i -E '/^replace github\.com\/hashicorp\/vault\/(api|sdk)([[:space:]]|\/)/d' "$src/go.mod"
	if grep -qE '^replace github\.com/hashicorp/vault/(api|sdk)' "$src/go.mod"; then
		die "build: go.mod still replaces vault/api or vault/sdk"
	fi

	# The published sdk differs from Vault's in-tree copy at three call
	# sites; one line each.
	# framework.Backend.ActivationFunc takes a third string argument.
	adapt "$src/vault/identity_store.go" \
		'ActivationFunc: iStore.activateDeduplication,' \
		's/ActivationFunc: iStore\.activateDeduplication,/ActivationFunc: func(ctx context.Context, req *logical.Request, _ string) error { return iStore.activateDeduplication(ctx, req) },/'
	adapt "$src/vault/logical_system_activation_flags.go" \
		'b.idStoreBackend.ActivationFunc(ctx, nil)' \
		's/b\.idStoreBackend\.ActivationFunc(ctx, nil)/b.idStoreBackend.ActivationFunc(ctx, nil, "")/'
	# keysutil.LockManager.RestorePolicy returns only an error.
	adapt "$src/builtin/logical/transit/path_restore.go" \
		'restoredKeyName, err := b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)' \
		's/restoredKeyName, err := b\.lm\.RestorePolicy(/restoredKeyName, err := keyName, b.lm.RestorePolicy(/'

	echo "vault.sh: building Vault $VAULT_VERSION (cgo; about 15 minutes on two cores)"
	# nice: the build takes every core for a quarter of an hour; whatever
	# else runs on the machine goes first.
	(cd "$src" && CGO_ENABLED=1 GOFLAGS=-mod=mod nice -n 19 go build -o "$work/vault" .)

	"$work/vault" version >/dev/null || die "build: the built binary does not run"
	install_cached "$work/vault" "$vault_dir" vault
	echo "vault.sh: built $("$vault_bin" version) at $vault_bin in $((SECONDS - started))s"
}

# vcli runs the vault CLI against the server being started. HOME is DIR
# so that nothing is written to the caller's ~/.vault-token. Vault's
# warnings (no AIA URLs on a test CA) are shown only when a command fails.
vcli() {
	local err
	err=$(mktemp "$dir/.vault-cli.XXXXXX")
	if HOME=$dir VAULT_ADDR=$addr VAULT_TOKEN=$token VAULT_CACERT=$cacert \
		"$vault_bin" "$@" </dev/null 2>"$err"; then
		rm -f "$err"
		return 0
	fi
	echo "vault.sh: vault $* failed:" >&2
	cat "$err" >&2
	rm -f "$err"
	return 1
}

running() { pid_alive "$dir/pid"; }

# setup enables the PKI engines and the role the way MCP Mesh's own
# integration test does: a root in pki, an intermediate in pki_int signed
# by it, and role mesh-agent for names under mcp-mesh.local.
setup() {
	vcli secrets enable pki >/dev/null
	vcli secrets tune -max-lease-ttl=87600h pki >/dev/null
	vcli write -field=certificate pki/root/generate/internal \
		common_name="meshtrust test root CA" ttl=87600h >"$dir/root-ca.pem"
	vcli secrets enable -path=pki_int pki >/dev/null
	vcli secrets tune -max-lease-ttl=43800h pki_int >/dev/null
	vcli write -field=csr pki_int/intermediate/generate/internal \
		common_name="meshtrust test intermediate CA" >"$dir/pki_int.csr"
	# pem_bundle: the intermediate's chain then holds the root too, so an
	# issue answer's ca_chain reaches the root.
	vcli write -field=certificate pki/root/sign-intermediate csr=@"$dir/pki_int.csr" \
		format=pem_bundle ttl=43800h >"$dir/pki_int.pem"
	vcli write pki_int/intermediate/set-signed certificate=@"$dir/pki_int.pem" >/dev/null
	vcli write pki_int/roles/mesh-agent allowed_domains=mcp-mesh.local \
		allow_subdomains=true allow_ip_sans=true max_ttl=72h >/dev/null
}

# start runs a dev server in DIR. Started again in the same DIR (after
# stop), it listens on the same address with the same root token; its
# storage is in memory, so the PKI setup is new.
start() {
	cached_ok || die "start: no Vault at $vault_bin; build it first: scripts/vault.sh build"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	running && die "start: Vault already runs in $dir (pid $(cat "$dir/pid")); scripts/vault.sh stop $dir"
	[ -f "$dir/token" ] || od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$dir/token"
	token=$(cat "$dir/token")
	local scheme=http tls_args=()
	cacert=
	if [ "${VAULT_SH_TLS:-}" = 1 ]; then
		# Vault's own dev TLS: a fresh CA and server certificate in DIR/tls
		# at every start.
		scheme=https
		mkdir -p "$dir/tls"
		tls_args=(-dev-tls "-dev-tls-cert-dir=$dir/tls")
		cacert=$dir/tls/vault-ca.pem
	fi

	start_server Vault "$dir" "$dir/vault.log" "address already in use" "${VAULT_SH_PARENT:-}" launch vault_ready
	setup
	{
		echo "VAULT_ADDR=$addr"
		echo "VAULT_TOKEN=$token"
		echo "VAULT_CACERT=$cacert"
		echo "VAULT_PKI_PATH=pki_int/issue/mesh-agent"
		echo "VAULT_ROOT_CA=$dir/root-ca.pem"
		echo "VAULT_PID=$(cat "$dir/pid")"
	} >"$dir/env"
	cat "$dir/env"
}

# launch PORT runs the dev server in the background (start_server's
# LAUNCH); addr is where it answers.
launch() {
	addr=$scheme://127.0.0.1:$1
	HOME=$dir "$vault_bin" server -dev -dev-no-store-token \
		"-dev-listen-address=127.0.0.1:$1" "-dev-root-token-id=$token" "${tls_args[@]}" \
		</dev/null >"$dir/vault.log" 2>&1 &
	echo $! >"$dir/pid"
}

# vault_ready reports whether the server answers (start_server's READY).
vault_ready() { vcli status >/dev/null 2>&1; }

# stop kills the server started in DIR and waits until it is gone.
stop() {
	[ -f "$dir/pid" ] || die "stop: no $dir/pid; was Vault started in $dir?"
	stop_pid "$dir/pid"
}

case ${1:-} in
build) build ;;
path) echo "$vault_bin" ;;
start | stop)
	[ -n "${2:-}" ] || die "usage: $0 $1 DIR"
	dir=$2
	"$1"
	;;
*)
	echo "usage: $0 build | path | start DIR | stop DIR" >&2
	exit 2
	;;
esac
