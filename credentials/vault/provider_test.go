package vault_test

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/provider"
	"github.com/meshtrust/meshtrust/credentials/vault"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/tlstest"
)

// TestProviderReachesMeshCA: an agent on the vault provider, its
// certificate from a real Vault over https, reaches a meshd serving a
// mesh-CA certificate once MCP_MESH_TLS_CA holds the mesh CA beside
// Vault's own CA (which verifies Vault), and not with Vault's CA alone.
func TestProviderReachesMeshCA(t *testing.T) {
	v := startVault(t, true)
	log, _ := newLog(t, v.rootToken)
	for k, val := range map[string]string{vault.EnvAddr: v.addr, vault.EnvPKIPath: v.pkiPath, vault.EnvToken: v.rootToken, vault.EnvTTL: "", vault.EnvTrustDomain: ""} {
		t.Setenv(k, val)
	}
	vaultCA, err := os.ReadFile(v.caCert)
	if err != nil {
		t.Fatal(err)
	}
	mesh := pkitest.NewRoot(t, "mesh CA")
	meshd := tlstest.Serve(t, &tls.Config{Certificates: []tls.Certificate{
		mesh.Issue(t, "meshd.mesh", pkitest.Localhost(), pkitest.URI("spiffe://mesh.local/node/meshd")),
	}})
	dial := func(bundle []byte) error {
		t.Helper()
		t.Setenv(credentials.EnvCA, pkitest.WriteFile(t, t.TempDir(), "ca.pem", bundle))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		src, err := provider.FromEnv(ctx, "alpha", provider.WithProvider(provider.Vault), provider.WithLogger(log))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		c, _ := meshd.Dial(t, credentials.ClientConfig(src, credentials.AuthorizeIdentity("meshd.mesh")))
		return c.Err
	}
	if err := dial(vaultCA); !errors.Is(err, credentials.ErrUntrusted) || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("with Vault's CA alone: %v, want meshd's certificate refused", err)
	}
	if err := dial(append(vaultCA, mesh.PEM()...)); err != nil {
		t.Fatalf("with the mesh CA added: %v", err)
	}
}
