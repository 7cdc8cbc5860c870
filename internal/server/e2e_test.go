package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The end-to-end tests run meshd as it runs in production: real TLS on a
// loopback port, a real mesh CA and SQLite store in a temporary directory,
// the admin API on a unix socket. Every env checks at cleanup that its log
// is structured and holds no private key.

func TestE2ETLSModeOff(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSOff})
	c := &http.Client{Timeout: 5 * time.Second}
	r := e.do(c, "POST", "/heartbeat", heartbeat("plain", 9001, "echo"))
	if r.code != http.StatusOK || r.json(t)["status"] != "success" {
		t.Fatalf("POST /heartbeat over plain HTTP: %s", r)
	}
	l := e.agents(c, "")
	a, ok := l.find("plain")
	if !ok || a.Status != "healthy" || a.Endpoint != "http://127.0.0.1:9001" || a.Owner != "" {
		t.Errorf("GET /agents: %+v", l.Agents)
	}
	if !e.log.hasRecord(t, "WARN", "TLS IS OFF") {
		t.Errorf("no loud warning that TLS is off; log:\n%s", e.log)
	}
}

func TestE2ETLSModeStrict(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	r := e.do(e.client(nil), "GET", "/health", nil)
	if r.code != http.StatusForbidden || r.json(t)["error"] != "client certificate required" {
		t.Errorf("certless GET /health in strict: %s, want 403 client certificate required", r)
	}
	cert, _ := agentCert(t, e.ca.auth, "a1", "n1")
	if r := e.do(e.client(&cert), "GET", "/health", nil); r.code != http.StatusOK {
		t.Errorf("GET /health with a certificate in strict: %s", r)
	}
}

func TestE2EFailFast(t *testing.T) {
	m := newMeshCA(t, t.TempDir())
	t.Cleanup(func() { m.st.Close() })
	ctx := context.Background()
	for _, mode := range []server.TLSMode{server.TLSAuto, server.TLSStrict, ""} {
		_, err := meshd.New(ctx, meshd.Config{Config: server.Config{Listen: "127.0.0.1:0", TLSMode: mode}}, m.st, m.auth)
		if err == nil || !strings.Contains(err.Error(), "MCP_MESH_TLS_CERT") || !strings.Contains(err.Error(), "MCP_MESH_TLS_KEY") {
			t.Errorf("mode %q without a certificate: err = %v, want one naming MCP_MESH_TLS_CERT and MCP_MESH_TLS_KEY", mode, err)
		}
	}
	for _, s := range []string{"STRICT", "bogus", "Auto", " off"} {
		if m, err := server.ParseTLSMode(s); err == nil {
			t.Errorf("ParseTLSMode(%q) = %q, want an error", s, m)
		}
		if _, err := meshd.New(ctx, meshd.Config{Config: server.Config{TLSMode: server.TLSMode(s)}}, m.st, m.auth); err == nil {
			t.Errorf("server.New with TLS mode %q: no error", s)
		}
	}
	for _, s := range []string{"off", "auto", "strict"} {
		if got, err := server.ParseTLSMode(s); err != nil || string(got) != s {
			t.Errorf("ParseTLSMode(%q) = %q, %v", s, got, err)
		}
	}
	for _, b := range [][]string{{"bogus"}, {"localca", "nope"}, {"localca", "localca"}, {"filestore"}} {
		_, err := meshd.New(ctx, meshd.Config{Config: server.Config{TLSMode: server.TLSOff}, Backends: b}, m.st, m.auth)
		if err == nil {
			t.Errorf("backends %q: no error", b)
		} else {
			t.Logf("backends %q: %v", b, err)
		}
	}
}

func TestE2ERefusedCertificates(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto})
	ctx := context.Background()

	other := newMeshCA(t, t.TempDir()) // an independent mesh CA
	t.Cleanup(func() { other.st.Close() })
	foreign, _ := agentCert(t, other.auth, "foreign", "n1")

	expired, _ := agentCert(t, e.ca.shifted(t, -caPast, 24*time.Hour), "old", "n1")
	future, _ := agentCert(t, e.ca.shifted(t, 10*24*time.Hour, 0), "future", "n1")

	revoked, revokedCert := agentCert(t, e.ca.auth, "gone", "n1")
	if _, err := e.ca.auth.Revoke(ctx, revokedCert.SerialNumber.Text(16), 1); err != nil {
		t.Fatal(err)
	}

	inter, interKey := e.ca.intermediate(t)
	serverOnly := signLeaf(t, inter, interKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "srv@n1"},
		URIs:        []*url.URL{{Scheme: "spiffe", Host: "mesh.local", Path: "/agent/n1/srv"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	caAsLeaf := tls.Certificate{Certificate: [][]byte{inter.Raw}, PrivateKey: interKey}

	cases := []struct {
		name, agent, reason string
		cert                tls.Certificate
	}{
		{"unknown CA", "foreign", "unknown_ca", foreign},
		{"expired", "old", "expired", expired},
		{"not yet valid", "future", "not_yet_valid", future},
		{"revoked", "gone", "revoked", revoked},
		{"server-only EKU", "srv", "not_client_cert", serverOnly},
		{"CA as leaf", "x", "ca_as_leaf", caAsLeaf},
	}
	// The offline revocation above reaches meshd through the store poll.
	eventually.True(t, "revocation applied", func() bool {
		return e.do(e.freshClient(&revoked), "GET", "/agents", nil).code == http.StatusForbidden
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.freshClient(&tc.cert)
			for _, rq := range []struct{ method, path string }{{"POST", "/heartbeat"}, {"GET", "/agents"}, {"GET", "/health"}} {
				var body any
				if rq.method == "POST" {
					body = heartbeat(tc.agent, 9001)
				}
				r := e.do(c, rq.method, rq.path, body)
				if r.code != http.StatusForbidden || r.reason() != tc.reason {
					t.Errorf("%s %s: %s, want 403 reason %s", rq.method, rq.path, r, tc.reason)
				}
			}
		})
	}
	if r := e.adminDo("GET", "/admin/agents", nil); r.code != http.StatusOK || !strings.Contains(string(r.body), `"agents":null`) {
		t.Errorf("a refused certificate registered something: %s", r)
	}
}

