#!/usr/bin/env bash
# A short walk through the mesh CA: create the root and intermediate, take
# the root key offline, issue node/agent/client certificates, revoke one,
# and let OpenSSL judge the results. Everything lives in a temporary
# directory (or $DEMO_DIR) and is left there for you to inspect.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=${DEMO_DIR:-$(mktemp -d -t meshtrust-demo.XXXXXX)}
export MESHTRUST_ROOT_DIR="$demo/root" MESHTRUST_CA_DIR="$demo/ca"
go build -o "$demo/bin/meshctl" ./cmd/meshctl
m() { echo "+ meshctl $*"; "$demo/bin/meshctl" "$@"; echo; }

m ca init
m ca issue-intermediate
echo "+ moving the root key offline"; mv "$demo/root/ca.key" "$demo/root-key-offline.pem"; echo
m ca issue-node ct111 IP:127.0.0.1
m ca issue-agent opus ct111
m ca issue-client alice
m ca revoke opus@ct111 --reason keyCompromise
m ca list
if "$demo/bin/meshctl" ca verify "$MESHTRUST_CA_DIR/issued/opus@ct111.crt"; then
  echo "unexpected: a revoked certificate verified" >&2; exit 1
fi
echo
echo "+ openssl verify (chain and CRL) of the node and the revoked agent"
issued=$MESHTRUST_CA_DIR/issued
openssl verify -crl_check -CAfile "$MESHTRUST_CA_DIR/intermediate/root.crt" \
  -untrusted "$MESHTRUST_CA_DIR/intermediate/int.crt" -CRLfile "$MESHTRUST_CA_DIR/crl.pem" "$issued/ct111.crt"
if openssl verify -crl_check -CAfile "$MESHTRUST_CA_DIR/intermediate/root.crt" \
  -untrusted "$MESHTRUST_CA_DIR/intermediate/int.crt" -CRLfile "$MESHTRUST_CA_DIR/crl.pem" "$issued/opus@ct111.crt"; then
  echo "unexpected: openssl accepted a revoked certificate" >&2; exit 1
fi
echo
m ca audit --verify
echo "demo files are in $demo"
