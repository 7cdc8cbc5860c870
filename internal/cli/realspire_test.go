package cli_test

import (
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/spiretest"
)

// TestRealSPIREAgentRunShowsItsSVID: with a real SPIRE agent that sends
// the workload two SVIDs, zed's first, `meshctl agent run --agent-id
// carol --provider spire` uses carol's (the path /agent/carol), and
// --spiffe-id picks another; the log and the --json summary name the
// SVID used. No meshd listens: the command starts after --register-wait.
func TestRealSPIREAgentRunShowsItsSVID(t *testing.T) {
	clearAgentEnv(t)
	zed, carol := "spiffe://mcp-mesh.local/agent/zed", "spiffe://mcp-mesh.local/agent/carol"
	spiretest.StartForThisProcess(t, "mcp-mesh.local", zed, carol)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + l.Addr().String()
	l.Close() // nothing listens there: the heartbeat keeps retrying

	run := func(want string, flags ...string) {
		t.Helper()
		args := append([]string{"--json", "--provider", "spire", "--registry-url", url, "--register-wait", "1ms"}, flags...)
		// It exits 1: the command's 0, but deregistering failed.
		r := startSidecar(t, append(args, "--", "true")...).result(t)
		var sum struct {
			ExitStatus int    `json:"exit_status"`
			SPIFFEID   string `json:"spiffe_id"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil || sum.SPIFFEID != want || sum.ExitStatus != 0 {
			t.Fatalf("summary %q (%v), want the command's status 0 and spiffe_id %s\n%s", r.stdout, err, want, r.stderr)
		}
		if !strings.Contains(r.stderr, `"msg":"credentials ready"`) || !strings.Contains(r.stderr, `"spiffe_id":"`+want+`"`) {
			t.Fatalf("the log does not name the SVID used, %s:\n%s", want, r.stderr)
		}
	}
	// carol's entry was created after zed's: once the agent sends carol's
	// SVID it sends both.
	run(carol, "--agent-id", "zed", "--spiffe-id", carol)
	run(carol, "--agent-id", "carol")
	t.Setenv("MCP_MESH_SPIFFE_ID", zed)
	run(zed, "--agent-id", "carol")
}