func TestE2EIdentityMismatch(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	victim := e.registeredAgent("victim", "n1", 9001, "weather")
	before, _ := e.agents(victim, "").find("victim")

	attackerCert, _ := agentCert(t, e.ca.auth, "attacker", "n1")
	sameNameCert, _ := agentCert(t, e.ca.auth, "victim", "n2") // same agent name, other node
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		reason string
	}{
		{"other agent", attackerCert, "identity_mismatch"},
		{"same name on another node", sameNameCert, "owned_by_other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.client(&tc.cert)
			evil := heartbeat("victim", 6666, "evil")
			for _, rq := range []struct {
				method, path string
				body         any
			}{
				{"POST", "/heartbeat", evil},
				{"HEAD", "/heartbeat/victim", nil},
				{"DELETE", "/agents/victim", nil},
			} {
				r := e.do(c, rq.method, rq.path, rq.body)
				if r.code != http.StatusForbidden || r.reason() != tc.reason {
					t.Errorf("%s %s: %s (X-Reason %q), want 403 %s", rq.method, rq.path, r, r.header.Get("X-Reason"), tc.reason)
				}
			}
		})
	}
	after, ok := e.agents(victim, "").find("victim")
	if !ok || after.Status != "healthy" || after.Endpoint != before.Endpoint || after.Owner != "victim@n1" ||
		len(after.Capabilities) != 1 || after.Capabilities[0].Name != "weather" {
		t.Errorf("victim changed: before %+v, after %+v", before, after)
	}
	if r := e.do(victim, "HEAD", "/heartbeat/victim", nil); r.code != http.StatusOK {
		t.Errorf("victim's HEAD after the attempts: %d, want 200", r.code)
	}
}

func TestE2EEntityTakeover(t *testing.T) {
	// meshd refuses to register overlapping entity names, but another tool
	// can drop one into the trust dir: the first claim still protects the
	// id.
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true})
	acme, acmeCorp := newTestCA(t, "acme CA"), newTestCA(t, "acme-corp CA")
	e.registerEntity("acme", acme)
	if err := pemfile.WriteAtomic(filepath.Join(e.trustDir, "entities", "acme-corp.pem"), acmeCorp.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "acme-corp from the trust dir", func() bool {
		c := acmeCorp.leaf(t, "acme-corp-probe")
		return e.do(e.freshClient(&c), "GET", "/agents", nil).code == http.StatusOK
	})

	ownerCert := acmeCorp.leaf(t, "acme-corp-x")
	owner := e.client(&ownerCert)
	if r := e.do(owner, "POST", "/heartbeat", heartbeat("acme-corp-x", 9100, "billing")); r.code != http.StatusOK {
		t.Fatal(r)
	}
	thiefCert := acme.leaf(t, "acme-corp-x") // inside "acme-" too
	thief := e.client(&thiefCert)
	for _, rq := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/heartbeat", heartbeat("acme-corp-x", 6666, "steal")},
		{"HEAD", "/heartbeat/acme-corp-x", nil},
		{"DELETE", "/agents/acme-corp-x", nil},
	} {
		r := e.do(thief, rq.method, rq.path, rq.body)
		if r.code != http.StatusForbidden || r.reason() != "owned_by_other_entity" {
			t.Errorf("acme's %s %s: %s (X-Reason %q), want 403 owned_by_other_entity", rq.method, rq.path, r, r.header.Get("X-Reason"))
		}
	}
	// Outside its namespace: acme-corp cannot name acme's ids the other way round either.
	intruder := acmeCorp.leaf(t, "acme-y")
	if r := e.do(e.client(&intruder), "POST", "/heartbeat", heartbeat("acme-y", 1)); r.code != http.StatusForbidden || r.reason() != "outside_namespace" {
		t.Errorf("acme-corp registering acme-y: %s, want 403 outside_namespace", r)
	}
	a, ok := e.agents(owner, "").find("acme-corp-x")
	if !ok || a.EntityID != "acme-corp" || a.Owner != "acme-corp-x" || a.Status != "healthy" || a.Endpoint != "https://127.0.0.1:9100" ||
		len(a.Capabilities) != 1 || a.Capabilities[0].Name != "billing" {
		t.Errorf("owner changed: %+v", a)
	}
}

func TestE2EAdminRoutesNotOnAgentPort(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto})
	cert, _ := agentCert(t, e.ca.auth, "a1", "n1")
	for _, c := range []*http.Client{e.client(&cert), e.client(nil)} {
		for _, rq := range []struct{ method, path, body string }{
			{"GET", "/admin/entities", ""},
			{"POST", "/admin/entities", `{"name":"evil","ca_cert":"x"}`},
			{"DELETE", "/admin/entities/acme", ""},
			{"POST", "/admin/rotate", ""},
			{"POST", "/admin/rotate?entity_id=acme", ""},
			{"POST", "/admin/revoke", `{"target":"a1@n1"}`},
			{"GET", "/admin/agents", ""},
			{"GET", "/metrics", ""},
		} {
			if r := e.do(c, rq.method, rq.path, rq.body); r.code != http.StatusNotFound {
				t.Errorf("%s %s on the agent port: %s, want 404", rq.method, rq.path, r)
			}
		}
	}
	// Still served where they belong.
	if r := e.adminDo("GET", "/admin/entities", nil); r.code != http.StatusOK {
		t.Errorf("GET /admin/entities on the admin socket: %s", r)
	}
}

