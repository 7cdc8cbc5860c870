package cli_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/trust"
)

// testMeshd is a real meshd server running in the test process over the
// env's CA, with its admin socket in dataDir and an mTLS admin listener.
type testMeshd struct {
	*env
	dataDir   string
	srv       *meshd.Meshd
	rootCAs   *x509.CertPool
	agentAddr string
}

// startMeshd creates the mesh CA with meshctl, a server certificate for
// meshd and the admin@external certificate, and starts meshd in strict
// TLS mode with the localca backend (registered entities are always
// trusted too). opts adjust meshd's configuration.
func startMeshd(t *testing.T, opts ...func(*meshd.Config)) *testMeshd {
	t.Helper()
	noAdminEnv(t)
	e := newEnv(t)
	e.initCA()
	e.mustRun("ca", "issue-node", "meshd", "localhost", "IP:127.0.0.1")
	e.mustRun("ca", "issue-client", "admin")

	// A unix socket path must fit in 108 bytes; t.TempDir can be longer.
	dataDir, err := os.MkdirTemp("", "mtcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })

	ctx := context.Background()
	cfg := ca.Config{RootDir: e.root, Dir: e.caDir, TrustDomain: "mesh.local"}
	st, err := sqlstore.OpenSQLite(ctx, cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.Open(ctx, cfg, st)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	mcfg := meshd.Config{Config: server.Config{Listen: "127.0.0.1:0",
		AdminSocket: filepath.Join(dataDir, "admin.sock"),
		AdminListen: "127.0.0.1:0",
		TLSMode:     server.TLSStrict,
		CertFile:    e.issued("meshd.mesh"),
		KeyFile:     e.issuedKey("meshd.mesh"),
		Logger:      slog.New(slog.DiscardHandler)}, Backends: []string{meshd.BackendLocalCA}}
	for _, o := range opts {
		o(&mcfg)
	}
	srv, err := meshd.New(ctx, mcfg, st, authority)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		st.Close()
	})
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(e.root, "ca.crt")))
	return &testMeshd{env: e, dataDir: dataDir, srv: srv, rootCAs: roots, agentAddr: srv.AgentAddr()}
}

// noAdminEnv keeps the caller's environment from pointing meshctl at some
// other meshd.
func noAdminEnv(t *testing.T) {
	for _, k := range []string{"MESHTRUST_DATA_DIR", "MESHTRUST_ADMIN_URL", "MESHTRUST_ADMIN_CERT", "MESHTRUST_ADMIN_KEY", "MESHTRUST_ADMIN_CACERT"} {
		t.Setenv(k, "")
	}
}

// ctl runs meshctl against the running meshd's admin socket.
func (m *testMeshd) ctl(args ...string) result {
	m.t.Helper()
	return m.run(withFlags(args, "--data-dir", m.dataDir)...)
}

// mustCtl is ctl, failing the test unless meshctl exits 0.
func (m *testMeshd) mustCtl(args ...string) result {
	m.t.Helper()
	return m.mustRun(withFlags(args, "--data-dir", m.dataDir)...)
}

// requireRefused checks a command failed with a message on stderr only.
func requireRefused(t *testing.T, what string, r result, wants ...string) {
	t.Helper()
	if r.code == 0 {
		t.Errorf("%s: exit 0, want a refusal\n%s", what, r.output())
		return
	}
	if r.stdout != "" {
		t.Errorf("%s: a refusal printed to stdout:\n%s", what, r.stdout)
	}
	requireContains(t, what+": stderr", r.stderr, wants...)
}

// partnerCA is an entity's own CA, outside the mesh CA.
type partnerCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func randomSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// newPartnerCA writes a self-signed CA valid from nb to na (or a leaf,
// when isCA is false) into the env's directory.
func (e *env) newPartnerCA(name, org string, nb, na time.Time, isCA bool) *partnerCA {
	e.t.Helper()
	key := pkitest.NewKey(e.t)
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(e.t), Subject: pkix.Name{CommonName: name + " CA", Organization: []string{org}},
		NotBefore: nb, NotAfter: na, BasicConstraintsValid: true, IsCA: isCA,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		e.t.Fatal(err)
	}
	file := e.write(name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return &partnerCA{cert: cert, key: key, file: file}
}

