#!/bin/sh
# Vault's PKI as MCP Mesh's integration test sets it up (the same steps as
# scripts/vault.sh): a root in pki, an intermediate in pki_int signed by
# it, role mesh-agent for names under mcp-mesh.local. The root goes to
# /trust, meshd's trust directory. Idempotent: a second run keeps what the
# first made.
set -eu
if vault secrets list | grep -q '^pki_int/'; then
	echo "vault-setup: already set up"
	exit 0
fi
vault secrets enable pki
vault secrets tune -max-lease-ttl=87600h pki
vault write -field=certificate pki/root/generate/internal common_name="mesh compose root CA" ttl=87600h >/trust/vault-root.pem
vault secrets enable -path=pki_int pki
vault secrets tune -max-lease-ttl=43800h pki_int
vault write -field=csr pki_int/intermediate/generate/internal common_name="mesh compose intermediate CA" >/tmp/pki_int.csr
vault write -field=certificate pki/root/sign-intermediate csr=@/tmp/pki_int.csr format=pem_bundle ttl=43800h >/tmp/pki_int.pem
vault write pki_int/intermediate/set-signed certificate=@/tmp/pki_int.pem
vault write pki_int/roles/mesh-agent allowed_domains=mcp-mesh.local allow_subdomains=true allow_ip_sans=true max_ttl=72h
echo "vault-setup: PKI ready; root CA in /trust/vault-root.pem"