func TestE2EFilestoreHotReload(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true})
	partner := newTestCA(t, "partner CA")
	e.extraKeys = append(e.extraKeys, partner.keyPEM)
	partnerCert := partner.leaf(t, "partner-a")
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
	observer := e.client(&obsCert)

	if r := e.do(e.freshClient(&partnerCert), "POST", "/heartbeat", heartbeat("partner-a", 9200)); r.code != http.StatusForbidden || r.reason() != "unknown_ca" {
		t.Fatalf("partner before its CA file exists: %s, want 403 unknown_ca", r)
	}
	file := filepath.Join(e.trustDir, "entities", "partner.pem")
	if err := pemfile.WriteAtomic(file, partner.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	var conn *rawConn
	start := time.Now()
	eventually.True(t, "partner admitted after its CA file was written", func() bool {
		c := e.dial(&partnerCert)
		r, err := c.do("POST", "/heartbeat", heartbeat("partner-a", 9200))
		if err == nil && r.code == http.StatusOK {
			conn = c
			return true
		}
		c.conn.Close()
		return false
	})
	t.Logf("partner admitted %v after its CA file was written", time.Since(start))
	a, ok := e.agents(observer, "").find("partner-a")
	if !ok || a.EntityID != "partner" || a.Status != "healthy" {
		t.Fatalf("partner-a listed as %+v", a)
	}
	if r := conn.mustDo("HEAD", "/heartbeat/partner-a", nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
		t.Fatalf("HEAD on the open connection: %s", r)
	}

	start = time.Now()
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	closedAt, err := conn.awaitClose()
	if err != nil {
		t.Fatalf("partner's open connection after its CA file was removed: %v", err)
	}
	eventually.True(t, "partner-a listed evicted", func() bool {
		a, _ := e.agents(observer, "").find("partner-a")
		return a.Status == "evicted" && a.Reason != ""
	})
	t.Logf("CA file removed: connection closed after %v, agent listed evicted after %v", closedAt.Sub(start), time.Since(start))
	if r := e.do(e.freshClient(&partnerCert), "HEAD", "/heartbeat/partner-a", nil); r.code != http.StatusForbidden {
		t.Errorf("partner's next request: %s, want 403", r)
	}
	if r := e.do(e.freshClient(&partnerCert), "POST", "/heartbeat", heartbeat("partner-a", 9200)); r.code != http.StatusForbidden || r.reason() != "unknown_ca" {
		t.Errorf("partner's next POST: %s, want 403 unknown_ca", r)
	}
}

func TestE2EBackendChaining(t *testing.T) {
	for _, tc := range []struct {
		backends    []string
		partnerCode int
	}{
		{[]string{"filestore", "localca"}, http.StatusOK},
		{[]string{"localca", "filestore"}, http.StatusOK},
		{[]string{"localca"}, http.StatusForbidden},
	} {
		t.Run(strings.Join(tc.backends, ","), func(t *testing.T) {
			e := newEnv(t, envOptions{mode: server.TLSStrict, backends: tc.backends, trustDir: true})
			partner := newTestCA(t, "partner CA")
			e.extraKeys = append(e.extraKeys, partner.keyPEM)
			if err := pemfile.WriteAtomic(filepath.Join(e.trustDir, "entities", "partner.pem"), partner.pem, 0o644); err != nil {
				t.Fatal(err)
			}
			if slices.Contains(tc.backends, "filestore") {
				// The file may have been written after the first load.
				e.restart()
			}
			meshCert, _ := agentCert(t, e.ca.auth, "mesh-a", "n1")
			mesh := e.client(&meshCert)
			if r := e.do(mesh, "POST", "/heartbeat", heartbeat("mesh-a", 9300)); r.code != http.StatusOK {
				t.Errorf("mesh agent: %s", r)
			}
			pc := partner.leaf(t, "partner-b")
			r := e.do(e.client(&pc), "POST", "/heartbeat", heartbeat("partner-b", 9301))
			if r.code != tc.partnerCode {
				t.Fatalf("filestore entity agent: %s, want %d", r, tc.partnerCode)
			}
			l := e.agents(mesh, "")
			if tc.partnerCode != http.StatusOK {
				if r.reason() != "unknown_ca" {
					t.Errorf("filestore entity agent with localca only: reason %q, want unknown_ca", r.reason())
				}
				if !slices.Equal(l.ids(), []string{"mesh-a"}) {
					t.Errorf("agents: %v", l.ids())
				}
				return
			}
			m, _ := l.find("mesh-a")
			p, _ := l.find("partner-b")
			if m.EntityID != "" || p.EntityID != "partner" {
				t.Errorf("entities: mesh-a %q, partner-b %q", m.EntityID, p.EntityID)
			}
		})
	}
}

