package spire

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshtrust/meshtrust/internal/spiffetest"
)

func TestAddress(t *testing.T) {
	for _, tt := range []struct {
		name            string
		opt, mesh, std  string // WithSocket, MCP_MESH_SPIRE_SOCKET, SPIFFE_ENDPOINT_SOCKET
		want, wantError string
	}{
		{name: "default", want: "unix://" + DefaultSocket},
		{name: "mesh variable", mesh: "/run/a.sock", std: "unix:///run/b.sock", want: "unix:///run/a.sock"},
		{name: "SPIFFE variable", std: "unix:///run/b.sock", want: "unix:///run/b.sock"},
		{name: "option first", opt: "/run/o.sock", mesh: "/run/a.sock", want: "unix:///run/o.sock"},
		{name: "unix address", opt: "unix:///run/o.sock", want: "unix:///run/o.sock"},
		{name: "tcp address", opt: "tcp://127.0.0.1:8081", want: "tcp://127.0.0.1:8081"},
		{name: "path escaped", mesh: "/run/a b#c.sock", want: "unix:///run/a%20b%23c.sock"},
		{name: "relative path", mesh: "agent.sock", wantError: `"agent.sock" (from MCP_MESH_SPIRE_SOCKET)`},
		{name: "bad scheme", opt: "http://agent", wantError: `"http://agent" (from WithSocket)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvSocket, tt.mesh)
			t.Setenv(workloadapi.SocketEnv, tt.std)
			got, err := address(tt.opt)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("address: %q, %v; want an error saying %s", got, err, tt.wantError)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("address: %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestUpdate feeds updates to a source directly: what the agent sends
// again changes nothing, and an update without the own bundle is
// ignored.
func TestUpdate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.test")
	id := spiffeid.RequireFromPath(td, "/agent/a")
	ca := spiffetest.NewServer(t, "").CA(td)
	s := &Source{log: slog.New(slog.DiscardHandler), dropped: map[spiffeid.TrustDomain]bool{}}
	s.View = s.holder.View()
	svid := ca.IssueSVID(id)
	x509Context := func(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *workloadapi.X509Context {
		return &workloadapi.X509Context{SVIDs: []*x509svid.SVID{svid}, Bundles: x509bundle.NewSet(bundles...)}
	}

	s.update(x509Context(svid, ca.Bundle()))
	first, err := s.Current()
	if err != nil {
		t.Fatal(err)
	}
	changed := s.Changed()
	s.update(x509Context(svid, ca.Bundle())) // the same, in new values
	if c, _ := s.Current(); c != first {
		t.Fatal("the same SVID and bundle again replaced the credentials")
	}

	s.update(x509Context(ca.IssueSVID(id))) // no bundle for td
	if c, _ := s.Current(); c != first {
		t.Fatal("an update without the own trust domain's bundle replaced the credentials")
	}
	select {
	case <-changed:
		t.Fatal("Changed was closed though nothing changed")
	default:
	}

	s.update(x509Context(ca.IssueSVID(id), ca.Bundle()))
	if c, _ := s.Current(); c == first {
		t.Fatal("a new SVID did not replace the credentials")
	}
}
