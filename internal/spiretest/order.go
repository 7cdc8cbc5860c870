package spiretest

import (
	"fmt"
	"os"
	"testing"
)

// ThisProcess is the selector of the test binary's own entries: its uid,
// which the agent's unix workload attestor reports for it.
func ThisProcess() string { return fmt.Sprintf("unix:uid:%d", os.Getuid()) }

// CreateOrderedEntries registers each of spiffeIDs for the test binary
// (ThisProcess), with entry IDs that sort in the order given: the agent
// sends a workload's SVIDs in the order of their entry IDs, so the first
// of spiffeIDs is the Workload API's first SVID.
func (s *SPIRE) CreateOrderedEntries(t testing.TB, spiffeIDs ...string) {
	t.Helper()
	for i, id := range spiffeIDs {
		s.CreateEntryArgs(t, id, []string{ThisProcess()}, "-entryID", fmt.Sprintf("meshtrust-test-%03d", i+1))
	}
}

// StartForThisProcess starts SPIRE for trust domain td as Start does,
// registers spiffeIDs for the test binary in that order
// (CreateOrderedEntries), and points MCP_MESH_SPIRE_SOCKET at the agent
// for the rest of the test (t.Setenv): what a test of an agent's
// credential provider runs against.
func StartForThisProcess(t *testing.T, td string, spiffeIDs ...string) *SPIRE {
	t.Helper()
	s := Start(t, td)
	t.Setenv("MCP_MESH_SPIRE_SOCKET", s.AgentSocket)
	s.CreateOrderedEntries(t, spiffeIDs...)
	return s
}