// TestE2EEviction revokes an agent with an open keep-alive connection
// three ways and checks that the server closes the connection, lists the
// agent evicted with a reason and refuses it, and touches nobody else. How
// soon it does (the one-second service level) is bench/cmd/revlat's to
// measure (BENCHMARKS.md, "Revocation to refusal"); the times are logged.
func TestE2EEviction(t *testing.T) {
	type victim struct {
		id   string
		cert tls.Certificate
	}
	for _, tc := range []struct {
		name   string
		reason string
		// sync: the eviction is done when the admin API answers.
		sync   bool
		setup  func(t *testing.T, e *env) victim
		revoke func(t *testing.T, e *env, v victim)
	}{
		{
			name: "admin revokes the certificate", reason: "revoked", sync: true,
			setup: func(t *testing.T, e *env) victim {
				c, _ := agentCert(t, e.ca.auth, "doomed", "n1")
				return victim{"doomed", c}
			},
			revoke: func(t *testing.T, e *env, v victim) {
				r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": serialOf(v.cert), "reason": "keyCompromise"})
				if r.code != http.StatusOK {
					t.Fatalf("POST /admin/revoke: %s", r)
				}
			},
		},
		{
			name: "admin revokes the entity", reason: "entity_revoked", sync: true,
			setup: func(t *testing.T, e *env) victim {
				acme := newTestCA(t, "acme CA")
				e.registerEntity("acme", acme)
				return victim{"acme-doomed", acme.leaf(t, "acme-doomed")}
			},
			revoke: func(t *testing.T, e *env, v victim) {
				r := e.adminDo("DELETE", "/admin/entities/acme", nil)
				if r.code != http.StatusOK || r.json(t)["evicted_agents"] != 1.0 {
					t.Fatalf("DELETE /admin/entities/acme: %s", r)
				}
			},
		},
		{
			name: "meshctl ca revoke offline", reason: "revoked",
			setup: func(t *testing.T, e *env) victim {
				c, _ := agentCert(t, e.ca.auth, "doomed", "n1")
				return victim{"doomed", c}
			},
			revoke: func(t *testing.T, e *env, v victim) { e.revokeOffline(serialOf(v.cert)) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{mode: server.TLSStrict, poll: 20 * time.Millisecond})
			v := tc.setup(t, e)
			obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
			observer := e.client(&obsCert)
			bystanderCert, _ := agentCert(t, e.ca.auth, "bystander", "n1")
			bystander := e.dial(&bystanderCert)
			if r := bystander.mustDo("POST", "/heartbeat", heartbeat("bystander", 9401)); r.code != http.StatusOK {
				t.Fatal(r)
			}

			conn := e.dial(&v.cert)
			if r := conn.mustDo("POST", "/heartbeat", heartbeat(v.id, 9400, "doom")); r.code != http.StatusOK {
				t.Fatalf("victim registers: %s", r)
			}
			if r := conn.mustDo("HEAD", "/heartbeat/"+v.id, nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
				t.Fatalf("victim HEAD: %s", r)
			}

			start := time.Now()
			closed := make(chan error, 1)
			var closedAt time.Time
			go func() {
				at, err := conn.awaitClose()
				closedAt = at
				closed <- err
			}()
			tc.revoke(t, e, v)
			if a, _ := e.agents(observer, "").find(v.id); tc.sync && a.Status != "evicted" {
				t.Errorf("the admin API answered before evicting: %+v", a)
			}
			if err := <-closed; err != nil {
				t.Fatalf("victim's open connection: %v", err)
			}
			connLatency := closedAt.Sub(start)

			var listed agentView
			eventually.True(t, "victim listed evicted", func() bool {
				listed, _ = e.agents(observer, "").find(v.id)
				return listed.Status == "evicted"
			})
			evictLatency := time.Since(start)
			if listed.Reason == "" {
				t.Errorf("evicted without a reason: %+v", listed)
			}
			r := e.do(e.freshClient(&v.cert), "POST", "/heartbeat", heartbeat(v.id, 9400, "doom"))
			if r.code != http.StatusForbidden || r.reason() != tc.reason {
				t.Errorf("victim's new connection: %s, want 403 reason %s", r, tc.reason)
			}
			t.Logf("%s: connection closed after %v, listed evicted (%q) after %v", tc.name, connLatency, listed.Reason, evictLatency)

			// Nobody else was touched.
			if r := bystander.mustDo("HEAD", "/heartbeat/bystander", nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
				t.Errorf("bystander's HEAD on its open connection: %s", r)
			}
			if b, _ := e.agents(observer, "").find("bystander"); b.Status != "healthy" {
				t.Errorf("bystander: %+v", b)
			}
			if r := e.do(e.freshClient(&v.cert), "HEAD", "/heartbeat/"+v.id, nil); r.code != http.StatusForbidden {
				t.Errorf("victim's HEAD after eviction: %d, want 403", r.code)
			}
		})
	}
}

