package spire_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
)

// TestRealSPIREFirstSVID: against a real SPIRE server and agent, a
// workload registered by its uid gets its X.509-SVID through the source,
// and the SVID carries its identity as a URI SAN only, with no common
// name (what meshd's default spire binding must admit).
func TestRealSPIREFirstSVID(t *testing.T) {
	s := spiretest.Start(t, "mcp-mesh.local")
	id := "spiffe://mcp-mesh.local/agent/carol"
	s.CreateEntry(t, id, fmt.Sprintf("unix:uid:%d", os.Getuid()))
	// The agent learns of the entry at its next sync (every 5 s).
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	src, err := spire.New(ctx, spire.WithSocket(s.AgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	leaf := sourcetest.Current(t, src).Certificate.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("SVID URIs %v, want [%s]", leaf.URIs, id)
	}
	if leaf.Subject.CommonName != "" {
		t.Errorf("SPIRE set common name %q on an entry without -dns; the admission tests assume none", leaf.Subject.CommonName)
	}
}
