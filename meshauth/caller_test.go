package meshauth_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/meshauth"
)

func TestAgentID(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct {
		name    string
		leaf    tlsCert
		want    string
		wantErr string // substring of the error; "" when an id is returned
	}{
		{name: "mesh agent", leaf: agentOf(t, w.mesh, "opus", "ct111"), want: "opus"},
		{name: "mesh node", leaf: leafOf(t, w.mesh, "ct111.mesh", "spiffe://mesh.local/node/ct111", "ct111.mesh"), wantErr: "node certificate"},
		{name: "mesh external user", leaf: leafOf(t, w.mesh, "alice@external", "spiffe://mesh.local/external/alice"), wantErr: "external certificate"},
		// A partner's ids are its namespace in meshd's registry, which
		// meshauth does not hold: here its certificates speak for none.
		{name: "entity certificate with a plain CN", leaf: leafOf(t, w.partner, "scout", ""), wantErr: "speaks for no agent"},
		{name: "entity certificate named like a mesh agent", leaf: leafOf(t, w.partner, "scout@dc1", ""), wantErr: "speaks for no agent"},
		{name: "entity certificate named like a mesh node", leaf: leafOf(t, w.partner, "dc1.mesh", ""), wantErr: "node certificate"},
		{name: "entity certificate with an invalid CN", leaf: leafOf(t, w.partner, "Scout Agent", ""), wantErr: "does not name an agent"},
		{name: "entity certificate with an empty CN", leaf: leafOf(t, w.partner, "", ""), wantErr: "does not name an agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := w.chain.Verify(context.Background(), []*x509.Certificate{tc.leaf.Leaf})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			got, err := meshauth.CallerFromPeer(p).AgentID()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("AgentID = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("AgentID = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := meshauth.AgentID(nil); err == nil {
		t.Fatal("no certificate spoke for an agent")
	}
}