func TestE2ERestart(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	acme, globex := newTestCA(t, "acme CA"), newTestCA(t, "globex CA")
	e.registerEntity("acme", acme)
	e.registerEntity("globex", globex)

	meshCert, _ := agentCert(t, e.ca.auth, "mesh-a", "n1")
	downCert, _ := agentCert(t, e.ca.auth, "mesh-b", "n1")
	acmeCert := acme.leaf(t, "acme-a")
	globexCert := globex.leaf(t, "globex-a")
	hbMesh := heartbeat("mesh-a", 9500, "geo")
	for _, a := range []struct {
		cert tls.Certificate
		hb   map[string]any
	}{{meshCert, hbMesh}, {downCert, heartbeat("mesh-b", 9504)}, {acmeCert, heartbeat("acme-a", 9501)}, {globexCert, heartbeat("globex-a", 9502)}} {
		if r := e.do(e.freshClient(&a.cert), "POST", "/heartbeat", a.hb); r.code != http.StatusOK {
			t.Fatal(r)
		}
	}
	if r := e.adminDo("DELETE", "/admin/entities/globex", nil); r.code != http.StatusOK {
		t.Fatal(r)
	}

	// mesh-b's certificate is revoked while meshd is down.
	e.restart(func() { e.revokeOffline(serialOf(downCert)) })

	mesh := e.freshClient(&meshCert)
	l := e.agents(mesh, "")
	want := map[string][3]string{ // id -> entity, owner, status
		"mesh-a":   {"", "mesh-a@n1", "healthy"},
		"mesh-b":   {"", "mesh-b@n1", "evicted"},
		"acme-a":   {"acme", "acme-a", "healthy"},
		"globex-a": {"globex", "globex-a", "evicted"},
	}
	if len(l.Agents) != len(want) {
		t.Errorf("after restart: agents %v", l.ids())
	}
	for id, w := range want {
		a, ok := l.find(id)
		if !ok || a.EntityID != w[0] || a.Owner != w[1] || a.Status != w[2] {
			t.Errorf("after restart %s: %+v, want entity %q owner %q status %q", id, a, w[0], w[1], w[2])
		}
	}
	r := e.adminDo("GET", "/admin/entities", nil)
	var ents struct {
		Entities []struct{ Name, Status string }
	}
	if err := json.Unmarshal(r.body, &ents); err != nil || r.code != http.StatusOK {
		t.Fatalf("GET /admin/entities: %s", r)
	}
	gotEnts := fmt.Sprint(ents.Entities)
	if gotEnts != "[{acme active} {globex revoked}]" {
		t.Errorf("entities after restart: %s", gotEnts)
	}
	if r := e.do(e.freshClient(&globexCert), "POST", "/heartbeat", heartbeat("globex-a", 9502)); r.code != http.StatusForbidden || r.reason() != "entity_revoked" {
		t.Errorf("revoked entity's agent after restart: %s, want 403 entity_revoked", r)
	}
	if r := e.do(e.freshClient(&downCert), "HEAD", "/heartbeat/mesh-b", nil); r.code != http.StatusForbidden {
		t.Errorf("agent revoked while meshd was down: HEAD %d, want 403", r.code)
	}
	if r := e.do(mesh, "POST", "/heartbeat", hbMesh); r.code != http.StatusOK {
		t.Errorf("unchanged heartbeat after restart: %s", r)
	}
	if r := e.do(mesh, "HEAD", "/heartbeat/mesh-a", nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
		t.Errorf("HEAD after restart: %d", r.code)
	}
	if r := e.do(e.freshClient(&acmeCert), "HEAD", "/heartbeat/acme-a", nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
		t.Errorf("acme-a HEAD after restart: %d", r.code)
	}

	// The revoked entity's CA registered again under a new name belongs to
	// the new entity, not to the revoked one.
	e.registerEntity("globex2", globex)
	g2 := globex.leaf(t, "globex2-a")
	if r := e.do(e.freshClient(&g2), "POST", "/heartbeat", heartbeat("globex2-a", 9503)); r.code != http.StatusOK {
		t.Errorf("agent of the re-registered CA: %s", r)
	} else if a, _ := e.agents(mesh, "").find("globex2-a"); a.EntityID != "globex2" {
		t.Errorf("agent of the re-registered CA listed as %+v", a)
	}
}

