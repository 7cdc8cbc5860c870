//go:build unix

package server_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/pemfile"
)

// newPartnerFileEnv starts a strict meshd on the local CA and a trust dir,
// with a partner CA's root written to the trust dir's entities/partner.pem
// (file) and the partner's key added to e.extraKeys.
func newPartnerFileEnv(t *testing.T) (e *env, partner *testCA, file string) {
	t.Helper()
	e = newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true})
	partner = newTestCA(t, "partner CA")
	e.extraKeys = append(e.extraKeys, partner.keyPEM)
	file = filepath.Join(e.trustDir, "entities", "partner.pem")
	if err := pemfile.WriteAtomic(file, partner.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return e, partner, file
}

// TestHostileFIFOInTrustDir: a FIFO named *.pem dropped into the trust dir
// (and its entities/) neither blocks the reload nor keeps a CA deleted
// afterwards trusted: the partner whose file is deleted is refused and its
// agent evicted, over real TLS, while the mesh CA's agents are served.
func TestHostileFIFOInTrustDir(t *testing.T) {
	e, partner, file := newPartnerFileEnv(t)
	cert := partner.leaf(t, "partner-a")
	body, err := json.Marshal(heartbeat("partner-a", 9200))
	if err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "partner admitted", func() bool {
		// The trust dir's reload of the partner's file, just written, may
		// close a connection made before it under the request: not yet.
		resp, err := e.freshClient(&cert).Post(e.baseURL()+"/heartbeat", "application/json", bytes.NewReader(body))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	fifos := []string{filepath.Join(e.trustDir, "pipe.pem"), filepath.Join(e.trustDir, "entities", "pipe.pem")}
	for _, p := range fifos {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
	}
	// Before meshd's own cleanup: a watcher stuck on a FIFO (the hole this
	// test is for) would hold Shutdown forever.
	t.Cleanup(func() { releaseFIFOs(fifos, 3*time.Second) })
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}

	eventually.True(t, "the deleted partner CA refused", func() bool {
		// The sweep may close the connection under a request: not yet.
		resp, err := e.freshClient(&cert).Head(e.baseURL() + "/heartbeat/partner-a")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusForbidden
	})
	eventually.True(t, "partner-a evicted", func() bool {
		a, ok := e.agents(e.client(e.watchCert()), "").find("partner-a")
		return ok && a.Status == "evicted"
	})
	if r := e.do(e.freshClient(e.watchCert()), "POST", "/heartbeat", heartbeat("watcher", 9300)); r.code != http.StatusOK {
		t.Errorf("a mesh CA agent after the FIFOs: %s, want 200", r)
	}
	if log := e.log.String(); !strings.Contains(log, "FIFO") || !strings.Contains(log, "pipe.pem") {
		t.Errorf("the log does not name the FIFOs it refused")
	}
}

// releaseFIFOs opens each of fifos for writing until within passes: a
// reader blocked opening one (a watcher that does not refuse FIFOs) is
// released, and reads an empty file.
func releaseFIFOs(fifos []string, within time.Duration) {
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, p := range fifos {
			// With O_NONBLOCK this fails (ENXIO) unless a reader waits.
			if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			} else if !errors.Is(err, syscall.ENXIO) {
				return
			}
		}
	}
}

