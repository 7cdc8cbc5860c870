package server_test

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
	"github.com/meshtrust/meshtrust/trust"
)

// Metric names of the spire backend's staleness.
const (
	staleMetric        = `meshd_trust_backend_stale{backend="spire"}`
	staleSecondsMetric = `meshd_trust_backend_stale_seconds{backend="spire"}`
)

// svidCert is an X.509-SVID of the double's CA for td, named name by its
// CN (as MCP Mesh's agents name themselves) and by the SPIFFE ID
// spiffe://<td>/agent/<name>.
func svidCert(wl *spiffetest.Server, td spiffeid.TrustDomain, name string) tls.Certificate {
	return tlsCert(wl.CA(td).Issue(&x509.Certificate{Subject: pkix.Name{CommonName: name},
		URIs: []*url.URL{spiffeid.RequireFromPath(td, "/agent/"+name).URL()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}))
}

// tlsCert is a chain and key the double's CA issued, as a client's
// tls.Certificate.
func tlsCert(chain []*x509.Certificate, key crypto.Signer) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// health returns GET /health's status and its degraded list's reasons,
// through c.
func (e *env) health(c *http.Client) (status string, reasons []string) {
	e.t.Helper()
	// A new connection with c's certificate: CI saw meshd close a
	// kept-alive one between two requests of this test ("server closed
	// idle connection"), and /health's answer is what is checked here.
	tr := c.Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	r := e.do(&http.Client{Transport: tr, Timeout: 10 * time.Second}, "GET", "/health", nil)
	if r.code != http.StatusOK {
		e.t.Fatalf("GET /health: %s", r)
	}
	body := r.json(e.t)
	list, _ := body["degraded"].([]any)
	for _, d := range list {
		m, _ := d.(map[string]any)
		reasons = append(reasons, fmt.Sprintf("%v: %v", m["component"], m["reason"]))
	}
	return fmt.Sprint(body["status"]), reasons
}

// poll GETs path on a new connection with cert's certificate, for a
// condition polled while trust changes: false when the connection broke
// before the answer. meshd's trust sweep closes every open connection the
// new state refuses, and the moment the bound passes one of the polls is
// open (CI saw it as "connection reset by peer").
func (e *env) poll(cert *tls.Certificate, path string) (reply, bool) {
	e.t.Helper()
	resp, err := e.freshClient(cert).Get(e.baseURL() + path)
	if err != nil {
		return reply{}, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, false
	}
	return reply{code: resp.StatusCode, body: body, header: resp.Header}, true
}

// TestE2ESPIREStale: once meshd's Workload API has been gone for the
// bound, the agents an SVID admitted are evicted, every SVID the stale
// bundles would admit is refused as stale_trust, the metric and GET
// /health say so, and a mesh CA agent is unaffected; the agent's return
// admits again. The double stands in for the SPIRE agent for an outage
// that starts and ends in place in milliseconds, with retries a few
// milliseconds apart, so that a short bound is crossed both ways quickly;
// the real agent's PermissionDenied is TestE2ERealSPIREStale.
func TestE2ESPIREStale(t *testing.T) {
	meshTD := spiffeid.RequireTrustDomainFromString("mesh.test")
	partnerTD := spiffeid.RequireTrustDomainFromString("partner.test")
	wl := spiffetest.NewServer(t, "")
	wl.SetSVID(spiffeid.RequireFromPath(meshTD, "/meshd"))
	wl.AddFederatedBundle(partnerTD)
	backoff := spiffetest.NewBackoff()
	// auto: a caller without a certificate reaches /health too, and
	// learns the status but not what degrades it.
	e := newEnv(t, envOptions{mode: server.TLSAuto, backends: []string{"localca", "spire"},
		configure: func(c *meshd.Config) {
			c.SPIRE = meshd.SPIREConfig{Socket: wl.SocketPath(), Federated: []spiffeid.TrustDomain{partnerTD},
				Entities: map[spiffeid.TrustDomain]string{partnerTD: "partner"}, ClientOptions: backoff.ClientOptions(),
				MaxStaleness: 300 * time.Millisecond}
		}})
	observer := e.registeredAgent("observer", "n1", 9400)
	partner := svidCert(wl, partnerTD, "partner-a")
	if r := e.do(e.freshClient(&partner), "POST", "/heartbeat", heartbeat("partner-a", 9401)); r.code != http.StatusOK {
		t.Fatalf("partner-a: %s", r)
	}
	if m := e.metrics(); m[staleMetric] != 0 || m[staleSecondsMetric] != 0 {
		t.Fatalf("while current: %s = %v, %s = %v; want 0, 0", staleMetric, m[staleMetric], staleSecondsMetric, m[staleSecondsMetric])
	}
	if status, reasons := e.health(observer); status != "healthy" || len(reasons) != 0 {
		t.Fatalf("GET /health while current: %s %v", status, reasons)
	}

	wl.Stop()
	eventually.True(t, "partner-a evicted once the bundles are stale", func() bool {
		a, _ := e.agents(observer, "").find("partner-a")
		return a.Status == "evicted"
	})
	if r := e.do(e.freshClient(&partner), "POST", "/heartbeat", heartbeat("partner-a", 9401)); r.code != http.StatusForbidden || r.reason() != trust.ReasonStaleTrust {
		t.Errorf("partner-a while stale: %s, want 403 %s", r, trust.ReasonStaleTrust)
	}
	if m := e.metrics(); m[staleMetric] != 1 || m[staleSecondsMetric] <= 0 || m[`meshd_refusals_total{reason="stale_trust"}`] < 1 {
		t.Errorf("while stale: %s = %v, %s = %v, stale_trust refusals %v; want 1, > 0, >= 1", staleMetric, m[staleMetric],
			staleSecondsMetric, m[staleSecondsMetric], m[`meshd_refusals_total{reason="stale_trust"}`])
	}
	if status, reasons := e.health(observer); status != "degraded" || len(reasons) != 1 || reasons[0] != "trust backend spire: stale_trust" {
		t.Errorf("GET /health while stale: %s %v, want degraded [trust backend spire: stale_trust]", status, reasons)
	}
	if r := e.do(e.freshClient(nil), "GET", "/health", nil); r.code != http.StatusOK || r.json(t)["status"] != "degraded" || r.json(t)["degraded"] != nil {
		t.Errorf("GET /health without a certificate while stale: %s, want degraded and not why", r)
	}
	if r := e.adminDo("GET", "/health", nil); !strings.Contains(string(r.body), "stale_trust") {
		t.Errorf("GET /health on the admin socket while stale: %s, want what degrades meshd", r)
	}
	if r := e.do(observer, "POST", "/heartbeat", heartbeat("observer", 9400)); r.code != http.StatusOK {
		t.Errorf("the mesh CA's agent while the spire bundles are stale: %s", r)
	}

	wl.Restart()
	eventually.True(t, "partner-a admitted again", func() bool {
		r, ok := e.poll(&partner, "/health")
		return ok && r.code == http.StatusOK
	})
	if m := e.metrics(); m[staleMetric] != 0 || m[staleSecondsMetric] != 0 {
		t.Errorf("current again: %s = %v, %s = %v; want 0, 0", staleMetric, m[staleMetric], staleSecondsMetric, m[staleSecondsMetric])
	}
	if status, reasons := e.health(observer); status != "healthy" {
		t.Errorf("GET /health current again: %s %v", status, reasons)
	}
	if !e.log.hasRecord(t, "ERROR", "refusing every SPIFFE certificate") || !e.log.hasRecord(t, "INFO", "admitting SPIFFE certificates again") {
		t.Error("going stale and coming back were not logged")
	}
}

// TestE2ERealSPIREStale: against a real SPIRE server and agent, meshd's
// own registration entry deleted makes the agent answer PermissionDenied;
// after the bound (5 s here) an SVID the server minted is refused as
// stale_trust, the metric and GET /health say so; once the entry is
// created again the fresh bundles admit it again.
func TestE2ERealSPIREStale(t *testing.T) {
	s := spiretest.Start(t, "mcp-mesh.local")
	selector := fmt.Sprintf("unix:uid:%d", os.Getuid()) // the test binary is meshd's workload
	entry := s.CreateEntry(t, "spiffe://mcp-mesh.local/meshd", selector)
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "spire"},
		configure: func(c *meshd.Config) {
			// The agent learns of the entry at its next sync (every 5 s).
			c.SPIRE = meshd.SPIREConfig{Socket: s.AgentSocket, StartTimeout: 2 * time.Minute, MaxStaleness: 5 * time.Second}
		}})
	dir := t.TempDir()
	s.Server(t, "x509", "mint", "-spiffeID", "spiffe://mcp-mesh.local/agent/carol", "-ttl", "1h", "-write", dir)
	carol, err := tls.LoadX509KeyPair(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatalf("the SVID spire-server x509 mint wrote: %v", err)
	}
	admin := e.registeredAgent("observer", "n1", 9400)
	if r := e.do(e.freshClient(&carol), "GET", "/health", nil); r.code != http.StatusOK {
		t.Fatalf("carol's SVID, minted by the SPIRE server: %s", r)
	}

	s.Server(t, "entry", "delete", "-entryID", entry)
	deleted := time.Now()
	eventually.TrueWithin(t, 3*time.Minute, "carol's SVID refused as stale_trust", func() bool {
		r, ok := e.poll(&carol, "/health")
		return ok && r.reason() == trust.ReasonStaleTrust
	})
	t.Logf("entry deleted: stale_trust after %v (bound 5 s)", time.Since(deleted))
	if !strings.Contains(e.log.String(), "PermissionDenied") {
		t.Errorf("the source logged no PermissionDenied from the agent:\n%s", e.log.String())
	}
	if m := e.metrics(); m[staleMetric] != 1 || m[staleSecondsMetric] < 5 {
		t.Errorf("while stale: %s = %v, %s = %v; want 1, >= 5", staleMetric, m[staleMetric], staleSecondsMetric, m[staleSecondsMetric])
	}
	if status, reasons := e.health(admin); status != "degraded" || len(reasons) != 1 {
		t.Errorf("GET /health while stale: %s %v, want degraded by the spire backend", status, reasons)
	}
	if !e.log.hasRecord(t, "ERROR", "refusing every SPIFFE certificate") {
		t.Error("going stale was not logged")
	}

	s.CreateEntry(t, "spiffe://mcp-mesh.local/meshd", selector)
	created := time.Now()
	eventually.TrueWithin(t, 3*time.Minute, "carol's SVID admitted again", func() bool {
		r, ok := e.poll(&carol, "/health")
		return ok && r.code == http.StatusOK
	})
	t.Logf("entry created again: admitted after %v", time.Since(created))
	if m := e.metrics(); m[staleMetric] != 0 || m[staleSecondsMetric] != 0 {
		t.Errorf("current again: %s = %v, %s = %v; want 0, 0", staleMetric, m[staleMetric], staleSecondsMetric, m[staleSecondsMetric])
	}
	if status, _ := e.health(admin); status != "healthy" {
		t.Errorf("GET /health current again: %s", status)
	}
}
