package provider_test

import (
	"context"
	"testing"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/provider"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/spiretest"
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
