package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/spiretest"
)

// TestRealSPIREAgentOnMeshCAMeshd: what issue 21's user hit, end to end.
// meshd serves its --dev mesh-CA certificate (no SVID copied into
// --tls-cert) on the spire backend, and the SPIRE agent sends meshctl two
// SVIDs, zed's first (its entry ID sorts first). `meshctl agent run
// --agent-id carol --provider spire` with MCP_MESH_TLS_CA naming the mesh
// CA reaches meshd and registers as carol with carol's SVID, not zed's.
func TestRealSPIREAgentOnMeshCAMeshd(t *testing.T) {
	bin := buildBinaries(t)
	s := spiretest.Start(t, meshTD)
	registerMeshd(t, s, bin)
	meshctl := []string{pathSelector(filepath.Join(bin, "meshctl"))}
	// carol's entry first: should the SPIRE agent sync between the two,
	// meshctl's first answer holds carol's alone, never zed's alone.
	s.CreateEntryArgs(t, "spiffe://"+meshTD+"/agent/carol", meshctl, "-entryID", "meshtrust-test-002")
	s.CreateEntryArgs(t, "spiffe://"+meshTD+"/agent/zed", meshctl, "-entryID", "meshtrust-test-001")
	data := filepath.Join(t.TempDir(), "data")
	r := startReplica(t, bin, "spire-dev", data, filepath.Join(data, "meshtrust.db"),
		"--dev", "--trust-backend", "spire", "--spire-socket", s.AgentSocket, "--heartbeat-interval", "2s")
	m := &spireMeshd{replica: r, s: s}
	meshCA := "MCP_MESH_TLS_CA=" + filepath.Join(data, "ca", "intermediate", "root.crt")
	a := startAgentRun(t, bin, m, "carol", meshCA)
	eventually.TrueWithin(t, time.Minute, "carol registered", func() bool {
		a.mustRun(t)
		return m.agents(t)["carol"].Status == "healthy"
	})
	if got := m.agents(t)["carol"].Owner; got != "spiffe://"+meshTD+"/agent/carol" {
		t.Errorf("carol is owned by %q, want carol's SVID", got)
	}
	if out := a.out.String(); !strings.Contains(out, `msg="credentials ready" agent=carol subject="" spiffe_id=spiffe://`+meshTD+`/agent/carol`) {
		t.Errorf("meshctl's log does not name carol's SVID as the one it presents:\n%s", out)
	}
}
