package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
	"github.com/meshtrust/meshtrust/meshapi"
)

// The real-SPIRE suite of meshd's spire backend and of `meshctl agent run
// --provider spire`: built meshd and meshctl binaries against a SPIRE
// 1.13.3 server and agent (scripts/spire.sh), each test with its own. The
// agent's unix attestor discovers workload paths, so `unix:path:<binary>`
// selectors give meshd, meshctl and this test binary an entry each.

// rotationWait bounds a wait that spans SVID rotations: SPIRE rotates a
// 2-minute X.509-SVID at half its lifetime, and a loaded machine is slow.
const rotationWait = 6 * time.Minute

// meshTD is the mesh's own trust domain, MCP Mesh's default.
const meshTD = "mcp-mesh.local"

// registryID is meshd's own SPIFFE ID, as MCP Mesh's SPIRE deployment
// names its registry.
func registryID(td string) string { return "spiffe://" + td + "/mesh-registry" }

// pathSelector selects the workloads running binary (discover_workload_path).
func pathSelector(binary string) string { return "unix:path:" + binary }

// spireMeshd is a built meshd on the spire trust backend, serving its
// own X.509-SVID (--tls-svid, spiffe://<td>/mesh-registry, rotating) on
// the agent port, so agents on the spire provider, which trust SPIRE's
// bundle only, reach it.
type spireMeshd struct {
	*replica
	s *spiretest.SPIRE
}

// registerMeshd gives meshd's binary its entry, spiffe://<td>/mesh-registry;
// more are further arguments of spire-server entry create.
func registerMeshd(t *testing.T, s *spiretest.SPIRE, bin string, more ...string) {
	t.Helper()
	s.CreateEntryArgs(t, registryID(s.TrustDomain), []string{pathSelector(filepath.Join(bin, "meshd"))}, more...)
}

func startSPIREMeshd(t *testing.T, s *spiretest.SPIRE, bin, name string, extra ...string) *spireMeshd {
	t.Helper()
	m := &spireMeshd{s: s}
	data := filepath.Join(t.TempDir(), "data")
	args := append([]string{"--trust-backend", "spire", "--spire-socket", s.AgentSocket, "--tls-svid",
		"--heartbeat-interval", "2s", "--heartbeat-timeout", "10s", "--health-check-interval", "1s",
		// A kept connection is closed by an eviction, never by idleness.
		"--idle-timeout", "10m"}, extra...)
	m.replica = startReplica(t, bin, name, data, filepath.Join(data, "meshtrust.db"), args...)
	return m
}

// url is meshd's agent port by the name its serving SVID carries.
func (m *spireMeshd) url() string {
	_, port, _ := strings.Cut(m.addr, ":")
	return "https://localhost:" + port
}

