#!/usr/bin/env bash
# Fetches, checks and caches MCP Mesh 3.7.1 (its registry binary and its
# meshctl), which the compatibility tests and benchmarks run as a peer.
# None of its code is vendored into this repository.
#
#   scripts/mcpmesh.sh fetch   fetch once into the cache (idempotent); prints
#                              the path of mcp-mesh-registry
#   scripts/mcpmesh.sh path    print the cached package's bin directory
#                              (mcp-mesh-registry and meshctl), fetched or not
#
# Source: the npm package @mcpmesh/cli-linux-x64@3.7.1, with `npm pack` (the
# npm registry is the only place it is fetched from). Cache:
# ${MESHTRUST_CACHE:-$HOME/.cache/meshtrust}/mcpmesh-3.7.1/package/bin. The
# tarball and both binaries are checked against the checksums below; a
# mismatch aborts, so an unexpected binary is never run. A cache that holds
# the expected binaries is never fetched again.
#
# stdout: one line, a path. stderr: progress and errors.
set -euo pipefail

VERSION="3.7.1"
PKG="@mcpmesh/cli-linux-x64@${VERSION}"
CACHE_DIR="${MESHTRUST_CACHE:-${HOME}/.cache/meshtrust}/mcpmesh-${VERSION}"

# Checksums observed for 3.7.1 (npm dist.shasum / dist.integrity and the
# unpacked binaries). A mismatch aborts: we never run an unexpected binary.
TGZ_SHA1="88c2502df13145d15930844cc9514e8e2301c569"
TGZ_SHA512_B64="dRtSokfhZnbfad659Qj1+aefkBxob0RjOJpMh24S3aNotkZTHv9IdW9q+MKkH3ineOPCUBzHMLPP0+aEP1rwuA=="
REGISTRY_SHA256="f88b2f2832505a31ecfff6305f1f61c54e22d00bc17bf332785ef68c03f8ae7c"
MESHCTL_SHA256="e97d9a9a9f0df0dd06382ee8aff0fa733c8f74dc82e9c782558cec3dc0416915"

log() { printf 'mcpmesh.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

BIN_DIR="${CACHE_DIR}/package/bin"
case "${1:-fetch}" in
  path) printf '%s\n' "$BIN_DIR"; exit 0 ;;
  fetch) ;;
  *) printf 'usage: scripts/mcpmesh.sh fetch|path\n' >&2; exit 2 ;;
esac

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) die "only linux/x86_64 is supported (package ${PKG}); got $(uname -s)/$(uname -m)" ;;
esac
for t in npm tar sha256sum sha1sum; do
  command -v "$t" >/dev/null 2>&1 || die "missing tool: $t"
done

REG="${BIN_DIR}/mcp-mesh-registry"
CTL="${BIN_DIR}/meshctl"

sha256_of() { sha256sum "$1" | awk '{print $1}'; }

verify_bins() {
  [[ -x "$REG" && -x "$CTL" ]] || return 1
  [[ "$(sha256_of "$REG")" == "$REGISTRY_SHA256" ]] || { log "checksum mismatch: $REG"; return 1; }
  [[ "$(sha256_of "$CTL")" == "$MESHCTL_SHA256" ]] || { log "checksum mismatch: $CTL"; return 1; }
  # Version banner: "MCP Mesh Registry v3.7.1"
  # Run with a clean environment: the binary logs some env overrides
  # (e.g. MCP_MESH_SWEEP_INTERVAL) before the banner.
  local v
  v="$(env -i PATH=/usr/bin:/bin "$REG" --version 2>&1 | grep -m1 'MCP Mesh Registry' || true)"
  [[ "$v" == "MCP Mesh Registry v${VERSION}" ]] || { log "unexpected version banner: '$v'"; return 1; }
  return 0
}

if verify_bins; then
  printf '%s\n' "$REG"
  exit 0
fi

log "fetching ${PKG} into ${CACHE_DIR}"
mkdir -p "$(dirname "$CACHE_DIR")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcpmesh-fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

( cd "$WORK" && npm pack --silent "$PKG" >/dev/null 2>"$WORK/npm.err" ) \
  || { cat "$WORK/npm.err" >&2; die "npm pack failed"; }
TGZ="$(ls "$WORK"/*.tgz 2>/dev/null | head -n1)"
[[ -n "$TGZ" ]] || die "npm pack produced no tarball"

got_sha1="$(sha1sum "$TGZ" | awk '{print $1}')"
[[ "$got_sha1" == "$TGZ_SHA1" ]] || die "tarball sha1 $got_sha1 != $TGZ_SHA1"
if command -v openssl >/dev/null 2>&1; then
  got_512="$(openssl dgst -sha512 -binary "$TGZ" | base64 -w0)"
  [[ "$got_512" == "$TGZ_SHA512_B64" ]] || die "tarball sha512 integrity mismatch"
fi

STAGE="${CACHE_DIR}.tmp.$$"
rm -rf "$STAGE"
mkdir -p "$STAGE"
tar -xzf "$TGZ" -C "$STAGE"
chmod 0755 "$STAGE"/package/bin/* 2>/dev/null || true
rm -rf "$CACHE_DIR"
mv "$STAGE" "$CACHE_DIR"

verify_bins || die "verification failed after unpack (see messages above)"
log "ok: $REG (v${VERSION}, sha256 verified)"
printf '%s\n' "$REG"