func TestE2EServerCertificateReload(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	cert, _ := agentCert(t, e.ca.auth, "a1", "n1")
	old := e.dial(&cert)
	if r := old.mustDo("POST", "/heartbeat", heartbeat("a1", 9600)); r.code != http.StatusOK {
		t.Fatal(r)
	}
	oldSerial := old.conn.ConnectionState().PeerCertificates[0].SerialNumber
	is, err := e.ca.auth.Sign(context.Background(), ca.NodeRequest("meshd", "localhost", "IP:127.0.0.1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	if is.Cert.SerialNumber.Cmp(oldSerial) == 0 {
		t.Fatal("re-issue kept the serial")
	}
	start := time.Now()
	eventually.True(t, "a new connection sees the new server certificate", func() bool {
		c := e.dial(&cert)
		defer c.conn.Close()
		return c.conn.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(is.Cert.SerialNumber) == 0
	})
	t.Logf("new server certificate served after %v", time.Since(start))
	if r := old.mustDo("HEAD", "/heartbeat/a1", nil); r.code != http.StatusOK {
		t.Errorf("old connection after the reload: %s", r)
	}
	if s := old.conn.ConnectionState().PeerCertificates[0].SerialNumber; s.Cmp(oldSerial) != 0 {
		t.Errorf("old connection's certificate changed")
	}
	if !e.log.hasRecord(t, "INFO", "reloaded credentials") { // logged by the server certificate's file Source
		t.Errorf("reload not logged")
	}
}

func TestE2EEntityRotate(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	acmeCorp := newTestCA(t, "acme-corp CA")
	e.registerEntity("acme-corp", acmeCorp)
	oldCert := acmeCorp.leaf(t, "acme-corp-x")
	old := e.client(&oldCert)
	hb := heartbeat("acme-corp-x", 9700)
	if r := e.do(old, "POST", "/heartbeat", hb); r.code != http.StatusOK {
		t.Fatal(r)
	}
	if r := e.do(old, "HEAD", "/heartbeat/acme-corp-x", nil); r.code != http.StatusOK {
		t.Fatalf("HEAD before rotation: %d", r.code)
	}
	r := e.adminDo("POST", "/admin/rotate?entity_id=acme-corp", nil)
	if r.code != http.StatusOK {
		t.Fatal(r)
	}
	if m := r.json(t); m["affected_agents"] != 1.0 || m["entity_id"] != "acme-corp" {
		t.Errorf("POST /admin/rotate: %s", r)
	}
	for i := 0; i < 2; i++ {
		if r := e.do(old, "HEAD", "/heartbeat/acme-corp-x", nil); r.code != http.StatusAccepted {
			t.Errorf("HEAD after rotation: %d, want 202", r.code)
		}
	}
	// One POST acknowledges the request, as in MCP Mesh, whose agents
	// re-POST with the certificate they have: it hears rotate once, and
	// HEAD is 200 again.
	r = e.do(old, "POST", "/heartbeat", hb)
	if r.code != http.StatusOK || r.json(t)["rotate"] != true {
		t.Errorf("POST with the old certificate: %s, want rotate true", r)
	}
	if r := e.do(old, "HEAD", "/heartbeat/acme-corp-x", nil); r.code != http.StatusOK {
		t.Errorf("HEAD after the POST that acknowledged the rotation: %d, want 200", r.code)
	}
	if r := e.do(old, "POST", "/heartbeat", hb); r.code != http.StatusOK || r.json(t)["rotate"] != false {
		t.Errorf("second POST with the old certificate: %s, want rotate false", r)
	}
	// A rotation acknowledged by a fresh certificate says nothing more.
	if r := e.adminDo("POST", "/admin/rotate?entity_id=acme-corp", nil); r.code != http.StatusOK {
		t.Fatal(r)
	}
	freshCert := acmeCorp.leaf(t, "acme-corp-x")
	fresh := e.client(&freshCert)
	r = e.do(fresh, "POST", "/heartbeat", hb)
	if r.code != http.StatusOK || r.json(t)["rotate"] != false {
		t.Errorf("POST with a fresh certificate: %s, want rotate false", r)
	}
	if r := e.do(fresh, "HEAD", "/heartbeat/acme-corp-x", nil); r.code != http.StatusOK {
		t.Errorf("HEAD after re-registering with a fresh certificate: %d, want 200", r.code)
	}
	if r := e.adminDo("POST", "/admin/rotate?entity_id=nobody", nil); r.code != http.StatusNotFound {
		t.Errorf("rotating an unknown entity: %s, want 404", r)
	}
}

func TestE2EHeadSemantics(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	aCert, _ := agentCert(t, e.ca.auth, "alpha", "n1")
	a := e.client(&aCert)
	hbA := heartbeat("alpha", 9800, "geo")
	if r := e.do(a, "POST", "/heartbeat", hbA); r.code != http.StatusOK {
		t.Fatal(r)
	}
	head := func(c *http.Client, id string) int { return e.do(c, "HEAD", "/heartbeat/"+id, nil).code }
	if got := head(a, "alpha"); got != http.StatusOK {
		t.Errorf("HEAD with nothing changed: %d, want 200", got)
	}
	// gamma depends on notify, which nobody offers yet.
	gCert, _ := agentCert(t, e.ca.auth, "gamma", "n1")
	g := e.client(&gCert)
	hbG := heartbeat("gamma", 9803)
	hbG["tools"] = []map[string]any{{"function_name": "fn_g", "capability": "g", "dependencies": []map[string]any{{"capability": "notify"}}}}
	if r := e.do(g, "POST", "/heartbeat", hbG); r.code != http.StatusOK {
		t.Fatal(r)
	}
	bCert, _ := agentCert(t, e.ca.auth, "beta", "n1")
	if r := e.do(e.client(&bCert), "POST", "/heartbeat", heartbeat("beta", 9801, "notify")); r.code != http.StatusOK {
		t.Fatal(r)
	}
	// beta's arrival changes gamma's POST answer, not alpha's: only the
	// dependent is asked to POST, until it does.
	for i := 0; i < 3; i++ {
		if got := head(a, "alpha"); got != http.StatusOK {
			t.Errorf("alpha's HEAD #%d after an agent it does not depend on registered: %d, want 200", i+1, got)
		}
		if got := head(g, "gamma"); got != http.StatusAccepted {
			t.Errorf("gamma's HEAD #%d after its provider registered: %d, want 202", i+1, got)
		}
	}
	if r := e.do(g, "POST", "/heartbeat", hbG); r.code != http.StatusOK || !strings.Contains(string(r.body), `"agent_id":"beta"`) {
		t.Fatalf("gamma's POST after its 202: %s, want beta as its provider", r)
	}
	if got := head(g, "gamma"); got != http.StatusOK {
		t.Errorf("HEAD after POSTing again: %d, want 200", got)
	}

	ghostCert, _ := agentCert(t, e.ca.auth, "ghost", "n1")
	if r := e.do(e.client(&ghostCert), "HEAD", "/heartbeat/ghost", nil); r.code != http.StatusGone {
		t.Errorf("HEAD for an unknown id: %d, want 410", r.code)
	}

	// An evicted agent: its first certificate is revoked; a renewed one
	// (same identity, new serial) may still speak for it, and hears 410.
	evCert, _ := agentCert(t, e.ca.auth, "evictee", "n1")
	if r := e.do(e.client(&evCert), "POST", "/heartbeat", heartbeat("evictee", 9802)); r.code != http.StatusOK {
		t.Fatal(r)
	}
	renewed, _ := agentCert(t, e.ca.auth, "evictee", "n1")
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": serialOf(evCert), "reason": "superseded"}); r.code != http.StatusOK {
		t.Fatal(r)
	}
	ren := e.client(&renewed)
	r := e.do(ren, "HEAD", "/heartbeat/evictee", nil)
	if r.code != http.StatusGone || r.header.Get("X-Reason") != "evicted" {
		t.Errorf("HEAD for an evicted agent: %d (X-Reason %q), want 410 evicted", r.code, r.header.Get("X-Reason"))
	}
	// POSTing brings it back.
	if r := e.do(ren, "POST", "/heartbeat", heartbeat("evictee", 9802)); r.code != http.StatusOK {
		t.Errorf("evicted agent re-registers with its renewed certificate: %s", r)
	} else if got := head(ren, "evictee"); got != http.StatusOK {
		t.Errorf("HEAD after re-registering: %d, want 200", got)
	}

	// A deleted agent is gone too.
	if r := e.do(e.client(&bCert), "DELETE", "/agents/beta", nil); r.code != http.StatusNoContent {
		t.Errorf("DELETE own agent: %s", r)
	}
	if got := head(e.client(&bCert), "beta"); got != http.StatusGone {
		t.Errorf("HEAD after DELETE: %d, want 410", got)
	}
}