// agents is GET /admin/agents on the admin socket: id -> the agent.
func (m *spireMeshd) agents(t *testing.T) map[string]agentStatus {
	t.Helper()
	code, body := m.admin(t, "GET", "/admin/agents", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /admin/agents: %d %s", code, body)
	}
	var out struct {
		Agents []agentStatus `json:"agents"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET /admin/agents: %v: %s", err, body)
	}
	got := map[string]agentStatus{}
	for _, a := range out.Agents {
		got[a.ID] = a
	}
	return got
}

type agentStatus struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Reason   string `json:"reason"`
	EntityID string `json:"entity_id"`
	Owner    string `json:"owner"`
}

// metric is the sum of the samples of metric name (with any labels) on
// meshd's admin /metrics.
func (m *spireMeshd) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body := m.admin(t, "GET", "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+" ") && !strings.HasPrefix(l, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		sum += v
	}
	return sum
}

// heldClient presents cert, the SVID it was given, and nothing else, for
// as long as the test likes: an agent that keeps a certificate its
// authority no longer vouches for. It does not verify meshd: it plays the
// caller, whose view of meshd is not what is tested (meshctl agent run
// verifies meshd by its SVID).
func heldClient(cert tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}}
}

// register posts agent id's heartbeat with c and returns the status, and
// the refusal's reason and message, if any.
func register(c *http.Client, m *spireMeshd, id string) (code int, reason, msg string) {
	code, body := call(c, "POST", "https://"+m.addr+"/heartbeat",
		map[string]any{"agent_id": id, "name": id, "version": "1.0.0", "http_host": "127.0.0.1", "http_port": 9443})
	var r meshapi.ErrorResponse
	json.Unmarshal(body, &r)
	if r.Reason == "" && code != http.StatusOK {
		r.Error = string(body)
	}
	return code, r.Reason, r.Error
}

// keptConnection registers agent id over one TLS connection presenting
// cert, keeps that connection open, and returns a channel closed once
// meshd closes it.
func keptConnection(t *testing.T, m *spireMeshd, cert tls.Certificate, id string) <-chan struct{} {
	t.Helper()
	conn, err := tls.Dial("tcp", m.addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body, _ := json.Marshal(map[string]any{"agent_id": id, "name": id, "version": "1.0.0", "http_host": "127.0.0.1", "http_port": 9443})
	req, _ := http.NewRequest("POST", "https://"+m.addr+"/heartbeat", bytes.NewReader(body))
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(conn)
	resp, err := http.ReadResponse(rd, req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("%s's heartbeat on a kept connection: %d (close %v) %s", id, resp.StatusCode, resp.Close, msg)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		// Nothing more is sent: a read returns only when meshd closes.
		io.Copy(io.Discard, rd)
	}()
	return closed
}

// agentRun is `meshctl agent run --provider spire` with a command that
// appends its certificate file to certs at start and at every SIGHUP
// (sent after every rewrite of its credentials); startAgentRun's env
// adds to its environment.
type agentRun struct {
	cmd   *exec.Cmd
	out   *logtest.Buffer
	done  chan error
	certs string
}

func startAgentRun(t *testing.T, bin string, m *spireMeshd, id string, env ...string) *agentRun {
	t.Helper()
	dir := t.TempDir()
	a := &agentRun{out: &logtest.Buffer{}, done: make(chan error, 1), certs: filepath.Join(dir, "certs.pem")}
	script := `save() { cat "$MCP_MESH_TLS_CERT" >> "$CERTS"; }
trap save HUP
save
while :; do sleep 1 & wait $!; done`
	a.cmd = exec.Command(filepath.Join(bin, "meshctl"), "agent", "run", "--agent-id", id, "--provider", "spire",
		"--registry-url", m.url(), "--http-host", "127.0.0.1", "--http-port", "9443", "--heartbeat-interval", "2s",
		"--", "sh", "-c", script)
	a.cmd.Env = append(append(cleanEnv(filepath.Join(dir, "home")), "MCP_MESH_SPIRE_SOCKET="+m.s.AgentSocket, "CERTS="+a.certs), env...)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		a.stop(t)
		if t.Failed() {
			t.Logf("meshctl agent run %s:\n%s", id, a.out)
		}
	})
	return a
}

func (a *agentRun) stop(t *testing.T) {
	if a.exited() != nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		a.done <- err
	case <-time.After(20 * time.Second):
		a.cmd.Process.Kill()
		t.Errorf("meshctl agent run did not stop within 20s of SIGTERM")
	}
}

// exited returns a pointer to how meshctl exited, or nil while it runs.
func (a *agentRun) exited() *error {
	select {
	case err := <-a.done:
		a.done <- err
		return &err
	default:
		return nil
	}
}

// svids are the distinct certificates the command has seen, in order.
func (a *agentRun) svids(t *testing.T) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(a.certs)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	seen := map[string]bool{}
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || seen[c.SerialNumber.String()] {
			continue
		}
		seen[c.SerialNumber.String()] = true
		out = append(out, c)
	}
}

// mustRun fails the test if meshctl agent run has exited.
func (a *agentRun) mustRun(t *testing.T) {
	t.Helper()
	if err := a.exited(); err != nil {
		t.Fatalf("meshctl agent run exited (%v):\n%s", *err, a.out)
	}
}

// testBinary is this test binary's path, its workload path for SPIRE.
func testBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// carolMesh starts SPIRE, meshd and `meshctl agent run` for carol
// (spiffe://<td>/agent/carol, the entry of meshctl's binary), with entries
// for this test binary of each of testIDs besides, and waits until carol
// is registered.
func carolMesh(t *testing.T, testIDs ...string) (*spiretest.SPIRE, *spireMeshd, *agentRun) {
	t.Helper()
	bin := buildBinaries(t)
	s := spiretest.Start(t, meshTD)
	registerMeshd(t, s, bin)
	s.CreateEntry(t, "spiffe://"+meshTD+"/agent/carol", pathSelector(filepath.Join(bin, "meshctl")))
	for _, id := range testIDs {
		s.CreateEntry(t, id, pathSelector(testBinary(t)))
	}
	m := startSPIREMeshd(t, s, bin, "spire")
	a := startAgentRun(t, bin, m, "carol")
	eventually.TrueWithin(t, time.Minute, "carol registered", func() bool {
		a.mustRun(t)
		return m.agents(t)["carol"].Status == "healthy"
	})
	return s, m, a
}

// TestRealSPIREAdmission: meshd on the spire backend, with its default
// binding, admits a CN-less X.509-SVID of its own trust domain,
// spiffe://<td>/agent/carol, as agent carol of the mesh itself (entity
// ""), and never as another agent; MCP Mesh's shared
// spiffe://<td>/mesh-agent claims an id no one claimed, and that id is
// then bound to it.
func TestRealSPIREAdmission(t *testing.T) {
	t.Parallel()
	bin := buildBinaries(t)
	s := spiretest.Start(t, meshTD)
	registerMeshd(t, s, bin)
	carolID, sharedID := "spiffe://"+meshTD+"/agent/carol", "spiffe://"+meshTD+"/mesh-agent"
	for _, id := range []string{carolID, sharedID} {
		s.CreateEntry(t, id, pathSelector(testBinary(t)))
	}
	m := startSPIREMeshd(t, s, bin, "spire")

	cert := s.FetchSVID(t, carolID)
	if cn := cert.Leaf.Subject.CommonName; cn != "" {
		t.Fatalf("SPIRE set common name %q on an entry without -dns; this test is about CN-less SVIDs", cn)
	}
	carol, shared := heldClient(cert), heldClient(s.FetchSVID(t, sharedID))
	if code, reason, _ := register(carol, m, "zed"); code != http.StatusForbidden || reason != "identity_mismatch" {
		t.Errorf("carol's SVID registering zed: %d %s, want 403 identity_mismatch", code, reason)
	}
	if code, reason, _ := register(carol, m, "carol"); code != http.StatusOK {
		t.Fatalf("carol's SVID registering carol: %d %s", code, reason)
	}
	if got := m.agents(t)["carol"]; got.Status != "healthy" || got.EntityID != "" {
		t.Errorf("carol in meshd: %+v, want healthy, of the mesh itself (no entity)", got)
	}
	if code, reason, _ := register(shared, m, "weather"); code != http.StatusOK {
		t.Fatalf("the shared mesh-agent SVID registering weather: %d %s", code, reason)
	}
	for _, tc := range []struct {
		name string
		c    *http.Client
		id   string
	}{
		{"the shared SVID claiming carol", shared, "carol"},
		{"carol's SVID claiming weather", carol, "weather"},
	} {
		if code, _, _ := register(tc.c, m, tc.id); code == http.StatusOK {
			t.Errorf("%s: admitted", tc.name)
		}
	}
	got := m.agents(t)
	if _, ok := got["zed"]; ok || len(got) != 2 {
		t.Errorf("meshd's agents %v, want carol and weather", got)
	}
}

// TestRealSPIRERotation: `meshctl agent run --provider spire` heartbeats
// through two SVID rotations without going unhealthy, and meshd admits
// every new SVID (it refuses nothing).
func TestRealSPIRERotation(t *testing.T) {
	t.Parallel()
	_, m, a := carolMesh(t)
	eventually.TrueWithin(t, rotationWait, "two SVID rotations", func() bool {
		a.mustRun(t)
		if got := m.agents(t)["carol"]; got.Status != "healthy" {
			t.Fatalf("carol went %q (%s) after %d SVIDs", got.Status, got.Reason, len(a.svids(t)))
		}
		return len(a.svids(t)) >= 3
	})
	if n := m.metric(t, "meshd_refusals_total"); n != 0 {
		t.Errorf("meshd refused %v requests", n)
	}
	for _, c := range a.svids(t) {
		if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://"+meshTD+"/agent/carol" {
			t.Errorf("the command was given SVID %v", c.URIs)
		}
	}
}

// authorityOf is the ID SPIRE gives the authority that signed c: the hex
// of its subject key identifier, which c names as its authority key
// identifier.
func authorityOf(c *x509.Certificate) string { return hex.EncodeToString(c.AuthorityKeyId) }

// prepareAndActivate prepares a new X.509 authority, activates it, and
// returns the old one's ID and the new one's.
func prepareAndActivate(t *testing.T, m *spireMeshd) (old, next string) {
	t.Helper()
	old = m.s.LocalAuthority(t, "show", "")["active"]
	next = m.s.LocalAuthority(t, "prepare", "")["prepared_authority"]
	if old == "" || next == "" || old == next {
		t.Fatalf("authorities: active %q, prepared %q", old, next)
	}
	// The prepared authority is published in the bundle before it signs:
	// meshd trusts both from here on.
	eventually.TrueWithin(t, time.Minute, "meshd to see both authorities in its bundle", func() bool {
		return strings.Contains(m.stderr.String(), meshTD+" (2)")
	})
	m.s.LocalAuthority(t, "activate", next)
	return old, next
}

// TestRealSPIREAuthorityLifecycle: SPIRE's X.509 authority goes through
// prepare, activate, taint and revoke while `meshctl agent run` keeps
// carol registered and another agent, olda, keeps presenting the SVID it
// got before the taint. After the taint carol rotates to the new
// authority; the revoke drops the old one from the bundle, and meshd
// evicts olda (and closes its connection) while carol keeps working. The
// eviction metric counts that one eviction only.
func TestRealSPIREAuthorityLifecycle(t *testing.T) {
	t.Parallel()
	s, m, a := carolMesh(t, "spiffe://"+meshTD+"/agent/olda")
	held := s.FetchSVID(t, "spiffe://"+meshTD+"/agent/olda")
	olda := heldClient(held)
	if code, reason, _ := register(olda, m, "olda"); code != http.StatusOK {
		t.Fatalf("olda's registration: %d %s", code, reason)
	}

	old, next := prepareAndActivate(t, m)
	if got := authorityOf(held.Leaf); got != old {
		t.Fatalf("olda's SVID is signed by authority %s, want the active %s", got, old)
	}
	s.LocalAuthority(t, "taint", old)
	// A tainted authority makes every workload rotate now, not at half
	// its SVID's lifetime.
	eventually.TrueWithin(t, rotationWait, "carol's SVID from the new authority", func() bool {
		a.mustRun(t)
		if got := m.agents(t)["carol"]; got.Status != "healthy" {
			t.Fatalf("carol went %q (%s) during the taint", got.Status, got.Reason)
		}
		svids := a.svids(t)
		return len(svids) > 0 && authorityOf(svids[len(svids)-1]) == next
	})
	// Tainted, the old authority still vouches: olda's held SVID is
	// admitted on a connection it keeps open, for the revoke to close.
	closed := keptConnection(t, m, held, "olda")
	evictedBefore := m.metric(t, "meshd_evictions_total")

	s.LocalAuthority(t, "revoke", old)
	eventually.TrueWithin(t, time.Minute, "meshd to evict olda", func() bool {
		return m.agents(t)["olda"].Status == "evicted"
	})
	eventually.TrueWithin(t, time.Minute, "meshd to close olda's connection", func() bool {
		select {
		case <-closed:
			return true
		default:
			return false
		}
	})
	if code, reason, _ := register(olda, m, "olda"); code == http.StatusOK {
		t.Errorf("olda's SVID of the revoked authority is still admitted (%s)", reason)
	}
	// carol goes on: more of its heartbeats are answered than fit in the
	// heartbeat timeout (10 s at one every 2 s), and it stays healthy.
	const headsOK = `meshd_heartbeats_total{code="200",method="head"}`
	heads := m.metric(t, headsOK)
	eventually.TrueWithin(t, time.Minute, "carol's heartbeats after the revoke", func() bool {
		a.mustRun(t)
		if got := m.agents(t)["carol"]; got.Status != "healthy" {
			t.Fatalf("carol went %q (%s) after the revoke", got.Status, got.Reason)
		}
		return m.metric(t, headsOK) >= heads+6
	})
	if n := m.metric(t, "meshd_evictions_total") - evictedBefore; n != 1 {
		t.Errorf("meshd counted %v evictions at the revoke, want 1 (olda)", n)
	}
	if n := m.metric(t, "meshd_evicted_connections_total"); n < 1 {
		t.Errorf("meshd counted %v closed connections, want olda's at least", n)
	}
}

// TestRealSPIRERevokeRightAfterTaint: revoking an authority right after
// tainting it leaves no time for the forced rotation the taint starts, so
// a workload still on an SVID of that authority is cut off until its
// SPIRE agent rotates it at half its lifetime: meshd evicts carol, its
// heartbeats fail (meshd refuses its SVID, and carol cannot verify meshd's
// own SVID of the same authority), meshctl agent run keeps retrying, and
// carol is back, healthy, on an SVID of the new authority. This is the outage
// docs/spire.md warns of (up to one SVID lifetime).
func TestRealSPIRERevokeRightAfterTaint(t *testing.T) {
	t.Parallel()
	s, m, a := carolMesh(t)
	old, next := prepareAndActivate(t, m)
	// carol's SVID rotates about once a minute: one signed by the new
	// authority already would make the outage moot.
	svids := a.svids(t)
	if got := authorityOf(svids[len(svids)-1]); got != old {
		t.Skipf("carol's SVID rotated to the new authority %s before the taint", got)
	}
	s.LocalAuthority(t, "taint", old)
	s.LocalAuthority(t, "revoke", old)
	eventually.TrueWithin(t, time.Minute, "meshd to evict carol", func() bool {
		return m.agents(t)["carol"].Status == "evicted"
	})
	cut := time.Now()
	eventually.TrueWithin(t, rotationWait, "carol back on an SVID of the new authority", func() bool {
		a.mustRun(t)
		svids := a.svids(t)
		return authorityOf(svids[len(svids)-1]) == next && m.agents(t)["carol"].Status == "healthy"
	})
	t.Logf("carol was cut off for about %s (its SVID lives 2m and rotates at half that)", time.Since(cut).Round(time.Second))
	// The heartbeats failed meanwhile: meshd refused carol's SVID, or
	// (meshd's own SVID being of the revoked authority too) carol could
	// not verify meshd.
	if out := a.out.String(); !strings.Contains(out, "heartbeat failed") {
		t.Errorf("no heartbeat of carol failed during the outage:\n%s", out)
	}
}

// TestRealSPIREAgentRestart: the SPIRE agent stops and starts again (with
// the SVID it kept: its join token is spent); meshd and meshctl agent run
// ride through on their Workload API streams. carol stays healthy, its
// next SVID rotation after the restart is admitted, and meshd still
// follows the bundle (a prepared authority reaches it).
func TestRealSPIREAgentRestart(t *testing.T) {
	t.Parallel()
	s, m, a := carolMesh(t)

	s.RestartAgent(t)
	before := len(a.svids(t))
	eventually.TrueWithin(t, rotationWait, "carol's next SVID after the SPIRE agent's restart", func() bool {
		a.mustRun(t)
		if got := m.agents(t)["carol"]; got.Status != "healthy" {
			t.Fatalf("carol went %q (%s) across the SPIRE agent's restart", got.Status, got.Reason)
		}
		return len(a.svids(t)) > before
	})
	s.LocalAuthority(t, "prepare", "")
	eventually.TrueWithin(t, time.Minute, "meshd to see the prepared authority after the restart", func() bool {
		return strings.Contains(m.stderr.String(), meshTD+" (2)")
	})
	if n := m.metric(t, "meshd_refusals_total"); n != 0 {
		t.Errorf("meshd refused %v requests", n)
	}
}

// partnerTD is the federated partner's trust domain.
const partnerTD = "partner.test"

// federatedMesh starts the mesh's SPIRE and a partner's, partner.test,
// each with a bundle endpoint, the mesh's server federating with the
// partner's (https_spiffe) and meshd's entry federating with partner.test;
// this test binary gets the partner's SVID spiffe://partner.test/agent/<id>
// for each of ids. It returns the binaries' directory, both SPIREs and a
// meshd that lists partner.test (--spire-federated) as entity acme, once
// that meshd trusts the partner's bundle.
func federatedMesh(t *testing.T, ids ...string) (bin string, s, p *spiretest.SPIRE, listed *spireMeshd) {
	t.Helper()
	bin = buildBinaries(t)
	s = spiretest.Start(t, meshTD, spiretest.WithBundleEndpoint())
	p = spiretest.Start(t, partnerTD, spiretest.WithBundleEndpoint())
	s.Federate(t, p)
	registerMeshd(t, s, bin, "-federatesWith", "spiffe://"+partnerTD)
	for _, id := range ids {
		p.CreateEntry(t, "spiffe://"+partnerTD+"/agent/"+id, pathSelector(testBinary(t)))
	}
	listed = startSPIREMeshd(t, s, bin, "listed", "--spire-federated", partnerTD, "--spire-entities", partnerTD+"=acme")
	eventually.TrueWithin(t, time.Minute, "meshd to trust partner.test's bundle", func() bool {
		return strings.Contains(listed.stderr.String(), partnerTD+" (1)")
	})
	return bin, s, p, listed
}

// TestRealSPIREFederation: a second SPIRE server, partner.test, serves its
// bundle over an https_spiffe bundle endpoint; the mesh's server federates
// with it and meshd's entry federates with partner.test. meshd with
// --spire-federated partner.test and --spire-entities partner.test=acme
// admits spiffe://partner.test/agent/acme-weather as acme-weather of
// entity acme, refuses spiffe://partner.test/agent/opus (outside acme's
// namespace), and a meshd without --spire-federated refuses the partner
// although its Workload API hands it the partner's bundle. Once the
// mesh's server drops the partner's bundle, meshd evicts its agent.
func TestRealSPIREFederation(t *testing.T) {
	t.Parallel()
	bin, s, p, listed := federatedMesh(t, "acme-weather", "opus")
	unlisted := startSPIREMeshd(t, s, bin, "unlisted")

	weather := heldClient(p.FetchSVID(t, "spiffe://"+partnerTD+"/agent/acme-weather"))
	opus := heldClient(p.FetchSVID(t, "spiffe://"+partnerTD+"/agent/opus"))
	if code, reason, _ := register(weather, listed, "acme-weather"); code != http.StatusOK {
		t.Fatalf("partner's acme-weather: %d %s", code, reason)
	}
	if got := listed.agents(t)["acme-weather"]; got.Status != "healthy" || got.EntityID != "acme" {
		t.Errorf("acme-weather in meshd: %+v, want healthy in entity acme", got)
	}
	if code, reason, _ := register(opus, listed, "opus"); code != http.StatusForbidden || reason != "outside_namespace" {
		t.Errorf("partner's opus: %d %s, want 403 outside_namespace", code, reason)
	}
	// Not listed: the partner's bundle vouches for nothing in this meshd.
	if code, reason, msg := register(weather, unlisted, "acme-weather"); code != http.StatusForbidden || reason != "unknown_ca" || !strings.Contains(msg, "trust domain "+partnerTD+" is not trusted here") {
		t.Errorf("a meshd without --spire-federated, the partner's acme-weather: %d %s %q; want 403 unknown_ca, its trust domain not trusted here", code, reason, msg)
	}
	if _, ok := unlisted.agents(t)["acme-weather"]; ok {
		t.Errorf("acme-weather is registered in the meshd without --spire-federated")
	}

	// The mesh's server stops federating and drops the partner's bundle:
	// it leaves meshd's Workload API, and meshd evicts the partner's agent.
	s.Server(t, "federation", "delete", "-id", partnerTD)
	s.Server(t, "bundle", "delete", "-id", "spiffe://"+partnerTD, "-mode", "dissociate")
	eventually.TrueWithin(t, time.Minute, "meshd to evict acme-weather", func() bool {
		return listed.agents(t)["acme-weather"].Status == "evicted"
	})
	if code, reason, _ := register(weather, listed, "acme-weather"); code == http.StatusOK {
		t.Errorf("the partner's acme-weather is admitted after its bundle was dropped (%s)", reason)
	}
}

// TestRealSPIREFederatedRevocation: the partner's server prepares a new
// authority, waits until the mesh has it, activates it and revokes the
// old one, the authority of an SVID meshd admitted; the revocation reaches
// meshd when the mesh's server next polls the partner's bundle endpoint
// (its refresh hint is 1 minute here), and meshd then evicts the
// partner's agent. The delays are logged: they are the windows
// docs/spire.md describes.
func TestRealSPIREFederatedRevocation(t *testing.T) {
	t.Parallel()
	_, _, p, listed := federatedMesh(t, "acme-weather")
	held := p.FetchSVID(t, "spiffe://"+partnerTD+"/agent/acme-weather")
	if code, reason, _ := register(heldClient(held), listed, "acme-weather"); code != http.StatusOK {
		t.Fatalf("partner's acme-weather: %d %s", code, reason)
	}
	old := p.LocalAuthority(t, "show", "")["active"]
	next := p.LocalAuthority(t, "prepare", "")["prepared_authority"]
	prepared := time.Now()
	// The partner's bundle endpoint (https_spiffe) authenticates with the
	// partner server's own SVID, from its active authority: activated
	// before the mesh's server has fetched the prepared one, it is one
	// the mesh cannot verify, and the federation stops refreshing for
	// good (docs/spire.md). So the prepared authority must reach the mesh
	// first, within a refresh hint.
	eventually.TrueWithin(t, rotationWait, "meshd to see the partner's prepared authority", func() bool {
		return strings.Contains(listed.stderr.String(), partnerTD+" (2)")
	})
	t.Logf("the partner's prepared authority reached meshd after about %s", time.Since(prepared).Round(time.Second))
	p.LocalAuthority(t, "activate", next)
	p.LocalAuthority(t, "taint", old)
	p.LocalAuthority(t, "revoke", old)
	revoked := time.Now()
	eventually.TrueWithin(t, rotationWait, "meshd to evict the partner's acme-weather", func() bool {
		return listed.agents(t)["acme-weather"].Status == "evicted"
	})
	t.Logf("the partner's revocation reached meshd after about %s (refresh hint 1m)", time.Since(revoked).Round(time.Second))
}
