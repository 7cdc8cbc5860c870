package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/ca/catest"
	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/meshapi"
)

// wait bounds every wait for something that should happen at once.
const wait = 10 * time.Second

// pki is a mesh CA with its store, in a short directory (meshd's admin
// socket path must fit in 108 bytes, and t.TempDir's often does not).
type pki struct {
	t   *testing.T
	dir string
	ca  *ca.CA
	st  *sqlstore.Store
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir, err := os.MkdirTemp("", "agt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_, st, authority := catest.New(t, dir, time.Now())
	t.Cleanup(func() { st.Close() })
	return &pki{t: t, dir: dir, ca: authority, st: st}
}

// load reads the certificate and key the CA issued for cn.
func (p *pki) load(cn string) tls.Certificate {
	p.t.Helper()
	c := p.ca.Config()
	cert, err := tls.LoadX509KeyPair(c.IssuedCertPath(cn), c.IssuedKeyPath(cn))
	if err != nil {
		p.t.Fatal(err)
	}
	return cert
}

// agent issues (or renews, with the same key) agent@node's certificate
// and returns it as credentials trusting the mesh root.
func (p *pki) agent(agent, node string) *credentials.Credentials {
	p.t.Helper()
	is, err := p.ca.Sign(context.Background(), ca.AgentRequest(agent, node), ca.WithGeneratedKey())
	if err != nil {
		p.t.Fatal(err)
	}
	return &credentials.Credentials{Certificate: p.load(is.Cert.Subject.CommonName), Roots: []*x509.Certificate{p.ca.Root()}}
}

// node issues node's certificate (server and client), as credentials
// trusting the mesh root: the mesh CA's agent certificates are for clients
// only, so an agent's server presents its node's.
func (p *pki) node(node string) *credentials.Credentials {
	p.t.Helper()
	is, err := p.ca.Sign(context.Background(), ca.NodeRequest(node, "IP:127.0.0.1"), ca.WithGeneratedKey())
	if err != nil {
		p.t.Fatal(err)
	}
	return &credentials.Credentials{Certificate: p.load(is.Cert.Subject.CommonName), Roots: []*x509.Certificate{p.ca.Root()}}
}

// holder is a Source that starts with c.
func holder(t *testing.T, c *credentials.Credentials) *credentials.Holder {
	t.Helper()
	h := new(credentials.Holder)
	if err := h.Set(c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// testMeshd is a real meshd over the pki, in TLS mode strict with the localca
// backend, its admin API on a unix socket.
type testMeshd struct {
	*pki
	url   string
	admin *http.Client
}

// startMeshd starts meshd with a heartbeat timeout of timeout (0: its
// default), and stops it when the test ends.
func (p *pki) startMeshd(timeout time.Duration) *testMeshd {
	p.t.Helper()
	ctx := context.Background()
	node, err := p.ca.Sign(ctx, ca.NodeRequest("meshd", "localhost", "IP:127.0.0.1"), ca.WithGeneratedKey())
	if err != nil {
		p.t.Fatal(err)
	}
	cn, c := node.Cert.Subject.CommonName, p.ca.Config()
	sock := filepath.Join(p.dir, "admin.sock")
	srv, err := meshd.New(ctx, meshd.Config{Config: server.Config{Listen: "127.0.0.1:0", AdminSocket: sock, TLSMode: server.TLSStrict,
		CertFile: c.IssuedCertPath(cn), KeyFile: c.IssuedKeyPath(cn), Logger: slog.New(slog.DiscardHandler)}, Backends: []string{meshd.BackendLocalCA}, HeartbeatTimeout: timeout, RevocationPoll: 20 * time.Millisecond}, p.st, p.ca)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			p.t.Errorf("meshd shutdown: %v", err)
		}
	})
	admin := &http.Client{Timeout: wait, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return &testMeshd{pki: p, url: "https://" + srv.AgentAddr(), admin: admin}
}

// adminCall calls the admin API and decodes its 200 answer into out.
func (m *testMeshd) adminCall(method, path string, in, out any) {
	m.t.Helper()
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			m.t.Fatal(err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://meshd"+path, body)
	if err != nil {
		m.t.Fatal(err)
	}
	resp, err := m.admin.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		m.t.Fatalf("%s %s: %s: %s", method, path, resp.Status, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			m.t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
}

// listed is an agent as GET /agents lists it.
type listed struct {
	ID        string    `json:"id"`
	Status    string    `json:"status"`
	Reason    string    `json:"reason"`
	Owner     string    `json:"owner"`
	Endpoint  string    `json:"endpoint"`
	CreatedAt time.Time `json:"created_at"`
	LastSeen  time.Time `json:"last_seen"`
}

// agents returns meshd's agents by id.
func (m *testMeshd) agents() map[string]listed {
	m.t.Helper()
	var out struct {
		Agents []listed `json:"agents"`
	}
	m.adminCall(http.MethodGet, meshapi.PathAdminAgents, nil, &out)
	byID := make(map[string]listed)
	for _, a := range out.Agents {
		byID[a.ID] = a
	}
	return byID
}

// storedSerial is the certificate serial meshd's store holds for agent id.
func (m *testMeshd) storedSerial(id string) string {
	m.t.Helper()
	agents, err := m.st.Agents(context.Background())
	if err != nil {
		m.t.Fatal(err)
	}
	for _, a := range agents {
		if a.ID == id {
			return a.CertSerial
		}
	}
	m.t.Fatalf("no agent %q in the store", id)
	return ""
}

func (m *testMeshd) rotate() {
	m.t.Helper()
	var out meshapi.RotateResponse
	m.adminCall(http.MethodPost, meshapi.PathAdminRotate, nil, &out)
}

func (m *testMeshd) revoke(serial string) {
	m.t.Helper()
	m.adminCall(http.MethodPost, meshapi.PathAdminRevoke, meshapi.RevokeRequest{Target: serial, Reason: "keyCompromise"}, nil)
}

// fakeClock is the tests' manual clock.
type fakeClock = clocktest.Clock

func newFakeClock() *fakeClock { return clocktest.New(time.Date(2026, 11, 21, 22, 0, 0, 0, time.UTC)) }