func TestE2EAgentsFilters(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
	obs := e.client(&obsCert)
	r := e.do(obs, "GET", "/agents", nil)
	if r.code != http.StatusOK || !strings.Contains(string(r.body), `"agents":null`) || r.json(t)["count"] != 0.0 {
		t.Errorf("empty registry: %s, want \"agents\":null", r)
	}

	acme := newTestCA(t, "acme CA")
	e.registerEntity("acme", acme)
	reg := func(cert tls.Certificate, id string, caps ...string) {
		t.Helper()
		if r := e.do(e.freshClient(&cert), "POST", "/heartbeat", heartbeat(id, 9900, caps...)); r.code != http.StatusOK {
			t.Fatal(r)
		}
	}
	geo, _ := agentCert(t, e.ca.auth, "geo", "n1")
	reg(geo, "geo", "geocode")
	wx, _ := agentCert(t, e.ca.auth, "weather", "n1")
	reg(wx, "weather", "forecast", "alerts")
	reg(acme.leaf(t, "acme-notify"), "acme-notify", "notify")
	old, _ := agentCert(t, e.ca.auth, "old", "n1")
	reg(old, "old", "geocode")
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": "old@n1"}); r.code != http.StatusOK {
		t.Fatal(r)
	}

	for _, tc := range []struct {
		q    string
		want []string
	}{
		{"", []string{"acme-notify", "geo", "old", "weather"}},
		{query("status", "healthy"), []string{"acme-notify", "geo", "weather"}},
		{query("status", "evicted"), []string{"old"}},
		{query("entity", "acme"), []string{"acme-notify"}},
		{query("capabilities", "geocode"), []string{"geo", "old"}},
		{query("capabilities", "geocode", "capabilities", "notify"), []string{"acme-notify", "geo", "old"}},
		{query("capabilities", "alerts", "status", "healthy"), []string{"weather"}},
		{query("capabilities", "nothing"), nil},
		{query("entity", "globex"), nil},
	} {
		r := e.do(obs, "GET", "/agents"+tc.q, nil)
		l := e.agents(obs, tc.q)
		if !slices.Equal(l.ids(), tc.want) {
			t.Errorf("GET /agents%s: %v, want %v", tc.q, l.ids(), tc.want)
		}
		if len(tc.want) == 0 && !strings.Contains(string(r.body), `"agents":null`) {
			t.Errorf("GET /agents%s with no match: %s, want \"agents\":null", tc.q, r.body)
		}
	}
}

func TestE2EMetrics(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	cert, leaf := agentCert(t, e.ca.auth, "m1", "n1")
	for i := 0; i < 3; i++ { // new connections: verifications after the first come from the cache
		if r := e.do(e.freshClient(&cert), "POST", "/heartbeat", heartbeat("m1", 9950)); r.code != http.StatusOK {
			t.Fatal(r)
		}
	}
	if r := e.do(e.freshClient(&cert), "HEAD", "/heartbeat/m1", nil); r.code != http.StatusOK {
		t.Fatal(r.code)
	}
	other := newMeshCA(t, t.TempDir())
	t.Cleanup(func() { other.st.Close() })
	foreign, _ := agentCert(t, other.auth, "f", "n1")
	e.do(e.freshClient(&foreign), "POST", "/heartbeat", heartbeat("f", 1))
	spy, _ := agentCert(t, e.ca.auth, "spy", "n1")
	e.do(e.freshClient(&spy), "POST", "/heartbeat", heartbeat("m1", 1))
	doomed, _ := agentCert(t, e.ca.auth, "doomed", "n1")
	e.do(e.freshClient(&doomed), "POST", "/heartbeat", heartbeat("doomed", 1))
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": "doomed@n1"}); r.code != http.StatusOK {
		t.Fatal(r)
	}

	m := e.metrics()
	for _, c := range []struct {
		name string
		ok   func(float64) bool
		want string
	}{
		{`meshd_heartbeats_total{code="200",method="post"}`, func(v float64) bool { return v == 4 }, "4"},
		{`meshd_heartbeats_total{code="200",method="head"}`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_refusals_total{reason="unknown_ca"}`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_refusals_total{reason="identity_mismatch"}`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_evictions_total{cause="certificate_revoked"}`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_verify_cache_hits_total`, func(v float64) bool { return v >= 3 }, ">= 3"},
		{`meshd_agent_certificate_expiry_timestamp_seconds{agent_id="m1",identity="m1@n1"}`, func(v float64) bool { return v == float64(leaf.NotAfter.Unix()) }, fmt.Sprint(leaf.NotAfter.Unix())},
		{`meshd_agents`, func(v float64) bool { return v == 2 }, "2"},
	} {
		v, ok := m[c.name]
		if !ok || !c.ok(v) {
			t.Errorf("%s = %v (present %v), want %s", c.name, v, ok, c.want)
		}
	}
	if v := m["meshd_server_certificate_expiry_timestamp_seconds"]; v < float64(time.Now().Unix()) {
		t.Errorf("server certificate expiry %v is in the past", v)
	}
}

