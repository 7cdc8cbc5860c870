package provider_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/provider"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
	"github.com/meshtrust/meshtrust/internal/tlstest"
)

// TestRealSPIREAgentsOwnSVID: a real SPIRE agent sends the workload two
// SVIDs, zed's first (its entry ID sorts first). With MCP_MESH_SPIFFE_ID
// an agent's source serves the ID named, whatever the agent's id; without
// it agent carol's source serves carol's (the path /agent/carol).
func TestRealSPIREAgentsOwnSVID(t *testing.T) {
	clearEnv(t)
	zed, carol := "spiffe://mcp-mesh.local/agent/zed", "spiffe://mcp-mesh.local/agent/carol"
	spiretest.StartForThisProcess(t, "mcp-mesh.local", zed, carol)

	from := func(agent string, want string) {
		t.Helper()
		// The agent learns of entries at its next sync (every 5 s): the
		// first answer may hold one of them only.
		ctx, cancel := context.WithTimeout(t.Context(), eventually.Bound)
		defer cancel()
		src, err := provider.FromEnv(ctx, agent, provider.WithProvider(provider.SPIRE))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		eventually.True(t, agent+"'s source serving "+want, func() bool {
			c, err := credentials.Wait(ctx, src)
			if err != nil {
				t.Fatal(err)
			}
			return c.Certificate.Leaf.URIs[0].String() == want
		})
	}
	// carol's entry was created after zed's: once the agent sends carol's
	// SVID it sends both.
	t.Setenv(provider.EnvSPIFFEID, carol)
	from("zed", carol)
	t.Setenv(provider.EnvSPIFFEID, zed)
	from("dan", zed)
	t.Setenv(provider.EnvSPIFFEID, "")
	from("carol", carol)
}

// TestRealSPIREReachesMeshCA: an agent on the spire provider, its SVID
// from a real SPIRE agent, reaches a meshd serving a mesh-CA certificate
// (a SPIFFE ID of the mesh CA's trust domain, which has no SPIRE bundle)
// once MCP_MESH_TLS_CA names the mesh CA, and not before; the mesh CA
// still cannot vouch for an ID of the SPIRE trust domain.
func TestRealSPIREReachesMeshCA(t *testing.T) {
	clearEnv(t)
	spiretest.StartForThisProcess(t, "mcp-mesh.local", "spiffe://mcp-mesh.local/agent/opus")
	mesh := pkitest.NewRoot(t, "mesh CA")
	meshd := tlstest.Serve(t, &tls.Config{Certificates: []tls.Certificate{
		mesh.Issue(t, "meshd.mesh", pkitest.Localhost(), pkitest.URI("spiffe://mesh.local/node/meshd")),
	}})
	impostor := tlstest.Serve(t, &tls.Config{Certificates: []tls.Certificate{
		mesh.Issue(t, "", pkitest.Localhost(), pkitest.URI("spiffe://mcp-mesh.local/agent/opus")),
	}})
	dial := func(srv *tlstest.Server) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), eventually.Bound)
		defer cancel()
		src, err := provider.FromEnv(ctx, "opus", provider.WithProvider(provider.SPIRE))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		c, _ := srv.Dial(t, credentials.ClientConfig(src, credentials.AuthorizeAny()))
		return c.Err
	}
	if err := dial(meshd); !errors.Is(err, credentials.ErrUntrusted) || !strings.Contains(err.Error(), `no bundle for trust domain "mesh.local"`) {
		t.Fatalf("without MCP_MESH_TLS_CA: %v, want no bundle for the mesh CA's trust domain", err)
	}
	t.Setenv(credentials.EnvCA, pkitest.WriteFile(t, t.TempDir(), "mesh-ca.pem", mesh.PEM()))
	if err := dial(meshd); err != nil {
		t.Fatalf("with MCP_MESH_TLS_CA naming the mesh CA: %v", err)
	}
	if err := dial(impostor); !errors.Is(err, credentials.ErrUntrusted) || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("the mesh CA vouching for an ID of the SPIRE trust domain: %v, want it refused", err)
	}
}
