#!/usr/bin/env bash
# stepca.sh — step-ca, the peer bench/renew.sh measures meshd against,
# installed from its Go module into the cache outside the repository
# (${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}/step-ca-$VERSION).
#
#   scripts/stepca.sh build   install it unless it is already there
#   scripts/stepca.sh path    install if needed, then print the binary's path
#
# Only benchmarks use it; the test suite does not.
set -euo pipefail

VERSION=${STEPCA_VERSION:-v0.30.2}
CACHE=${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}
DIR=$CACHE/step-ca-$VERSION
BIN=$DIR/step-ca

build() {
	[[ -x "$BIN" ]] && return 0
	echo "stepca.sh: installing step-ca $VERSION into $DIR (a few minutes, once)" >&2
	mkdir -p "$DIR"
	GOBIN=$DIR CGO_ENABLED=0 go install "github.com/smallstep/certificates/cmd/step-ca@$VERSION" >&2
}

case ${1:-} in
build) build ;;
path) build && echo "$BIN" ;;
*)
	echo "usage: $0 build|path" >&2
	exit 2
	;;
esac
