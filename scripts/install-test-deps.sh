#!/usr/bin/env bash
# Installs the system packages the test suite needs on a Debian machine.
# Idempotent: a package is installed only when the command it provides is
# missing, and the package index is refreshed at most once per run (and only
# when something has to be installed), so a machine that has everything
# pays nothing.
#
# To add a dependency, add a "command package" line to DEPS below.
set -euo pipefail

# command-to-check   debian-package
DEPS=(
	"openssl openssl" # the openssl CLI, used by the test suite
	"gcc gcc"         # cgo, needed by go test -race
	"make make"       # the Makefile drives the suite
	"npm npm"         # npm pack fetches MCP Mesh (scripts/mcpmesh.sh); pulls in nodejs
	"etcd etcd-server" # the store of the kube-apiserver the k8s tests run
	"chromium chromium" # the headless browser the console's tests drive (chromedp)
	"promtool prometheus" # promtool checks and unit-tests deploy/prometheus's rules
	"curl curl"           # the README's pasted commands, and the tests that call meshd as another uid
	"ip iproute2"         # the partition test's network namespaces and veth links
	"setpriv util-linux"  # running the partition test's PostgreSQL as its own user
	"softhsm2-util softhsm2" # the PKCS#11 token (SoftHSM2) the tests of CA keys on an HSM run against
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		# -n: never prompt; CI runs with no stdin.
		SUDO=(sudo -n)
	fi
fi

missing=()
for dep in "${DEPS[@]}"; do
	read -r cmd pkg <<<"$dep"
	if ! command -v "$cmd" >/dev/null 2>&1; then
		missing+=("$pkg")
	fi
done

# Only when something is missing; the sections below run either way.
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
		echo "install-test-deps: missing ${missing[*]}, and not root and no sudo: install them by hand (apt-get install ${missing[*]})" >&2
		exit 1
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "install-test-deps: missing ${missing[*]}, and no apt-get (not Debian?): install them by hand" >&2
		exit 1
	fi

	echo "install-test-deps: installing ${missing[*]}"
	# env, not export: sudo drops the caller's environment.
	apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
	"${apt[@]}" update -qq </dev/null
	"${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

# --- Vault ------------------------------------------------------------------
# The tests of credentials/vault run against a real Vault, which is not
# downloadable as a binary here: scripts/vault.sh builds it from its Go
# module (cgo, so after gcc above) and caches it outside the repository,
# in ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}. A fresh machine builds it
# once, about 15 minutes on two cores; a machine with the cached binary
# skips in a second.
bash "$(dirname "${BASH_SOURCE[0]}")/vault.sh" build

# --- MCP Mesh 3.7.1 -----------------------------------------------------------
# The compatibility tests drive meshd with MCP Mesh's own meshctl and compare
# it with MCP Mesh's registry: scripts/mcpmesh.sh fetches the npm package
# @mcpmesh/cli-linux-x64@3.7.1 (npm above), checks its checksums and caches
# it in ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}; a cached copy costs
# nothing.
bash "$(dirname "${BASH_SOURCE[0]}")/mcpmesh.sh" fetch >/dev/null

# --- PostgreSQL -------------------------------------------------------------
# The tests of the PostgreSQL store and of meshd replicas run against a real
# PostgreSQL, from Debian's postgresql package; scripts/postgres.sh starts
# a throwaway server of it on 127.0.0.1 for each test run.
bash "$(dirname "${BASH_SOURCE[0]}")/postgres.sh" install

# --- Kubernetes API server and Helm -----------------------------------------
# The k8s-secrets backend and the Helm chart are tested against a real
# kube-apiserver (on the etcd above) and with a real Helm, neither
# downloadable as a binary here: scripts/kube.sh builds both from their Go
# modules and caches them in ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}.
# A fresh machine builds them once, about 10 minutes on two cores.
bash "$(dirname "${BASH_SOURCE[0]}")/kube.sh" build

# --- SPIRE 1.13.3 -------------------------------------------------------------
# Every SPIFFE path (the spire provider and backend, meshd --tls-svid, the
# bundle endpoint, federation) is tested against a real SPIRE server and
# agent, not downloadable as a binary here: scripts/spire.sh builds both
# from their Go module (cgo, for SQLite) and caches them in
# ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}. A fresh machine builds them
# once, about 12 minutes on two cores; a cached copy costs nothing.
bash "$(dirname "${BASH_SOURCE[0]}")/spire.sh" build