// TestE2ENoSecretsInLogs drives registrations, refusals of every kind,
// entity registration (one pasted with its key by mistake) and
// revocations, then checks the log line by line. env's cleanup repeats the
// key check for every other test.
func TestE2ENoSecretsInLogs(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto, backends: []string{"localca", "filestore"}, trustDir: true})
	acme := newTestCA(t, "acme CA")
	e.extraKeys = append(e.extraKeys, acme.keyPEM)
	// An operator pastes the CA together with its key: the key must not
	// come back in any log line.
	r := e.adminDo("POST", "/admin/entities", map[string]any{"name": "acme", "ca_cert": string(acme.pem) + string(acme.keyPEM)})
	if r.code != http.StatusCreated {
		t.Fatalf("register acme: %s", r)
	}
	// A bad registration quoting a key.
	if r := e.adminDo("POST", "/admin/entities", map[string]any{"name": "bad", "ca_cert": string(acme.keyPEM)}); r.code != http.StatusBadRequest {
		t.Errorf("register a key as a CA: %s, want 400", r)
	}
	good, _ := agentCert(t, e.ca.auth, "good", "n1")
	withKey := heartbeat("good", 1)
	withKey["description"] = string(acme.keyPEM)
	e.do(e.freshClient(&good), "POST", "/heartbeat", withKey)
	e.do(e.freshClient(&good), "POST", "/heartbeat", heartbeat("other", 1))
	e.do(e.freshClient(nil), "POST", "/heartbeat", withKey)
	e.do(e.freshClient(&good), "POST", "/heartbeat", `{"agent_id":`+string(acme.keyPEM))
	al := acme.leaf(t, "acme-a")
	e.do(e.freshClient(&al), "POST", "/heartbeat", heartbeat("acme-a", 2))
	expired, _ := agentCert(t, e.ca.shifted(t, -caPast, 24*time.Hour), "old", "n1")
	e.do(e.freshClient(&expired), "POST", "/heartbeat", heartbeat("old", 3))
	inter, interKey := e.ca.intermediate(t)
	e.do(e.freshClient(&tls.Certificate{Certificate: [][]byte{inter.Raw}, PrivateKey: interKey}), "GET", "/agents", nil)
	e.adminDo("POST", "/admin/revoke", map[string]string{"target": "good@n1", "reason": "keyCompromise"})
	e.adminDo("DELETE", "/admin/entities/acme", nil)

	recs := e.log.records(t)
	if len(recs) < 10 {
		t.Fatalf("only %d log records; the scenario did not run", len(recs))
	}
	var refused, registered bool
	for _, rec := range recs {
		switch rec["msg"] {
		case "request refused":
			refused = true
		case "entity registered":
			registered = true
		}
	}
	if !refused || !registered {
		t.Errorf("log lacks the refusals (%v) or the registration (%v):\n%s", refused, registered, e.log)
	}
	e.checkLog()
}

// TestE2EEntityForeverCA: a partner CA that never expires (RFC 5280's
// 9999-12-31) registers, lists and admits its agents; the store records
// its expiry at the latest date it can hold.
func TestE2EEntityForeverCA(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	forever := newTestCAUntil(t, "forever CA", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC))
	e.registerEntity("eternal", forever)
	r := e.adminDo("GET", "/admin/entities", nil)
	if r.code != http.StatusOK || !strings.Contains(string(r.body), `"expires":"2262-`) {
		t.Fatalf("entity list: %s", r)
	}
	leaf := forever.leaf(t, "eternal-a")
	if got := e.do(e.client(&leaf), "POST", "/heartbeat", heartbeat("eternal-a", 0)); got.code != http.StatusOK {
		t.Fatalf("heartbeat of the forever entity's agent: %s", got)
	}
}

// TestE2ERestartAfterEntityReregistered: an entity revoked and then
// registered again stays trusted across a restart; replaying the old
// revocation event must not revoke it again.
func TestE2ERestartAfterEntityReregistered(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	acme := newTestCA(t, "acme CA")
	e.registerEntity("acme", acme)
	if r := e.adminDo("DELETE", "/admin/entities/acme", nil); r.code != http.StatusOK {
		t.Fatalf("revoke acme: %s", r)
	}
	e.registerEntity("acme", acme)
	leaf := acme.leaf(t, "acme-a")
	if r := e.do(e.client(&leaf), "POST", "/heartbeat", heartbeat("acme-a", 0)); r.code != http.StatusOK {
		t.Fatalf("heartbeat after re-registration: %s", r)
	}
	e.restart()
	if r := e.do(e.freshClient(&leaf), "POST", "/heartbeat", heartbeat("acme-a", 0)); r.code != http.StatusOK {
		t.Fatalf("heartbeat after restart: %s (the old revocation was replayed)", r)
	}
	if r := e.adminDo("GET", "/admin/entities", nil); !strings.Contains(string(r.body), `"status":"active"`) {
		t.Fatalf("entity list after restart: %s", r)
	}
}
