package rekey

import (
	"testing"
	"time"
)

// TestRekeySmoke is the harness at 20 nodes of 2 agents, so that it
// cannot rot: every node and agent re-keys onto the new intermediate
// after the taint, no heartbeat is refused, and the old intermediate
// then revokes without --force: the fleet's old certificates are
// superseded and meshd re-issued its own serving certificate.
func TestRekeySmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts meshd and a fleet of 60 clients")
	}
	res, err := Run(t.Context(), t.TempDir(), Config{Nodes: 20, Agents: 2, Interval: 200 * time.Millisecond, TaintWindow: 2 * time.Second, Parallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	if res.Refused != 0 {
		t.Errorf("%d heartbeats refused while the fleet re-keyed", res.Refused)
	}
	if res.Heartbeats == 0 || res.Renewals < 20 {
		t.Errorf("heartbeats %d, renewals %d: the fleet did not run", res.Heartbeats, res.Renewals)
	}
	if res.Rekeyed != 20*3 {
		t.Errorf("%d certificates re-keyed onto the new intermediate, want 60", res.Rekeyed)
	}
	if !res.Revoked {
		t.Errorf("revoking the old intermediate without --force was refused: %s", res.RevokeErr)
	}
}