// TestHostileIssuanceWithoutMeshCA: a meshd with no mesh CA (MCP Mesh's
// --tls-auto layout: the trust dir's ca.pem is its "localca") refuses
// /agent-cert and /renew with a clear 404 no_ca, even to a node-shaped
// certificate of that CA, instead of reaching a signer it does not have
// (a recovered panic and a stack trace per request).
func TestHostileIssuanceWithoutMeshCA(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca"}, trustDir: true})
	dev := newTestCA(t, "MCP Mesh Dev Root CA")
	e.extraKeys = append(e.extraKeys, dev.keyPEM)
	if err := pemfile.WriteAtomic(filepath.Join(e.trustDir, "ca.pem"), dev.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	// The same store and agent-port certificate, but no mesh CA.
	if err := e.srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	auth := e.ca.auth
	e.ca.auth = nil
	e.start()
	e.ca.auth = auth

	node := dev.leaf(t, "ct111.mesh")
	agent := dev.leaf(t, "weather-agent")
	key := pkitest.NewKey(t)
	e.extraKeys = append(e.extraKeys, keyPEM(t, key))
	for _, c := range []struct {
		name, path string
		cert       *tls.Certificate
		body       any
	}{
		{"a node-shaped certificate asking /agent-cert", "/agent-cert", &node, map[string]any{"agent_id": "opus", "csr": csrPEM(t, "opus@ct111", key)}},
		{"a node-shaped certificate renewing", "/renew", &node, map[string]any{}},
		{"a node-shaped certificate renewing with its agents", "/renew", &node, map[string]any{"agents": []map[string]any{{"agent_id": "opus", "csr": csrPEM(t, "opus@ct111", key)}}}},
		{"an agent certificate renewing", "/renew", &agent, map[string]any{"csr": csrPEM(t, "", key)}},
	} {
		r := e.do(e.freshClient(c.cert), "POST", c.path, c.body)
		if r.code != http.StatusNotFound || r.reason() != "no_ca" || !strings.Contains(r.json(t)["error"].(string), "no mesh CA") {
			t.Errorf("%s: %s, want 404 no_ca saying there is no mesh CA", c.name, r)
		}
	}
	// Every other route that needs the CA answers 404 saying there is
	// none, and the CRL's age is not a metric: meshd handed the server a
	// nil Authority, not one holding a nil *ca.CA.
	for _, c := range []struct{ method, path string }{{"POST", "/enroll"}, {"GET", "/crl"}, {"GET", "/bundle"}} {
		if r := e.do(e.freshClient(nil), c.method, c.path, map[string]any{}); r.code != http.StatusNotFound || !strings.Contains(r.json(t)["error"].(string), "no local CA") {
			t.Errorf("%s %s: %s, want 404 saying there is no local CA", c.method, c.path, r)
		}
	}
	for _, path := range []string{"/admin/revoke", "/admin/reinstate", "/admin/tokens"} {
		if r := e.adminDo("POST", path, map[string]any{}); r.code != http.StatusNotFound || !strings.Contains(string(r.body), "no local CA") {
			t.Errorf("POST %s: %s, want 404 saying there is no local CA", path, r)
		}
	}
	if age, ok := e.metrics()["meshd_crl_age_seconds"]; ok {
		t.Errorf("meshd_crl_age_seconds = %v without a CA, want no such metric", age)
	}
	// The certificates are still good for what this meshd does.
	if r := e.do(e.freshClient(&agent), "POST", "/heartbeat", heartbeat("weather-agent", 9100)); r.code != http.StatusOK {
		t.Errorf("the trust dir CA's agent registering: %s, want 200", r)
	}
	if log := e.log.String(); strings.Contains(log, "panic") || strings.Contains(log, "goroutine ") {
		t.Errorf("the log holds a panic or a stack trace")
	}
}

// TestHostileRequestBodyAndIdleBounds: MCP_MESH_MAX_REQUEST_BODY_BYTES
// (Config.MaxRequestBody) refuses a larger body with 413 on every route,
// before the route reads it, and a kept-alive connection that stays
// silent is closed after IdleTimeout (MCP Mesh 3.7.1's contract).
func TestHostileRequestBodyAndIdleBounds(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto, configure: func(c *meshd.Config) {
		c.MaxRequestBody, c.IdleTimeout = 4096, 300*time.Millisecond
	}})
	big := heartbeat("big-agent", 9100)
	big["description"] = strings.Repeat("x", 8192)
	cert, _ := agentCert(t, e.ca.auth, "big-agent", "n1")
	for _, c := range []struct {
		name, path string
		cert       *tls.Certificate
	}{
		{"a caller without a certificate", "/heartbeat", nil},
		{"a certificate's heartbeat", "/heartbeat", &cert},
		{"/agent-cert", "/agent-cert", &cert},
		{"/renew", "/renew", &cert},
	} {
		// A kept-alive connection, as agents use: on one that asked to be
		// closed (freshClient's) Go's server answers an early 413 and
		// closes without draining the body, and the client, still
		// writing it, may see a broken pipe instead of the answer.
		tr := &http.Transport{TLSClientConfig: e.tlsConfig(c.cert)}
		t.Cleanup(tr.CloseIdleConnections)
		r := e.do(&http.Client{Transport: tr, Timeout: 10 * time.Second}, "POST", c.path, big)
		if r.code != http.StatusRequestEntityTooLarge || r.reason() != "body_too_large" {
			t.Errorf("%s: %d-byte body to %s: %s, want 413 body_too_large", c.name, len(big["description"].(string)), c.path, r)
		}
	}
	if a, ok := e.agents(e.client(&cert), "").find("big-agent"); ok {
		t.Errorf("a refused body registered an agent: %+v", a)
	}
	if r := e.do(e.freshClient(&cert), "POST", "/heartbeat", heartbeat("big-agent", 9100)); r.code != http.StatusOK {
		t.Errorf("a heartbeat under the bound: %s, want 200", r)
	}

	conn := e.dial(&cert)
	conn.mustDo("HEAD", "/heartbeat/big-agent", nil)
	if _, err := conn.awaitClose(); err != nil {
		t.Errorf("an idle kept-alive connection: %v, want it closed after the idle timeout", err)
	}
}