func (e *env) validCA(name string) *partnerCA {
	now := time.Now()
	return e.newPartnerCA(name, name, now.Add(-time.Hour), now.Add(30*24*time.Hour), true)
}

// agentCert issues an agent's client certificate with CN cn.
func (p *partnerCA) agentCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key := pkitest.NewKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// agentClient is an HTTPS client of the agent port presenting cert.
func (m *testMeshd) agentClient(cert tls.Certificate) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: m.rootCAs, Certificates: []tls.Certificate{cert}, ServerName: "localhost"}}
	m.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// heartbeat registers agentID through the agent port and returns the
// status code.
func (m *testMeshd) heartbeat(c *http.Client, agentID string) int {
	m.t.Helper()
	body := `{"agent_id":"` + agentID + `","name":"` + agentID + `"}`
	resp, err := c.Post("https://"+m.agentAddr+"/heartbeat", "application/json", strings.NewReader(body))
	if err != nil {
		m.t.Fatalf("heartbeat %s: %v", agentID, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// refusedOnOpenConn checks a heartbeat on a keep-alive connection opened
// before the agent's certificate was revoked: meshd answers 403, or has
// already closed the connection (it closes a revoked certificate's
// connections as it applies the revocation, and a POST is not retried on a
// closed idle connection), and either is a refusal.
func (m *testMeshd) refusedOnOpenConn(c *http.Client, agentID string) {
	m.t.Helper()
	body := `{"agent_id":"` + agentID + `","name":"` + agentID + `"}`
	resp, err := c.Post("https://"+m.agentAddr+"/heartbeat", "application/json", strings.NewReader(body))
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			m.t.Errorf("heartbeat %s on its open connection after revoke: %v, want 403 or the connection closed", agentID, err)
		}
		return
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusForbidden {
		m.t.Errorf("heartbeat %s on its open connection after revoke: %d, want 403", agentID, resp.StatusCode)
	}
}

func (m *testMeshd) mustHeartbeat(c *http.Client, agentID string) {
	m.t.Helper()
	if code := m.heartbeat(c, agentID); code != http.StatusOK {
		m.t.Fatalf("heartbeat %s: %d, want 200", agentID, code)
	}
}

// agents lists the agents meshd holds, as its admin API's GET
// /admin/agents shows them.
func (m *testMeshd) agents() []registry.View {
	m.t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(m.dataDir, "admin.sock"))
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://meshd/admin/agents")
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Agents []registry.View `json:"agents"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
		m.t.Fatalf("GET /admin/agents: %s, %v", resp.Status, err)
	}
	return list.Agents
}

// entityRow is one entity of `entity list --json`.
type entityRow struct {
	Name        string     `json:"name"`
	Subject     string     `json:"subject"`
	Expires     string     `json:"expires"`
	NotAfter    time.Time  `json:"not_after"`
	Fingerprint string     `json:"fingerprint_sha256"`
	Source      string     `json:"source"`
	Status      string     `json:"status"`
	RevokedAt   *time.Time `json:"revoked_at"`
	Agents      int        `json:"agents"`
	Namespace   string     `json:"namespace"`
}

func (m *testMeshd) entities() map[string]entityRow {
	m.t.Helper()
	r := m.mustCtl("entity", "list", "--json")
	var out struct {
		Entities []entityRow `json:"entities"`
	}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		m.t.Fatalf("entity list --json: %v\n%s", err, r.stdout)
	}
	rows := map[string]entityRow{}
	for _, e := range out.Entities {
		rows[e.Name] = e
	}
	return rows
}

// TestEntityRegister: register checks the file locally, then meshd
// records the entity; a second registration needs --force, and one CA
// belongs to one entity.
func TestEntityRegister(t *testing.T) {
	m := startMeshd(t)
	now := time.Now()
	acme := m.validCA("acme")
	acme2 := m.validCA("acme2")
	leaf := m.newPartnerCA("leaf", "acme", now.Add(-time.Hour), now.Add(time.Hour), false)
	expired := m.newPartnerCA("expired", "acme", now.Add(-48*time.Hour), now.Add(-24*time.Hour), true)
	future := m.newPartnerCA("future", "acme", now.Add(24*time.Hour), now.Add(48*time.Hour), true)
	junk := m.write("junk.pem", []byte("not a certificate\n"))

	r := m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file)
	requireContains(t, "register", r.stdout, "Entity 'acme' registered", acme.cert.Subject.String(), acme.cert.NotAfter.UTC().Format("2006-01-02"))
	if got := m.entities()["acme"]; got.Subject != acme.cert.Subject.String() || got.Status != "active" || got.Source != "meshd" {
		t.Errorf("after register: %+v", got)
	}

	requireRefused(t, "duplicate", m.ctl("entity", "register", "acme", "--ca-cert", acme2.file), `entity "acme" is already registered`, "--force")
	if got := m.entities()["acme"]; got.Subject != acme.cert.Subject.String() {
		t.Errorf("a refused duplicate replaced the CA: %+v", got)
	}

	r = m.mustCtl("entity", "register", "acme", "--ca-cert", acme2.file, "--force", "--json")
	var reg map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &reg); err != nil {
		t.Fatalf("register --json: %v\n%s", err, r.stdout)
	}
	if reg["name"] != "acme" || reg["subject"] != acme2.cert.Subject.String() || reg["fingerprint_sha256"] != trust.Fingerprint(acme2.cert) {
		t.Errorf("register --json: %v", reg)
	}
	if got := m.entities()["acme"]; got.Subject != acme2.cert.Subject.String() || got.Fingerprint != trust.Fingerprint(acme2.cert) {
		t.Errorf("--force did not replace the CA: %+v", got)
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"not a CA", []string{"register", "leafy", "--ca-cert", leaf.file}, []string{"is not a CA certificate (BasicConstraints CA flag not set)"}},
		{"expired", []string{"register", "old", "--ca-cert", expired.file}, []string{"has expired (expired " + expired.cert.NotAfter.UTC().Format("2006-01-02")}},
		{"not yet valid", []string{"register", "early", "--ca-cert", future.file}, []string{"is not yet valid"}},
		{"not PEM", []string{"register", "junk", "--ca-cert", junk}, []string{"no CERTIFICATE PEM blocks found in " + junk}},
		{"missing file", []string{"register", "gone", "--ca-cert", filepath.Join(m.base, "nope.pem")}, []string{"failed to read CA cert file"}},
		{"no --ca-cert", []string{"register", "bare"}, []string{`"ca-cert" not set`}},
		{"bad name", []string{"register", "Bad Name!", "--ca-cert", acme.file}, []string{"entity name"}},
		{"same CA, other name", []string{"register", "acme-again", "--ca-cert", acme2.file}, []string{`already registered as entity "acme"`}},
		{"MCP Mesh's --trust-dir", []string{"register", "other", "--ca-cert", acme.file, "--trust-dir", m.base}, []string{"meshd keeps entities in its store"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireRefused(t, tc.name, m.ctl(append([]string{"entity"}, tc.args...)...), tc.want...)
		})
	}
	if got := m.entities(); len(got) != 1 {
		t.Errorf("refused registrations left entities: %v", got)
	}

	// The local checks run before meshctl looks for meshd.
	nowhere := t.TempDir()
	r = m.run("entity", "register", "old", "--ca-cert", expired.file, "--data-dir", nowhere)
	requireRefused(t, "expired, no meshd", r, "has expired")
	if strings.Contains(r.stderr, "cannot reach") {
		t.Errorf("expired CA was not refused locally: %s", r.stderr)
	}
}

// TestEntityList: the JSON is meshd's; the table has one row per entity
// with its status, source and live agents.
func TestEntityList(t *testing.T) {
	m := startMeshd(t)
	if r := m.mustCtl("entity", "list"); !strings.Contains(r.stdout, "No trusted entities registered") {
		t.Errorf("empty list: %q", r.stdout)
	}
	r := m.mustCtl("entity", "list", "--json")
	if strings.Join(strings.Fields(r.stdout), "") != `{"entities":[]}` {
		t.Errorf("empty list --json: %q", r.stdout)
	}

	acme, beta := m.validCA("acme"), m.validCA("beta")
	m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file)
	m.mustCtl("entity", "register", "beta", "--ca-cert", beta.file)
	m.mustHeartbeat(m.agentClient(acme.agentCert(t, "acme-one")), "acme-one")
	m.mustHeartbeat(m.agentClient(acme.agentCert(t, "acme-two")), "acme-two")

	rows := m.entities() // decoded strictly: every field is known
	if len(rows) != 2 {
		t.Errorf("list: %v", rows)
	}
	for _, w := range []struct {
		name   string
		ca     *partnerCA
		agents int
	}{{"acme", acme, 2}, {"beta", beta, 0}} {
		got := rows[w.name]
		want := entityRow{Name: w.name, Subject: w.ca.cert.Subject.String(), Expires: w.ca.cert.NotAfter.UTC().Format("2006-01-02"),
			NotAfter: got.NotAfter, Fingerprint: trust.Fingerprint(w.ca.cert), Source: "meshd", Status: "active", Agents: w.agents, Namespace: "prefix"}
		if got != want || !got.NotAfter.Equal(w.ca.cert.NotAfter) {
			t.Errorf("entity %s:\n got %+v\nwant %+v (not_after %v)", w.name, got, want, w.ca.cert.NotAfter)
		}
	}

	r = m.mustCtl("entity", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("table: %q", r.stdout)
	}
	if got := strings.Fields(lines[0]); !slices.Equal(got, []string{"NAME", "STATUS", "SOURCE", "AGENTS", "NAMESPACE", "SUBJECT", "EXPIRES"}) {
		t.Errorf("header %q", lines[0])
	}
	for i, e := range []struct {
		ca     *partnerCA
		name   string
		agents string
	}{{acme, "acme", "2"}, {beta, "beta", "0"}} {
		f := strings.Fields(lines[i+1])
		exp := e.ca.cert.NotAfter.UTC().Format("2006-01-02")
		if len(f) < 6 || f[0] != e.name || f[1] != "active" || f[2] != "meshd" || f[3] != e.agents || f[len(f)-1] != exp ||
			!strings.Contains(lines[i+1], e.ca.cert.Subject.String()) {
			t.Errorf("row %d: %q", i+1, lines[i+1])
		}
	}
}

// TestEntityRevoke: without --force nothing is sent; with it meshd
// revokes, evicts the entity's agents and refuses their certificates.
func TestEntityRevoke(t *testing.T) {
	m := startMeshd(t)
	acme := m.validCA("acme")
	m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file)
	agent := m.agentClient(acme.agentCert(t, "acme-one"))
	m.mustHeartbeat(agent, "acme-one")

	r := m.ctl("entity", "revoke", "acme")
	requireRefused(t, "revoke without --force", r, "Revoking entity 'acme' will:", "Evict the entity's agents", "use --force to confirm revocation")
	if got := m.entities()["acme"]; got.Status != "active" || got.Agents != 1 {
		t.Errorf("revoke without --force changed the entity: %+v", got)
	}
	m.mustHeartbeat(agent, "acme-one")

	r = m.mustCtl("entity", "revoke", "acme", "--force")
	requireContains(t, "revoke", r.stdout, "Entity 'acme' revoked; 1 agent(s) evicted", "connection(s) closed")
	if got := m.entities()["acme"]; got.Status != "revoked" || got.RevokedAt == nil || got.Agents != 0 {
		t.Errorf("after revoke: %+v", got)
	}
	// At once, without waiting for a heartbeat timeout.
	m.refusedOnOpenConn(agent, "acme-one")
	if code := m.heartbeat(m.agentClient(acme.agentCert(t, "acme-two")), "acme-two"); code != http.StatusForbidden {
		t.Errorf("new agent of a revoked entity: %d, want 403", code)
	}

	requireRefused(t, "unknown entity", m.ctl("entity", "revoke", "nobody", "--force"), `no entity "nobody"`)

	// Registering again undoes the revocation.
	m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file)
	if got := m.entities()["acme"]; got.Status != "active" {
		t.Errorf("re-registered: %+v", got)
	}
}

// TestEntityRotate: rotate reports how many agents must re-register.
func TestEntityRotate(t *testing.T) {
	m := startMeshd(t)
	acme, beta := m.validCA("acme"), m.validCA("beta")
	m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file)
	m.mustCtl("entity", "register", "beta", "--ca-cert", beta.file)
	for _, id := range []string{"acme-one", "acme-two"} {
		m.mustHeartbeat(m.agentClient(acme.agentCert(t, id)), id)
	}
	m.mustHeartbeat(m.agentClient(beta.agentCert(t, "beta-one")), "beta-one")

	r := m.mustCtl("entity", "rotate", "acme")
	requireContains(t, "rotate acme", r.stdout, "Rotation triggered for entity 'acme': 2 agent(s) will re-register on next heartbeat")
	r = m.mustCtl("entity", "rotate")
	requireContains(t, "rotate", r.stdout, "Rotation triggered for all entities: 3 agent(s) will re-register on next heartbeat")

	r = m.mustCtl("entity", "rotate", "beta", "--json")
	var out struct {
		Affected int    `json:"affected_agents"`
		EntityID string `json:"entity_id"`
		Message  string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Affected != 1 || out.EntityID != "beta" || out.Message == "" {
		t.Errorf("rotate --json: %+v, %v\n%s", out, err, r.stdout)
	}
	requireRefused(t, "rotate unknown", m.ctl("entity", "rotate", "nobody"), `no entity "nobody"`)
	requireRefused(t, "rotate --registry-url", m.ctl("entity", "rotate", "--registry-url", "http://localhost:8000"), "--data-dir or --admin-url")
}

// TestAdminUnreachable: without a meshd the message says where meshctl
// looked and what to check.
func TestAdminUnreachable(t *testing.T) {
	noAdminEnv(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	for _, args := range [][]string{
		{"entity", "list"},
		{"entity", "rotate"},
		{"entity", "revoke", "acme", "--force"},
		{"ca", "revoke", "hello@dev1"},
	} {
		r := execute(t, append(args, "--data-dir", dir)...)
		requireRefused(t, strings.Join(args, " "), r,
			"cannot reach meshd's admin API at "+sock+": is meshd running with --data-dir "+dir+"? (or pass --admin-url)")
	}
	requireRefused(t, "no data dir", execute(t, "entity", "list"), "--data-dir", "--admin-url")
	requireRefused(t, "plain http", execute(t, "entity", "list", "--admin-url", "http://127.0.0.1:1"), "mTLS only")
}

// TestAdminOverMTLS: --admin-url reaches the same API with an admin
// identity's certificate; other mesh certificates are refused.
func TestAdminOverMTLS(t *testing.T) {
	m := startMeshd(t)
	m.mustRun("ca", "issue-agent", "hello", "dev1")
	acme := m.validCA("acme")
	url := "https://" + m.srv.AdminTLSAddr()
	admin := []string{"--admin-url", url, "--cert", m.issued("admin@external"), "--key", m.issuedKey("admin@external")}

	r := m.run(append([]string{"entity", "register", "acme", "--ca-cert", acme.file}, admin...)...)
	if r.code != 0 {
		t.Fatalf("register over mTLS: exit %d\n%s", r.code, r.output())
	}
	if got := m.entities()["acme"]; got.Status != "active" {
		t.Errorf("entity registered over mTLS not listed on the socket: %+v", got)
	}
	agent := []string{"--admin-url", url, "--cert", m.issued("hello@dev1"), "--key", m.issuedKey("hello@dev1")}
	requireRefused(t, "agent cert as admin", m.run(append([]string{"entity", "list"}, agent...)...), "hello@dev1 may not call GET /admin/entities (default deny)")
	both := append([]string{"entity", "list", "--data-dir", m.dataDir}, admin...)
	requireRefused(t, "both endpoints", m.run(both...), "not both")
}

// TestCARevokeViaAdmin: with --data-dir, `ca revoke` goes through meshd,
// which refuses the certificate on the agent port before meshctl returns.
func TestCARevokeViaAdmin(t *testing.T) {
	m := startMeshd(t)
	m.mustRun("ca", "issue-agent", "hello", "dev1")
	m.mustRun("ca", "issue-agent", "other", "dev1")
	pair := func(cn string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(m.issued(cn), m.issuedKey(cn))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	hello := m.agentClient(pair("hello@dev1"))
	m.mustHeartbeat(hello, "hello")
	other := m.agentClient(pair("other@dev1"))
	m.mustHeartbeat(other, "other")
	serial := readCert(t, m.issued("hello@dev1")).SerialNumber.Text(16)

	requireRefused(t, "bad reason", m.ctl("ca", "revoke", "hello@dev1", "--reason", "bored"), "bored")
	requireRefused(t, "unknown target", m.ctl("ca", "revoke", "nobody@dev1"), "nobody@dev1")

	r := m.mustCtl("ca", "revoke", "hello@dev1", "--reason", "keyCompromise")
	requireContains(t, "ca revoke", r.stdout, "revoked hello@dev1 serial "+serial+" (keyCompromise)", "meshd applied the revocation")

	// No sleep: meshd applied the revocation before it answered.
	m.refusedOnOpenConn(hello, "hello")
	if code := m.heartbeat(m.agentClient(pair("hello@dev1")), "hello"); code != http.StatusForbidden {
		t.Errorf("new connection after revoke: %d, want 403", code)
	}
	m.mustHeartbeat(other, "other")

	// The agent is evicted, as GET /admin/agents shows.
	status := map[string]string{}
	for _, a := range m.agents() {
		status[a.ID] = a.Status
	}
	if status["hello"] != "evicted" || status["other"] != "healthy" {
		t.Errorf("agents after revoke: %v", status)
	}

	// The CA directory holds the revocation too.
	if rows := m.list()["hello@dev1"]; len(rows) != 1 || rows[0].Status != ca.StatusRevoked {
		t.Errorf("ca list after revoke: %+v", rows)
	}

	r = m.ctl("ca", "revoke", "other@dev1", "--json")
	var revs []struct {
		Serial     string `json:"serial"`
		CommonName string `json:"common_name"`
		Reason     string `json:"reason"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &revs) != nil || len(revs) != 1 || revs[0].CommonName != "other@dev1" {
		t.Errorf("ca revoke --json: exit %d\n%s", r.code, r.output())
	}
	m.refusedOnOpenConn(other, "other")
	if code := m.heartbeat(m.agentClient(pair("other@dev1")), "other"); code != http.StatusForbidden {
		t.Errorf("other on a new connection after revoke: %d, want 403", code)
	}
}

