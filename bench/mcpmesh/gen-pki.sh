#!/usr/bin/env bash
# gen-pki.sh — throwaway PKI for running the MCP Mesh registry (and meshd)
# with mTLS on 127.0.0.1. For tests/benchmarks only: short-lived, EC P-256,
# keys written 0600 into a directory you choose (default: a fresh temp dir).
#
# Usage: bench/mcpmesh/gen-pki.sh [DIR] [AGENT_ID ...]
#   DIR        output directory (default: mktemp -d)
#   AGENT_ID   agent cert CNs to issue (default: weather-agent-1)
#
# Env: PKI_ENTITY (default "bench") — goes into O= of the CA and agent certs;
#      MCP Mesh's filestore/localca backends take the entity id from O (then OU,
#      then the file name).
#      PKI_DAYS (default 2) — leaf lifetime; the CA lives PKI_DAYS+5 days.
#
# Layout written:
#   ca.pem ca-key.pem                 entity CA (CN="<entity> bench CA", O=<entity>)
#   server.pem server-key.pem         registry server cert, SAN IP:127.0.0.1, DNS:localhost
#   agents/<id>.pem agents/<id>-key.pem   client certs (CN=<id>, O=<entity>,
#                                     EKU clientAuth+serverAuth, SAN DNS:<id>, IP:127.0.0.1)
#   trust/<entity>.pem                a copy of ca.pem: point MCP_MESH_TRUST_DIR here
# stdout: the DIR path.
set -euo pipefail

DIR="${1:-}"
[[ $# -gt 0 ]] && shift
[[ -n "$DIR" ]] || DIR="$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-pki.XXXXXX")"
AGENTS=("$@")
[[ ${#AGENTS[@]} -gt 0 ]] || AGENTS=(weather-agent-1)
ENTITY="${PKI_ENTITY:-bench}"
DAYS="${PKI_DAYS:-2}"

command -v openssl >/dev/null || { echo "gen-pki.sh: openssl not found" >&2; exit 1; }
umask 077
mkdir -p "$DIR/agents" "$DIR/trust"
chmod 0700 "$DIR" "$DIR/agents"

eckey() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

if [[ ! -f "$DIR/ca.pem" ]]; then
  eckey "$DIR/ca-key.pem"
  openssl req -x509 -new -key "$DIR/ca-key.pem" -sha256 -days $((DAYS + 5)) \
    -subj "/CN=${ENTITY} bench CA/O=${ENTITY}" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$DIR/ca.pem"
fi

# leaf NAME_PREFIX CN EKU SAN
leaf() {
  local out="$1" cn="$2" eku="$3" san="$4" ext
  eckey "${out}-key.pem"
  ext="$(mktemp)"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
    "$eku" "$san" >"$ext"
  openssl req -new -key "${out}-key.pem" -subj "/CN=${cn}/O=${ENTITY}" 2>/dev/null |
    openssl x509 -req -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
      -days "$DAYS" -sha256 -extfile "$ext" -out "${out}.pem" 2>/dev/null
  rm -f "$ext"
}

[[ -f "$DIR/server.pem" ]] || leaf "$DIR/server" localhost serverAuth "DNS:localhost,IP:127.0.0.1"
for id in "${AGENTS[@]}"; do
  [[ "$id" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || { echo "gen-pki.sh: bad agent id '$id'" >&2; exit 1; }
  [[ -f "$DIR/agents/${id}.pem" ]] || leaf "$DIR/agents/${id}" "$id" "clientAuth,serverAuth" "DNS:${id},IP:127.0.0.1"
done
cp "$DIR/ca.pem" "$DIR/trust/${ENTITY}.pem"
chmod 0644 "$DIR"/*.pem "$DIR"/agents/*.pem "$DIR"/trust/*.pem
chmod 0600 "$DIR"/*-key.pem "$DIR"/agents/*-key.pem
printf '%s\n' "$DIR"