// TestHostileEntityNameAcrossSources: a partner entity name is held by one
// trust source. A CA dropped into the trust dir under the name of a
// registered entity does not become that entity (its certificates are
// refused, entity_name_taken), and a registration of a name the trust dir
// holds is refused with 409: the provider boundary, `entity:` grants and
// entity revocations, which compare the name, never span two sources.
func TestHostileEntityNameAcrossSources(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true})
	registered, dropped := newTestCA(t, "globex CA"), newTestCA(t, "another globex CA")
	e.extraKeys = append(e.extraKeys, registered.keyPEM, dropped.keyPEM)
	e.registerEntity("globex", registered)
	if err := pemfile.WriteAtomic(filepath.Join(e.trustDir, "entities", "globex.pem"), dropped.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the conflict noticed", func() bool {
		return strings.Contains(e.log.String(), "two trust sources hold an entity of the same name")
	})
	impostor := dropped.leaf(t, "globex-a")
	if r := e.do(e.freshClient(&impostor), "POST", "/heartbeat", heartbeat("globex-a", 9100)); r.code != http.StatusForbidden || r.reason() != "entity_name_taken" {
		t.Errorf("the trust dir's globex registering: %s, want 403 entity_name_taken", r)
	}
	own := registered.leaf(t, "globex-b")
	if r := e.do(e.freshClient(&own), "POST", "/heartbeat", heartbeat("globex-b", 9101)); r.code != http.StatusOK {
		t.Errorf("the registered globex registering: %s, want 200", r)
	}

	acmeFile, acmeReg := newTestCA(t, "acme CA"), newTestCA(t, "another acme CA")
	e.extraKeys = append(e.extraKeys, acmeFile.keyPEM, acmeReg.keyPEM)
	if err := pemfile.WriteAtomic(filepath.Join(e.trustDir, "entities", "acme.pem"), acmeFile.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	acme := acmeFile.leaf(t, "acme-a")
	eventually.True(t, "acme from the trust dir", func() bool {
		return e.do(e.freshClient(&acme), "POST", "/heartbeat", heartbeat("acme-a", 9102)).code == http.StatusOK
	})
	r := e.adminDo("POST", "/admin/entities", map[string]any{"name": "acme", "ca_cert": string(acmeReg.pem)})
	if r.code != http.StatusConflict || !strings.Contains(string(r.body), "filestore") {
		t.Errorf("registering acme, which the trust dir holds: %s, want 409 naming filestore", r)
	}
	if got := e.metrics()[`meshd_refusals_total{reason="entity_name_taken"}`]; got < 2 {
		t.Errorf("meshd_refusals_total{reason=\"entity_name_taken\"} = %v, want at least 2", got)
	}
}