// TestCARevokeChoosesPath: without --data-dir, `ca revoke` goes through
// meshd only when MESHTRUST_DATA_DIR holds its admin socket, and works on
// the CA directory otherwise.
func TestCARevokeChoosesPath(t *testing.T) {
	m := startMeshd(t)
	m.mustRun("ca", "issue-agent", "one", "dev1")
	m.mustRun("ca", "issue-agent", "two", "dev1")

	t.Setenv("MESHTRUST_DATA_DIR", m.dataDir)
	r := m.mustRun("ca", "revoke", "one@dev1")
	requireContains(t, "revoke with MESHTRUST_DATA_DIR", r.stdout, "revoked one@dev1", "meshd applied the revocation")

	t.Setenv("MESHTRUST_DATA_DIR", t.TempDir()) // no socket there
	r = m.mustRun("ca", "revoke", "two@dev1")
	requireContains(t, "revoke offline", r.stdout, "revoked two@dev1", "CRL rebuilt")
	if strings.Contains(r.stdout, "meshd applied") {
		t.Errorf("offline revoke claims meshd applied it:\n%s", r.stdout)
	}
}

// TestEntityRegisterNamespace: --namespace is checked before meshd is
// asked, recorded with the entity, and listed; the default is prefix.
func TestEntityRegisterNamespace(t *testing.T) {
	m := startMeshd(t)
	acme, beta := m.validCA("acme"), m.validCA("beta")
	for _, bad := range []string{"ids:", "ids:Weather", "everything", "prefix:acme"} {
		requireRefused(t, "--namespace "+bad, m.run("entity", "register", "acme", "--ca-cert", acme.file, "--namespace", bad), "--namespace")
	}
	if _, ok := m.entities()["acme"]; ok {
		t.Fatalf("a refused --namespace registered the entity")
	}
	m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file, "--namespace", "ids:weather-agent-1,geo-agent-1")
	m.mustCtl("entity", "register", "beta", "--ca-cert", beta.file)
	rows := m.entities()
	if got := rows["acme"].Namespace; got != "ids:geo-agent-1,weather-agent-1" {
		t.Errorf("acme's namespace = %q", got)
	}
	if got := rows["beta"].Namespace; got != "prefix" {
		t.Errorf("beta's namespace = %q, want the default prefix", got)
	}
	if r := m.mustCtl("entity", "list"); !strings.Contains(r.stdout, "NAMESPACE") || !strings.Contains(r.stdout, "ids:geo-agent-1,weather-agent-1") {
		t.Errorf("entity list does not show the namespace:\n%s", r.stdout)
	}
}
