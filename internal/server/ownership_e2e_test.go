package server_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/pemfile"
)

// listedNode returns the node GET /agents, read with cert, shows for
// agent id.
func (e *env) listedNode(id string, cert *tls.Certificate) string {
	e.t.Helper()
	r := e.do(e.client(cert), "GET", "/agents", nil)
	if r.code != http.StatusOK {
		e.t.Fatalf("GET /agents: %s", r)
	}
	var l struct {
		Agents []struct{ ID, Node string }
	}
	if err := json.Unmarshal(r.body, &l); err != nil {
		e.t.Fatalf("GET /agents: %v: %s", err, r.body)
	}
	for _, a := range l.Agents {
		if a.ID == id {
			return a.Node
		}
	}
	e.t.Fatalf("GET /agents does not list %s: %s", id, r.body)
	return ""
}

// TestE2ETrustDirCACannotTakeMeshAgent: a top-level trust-dir CA (the
// mesh's own, entity "") issues a certificate with the CN of a mesh CA
// agent. It is admitted, but the agent's owner record binds the source
// that admitted its first claim, so it cannot take the agent. The first
// claim is audited once; neither unchanged heartbeats nor refusals add to
// the audit log.
func TestE2ETrustDirCACannotTakeMeshAgent(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true})
	opusCert, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	opus := e.client(&opusCert)
	seq := e.auditSeq()
	for range 3 {
		if r := e.do(opus, "POST", "/heartbeat", heartbeat("opus", 9100, "chat")); r.code != http.StatusOK {
			t.Fatal(r)
		}
	}
	if r := e.do(opus, "HEAD", "/heartbeat/opus", nil); r.code != http.StatusOK {
		t.Fatalf("HEAD: %s", r)
	}
	claims := e.audited(seq, "agent.claim", "ok", `owner "opus@ct111" (node ct111), the mesh's own CA, trust source "localca"`)
	if len(claims) != 1 || claims[0].Identity != "opus" {
		t.Fatalf("audit after the first claim and unchanged heartbeats: %+v, want one agent.claim of opus", e.audited(seq, "agent.claim", "ok", ""))
	}

	rogue := newTestCA(t, "trust-dir CA")
	e.extraKeys = append(e.extraKeys, rogue.keyPEM)
	if err := pemfile.WriteAtomic(filepath.Join(e.trustDir, "ops.pem"), rogue.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the trust-dir CA admitted", func() bool {
		c := rogue.leaf(t, "probe")
		return e.do(e.freshClient(&c), "GET", "/agents", nil).code == http.StatusOK
	})
	thiefCert := rogue.leaf(t, "opus@ct111")
	thief := e.client(&thiefCert)
	seq = e.auditSeq()
	for _, rq := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/heartbeat", heartbeat("opus", 6666, "steal")},
		{"HEAD", "/heartbeat/opus", nil},
		{"DELETE", "/agents/opus", nil},
	} {
		r := e.do(thief, rq.method, rq.path, rq.body)
		if r.code != http.StatusForbidden || r.reason() != "owned_by_other_source" {
			t.Errorf("the trust-dir certificate's %s %s: %s (X-Reason %q), want 403 owned_by_other_source", rq.method, rq.path, r, r.header.Get("X-Reason"))
		}
	}
	a, ok := e.agents(opus, "").find("opus")
	if !ok || a.Owner != "opus@ct111" || a.Status != "healthy" || a.Endpoint != "https://127.0.0.1:9100" {
		t.Errorf("opus after the takeover attempt: %+v", a)
	}
	if node := e.listedNode("opus", &opusCert); node != "ct111" {
		t.Errorf("GET /agents shows opus on node %q, want ct111", node)
	}
	if got := e.audited(seq, "agent.claim", "ok", ""); len(got) != 0 {
		t.Errorf("refused claims were audited as claims: %+v", got)
	}
	if r := e.do(opus, "POST", "/heartbeat", heartbeat("opus", 9100, "chat")); r.code != http.StatusOK {
		t.Errorf("the owner after the attempt: %s", r)
	}
}

// TestE2EDependenciesStayInsideTrustBoundary: a partner's agent offering a
// capability a mesh agent needs does not become its provider; a mesh
// agent's offer does, and the partner's own agents still use the
// partner's.
func TestE2EDependenciesStayInsideTrustBoundary(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	acme := newTestCA(t, "acme CA")
	e.registerEntity("acme", acme)
	consumer := func(id string) map[string]any {
		return map[string]any{"agent_id": id, "http_host": "127.0.0.1", "http_port": 9300, "tools": []map[string]any{{
			"function_name": "forecast", "capability": "weather",
			"dependencies": []map[string]any{{"capability": "geocode"}},
		}}}
	}
	provider := func(t *testing.T, c *http.Client, id string) {
		t.Helper()
		if r := e.do(c, "POST", "/heartbeat", heartbeat(id, 9200, "geocode")); r.code != http.StatusOK {
			t.Fatalf("%s registers: %s", id, r)
		}
	}
	resolved := func(t *testing.T, c *http.Client, id string) string {
		t.Helper()
		r := e.do(c, "POST", "/heartbeat", consumer(id))
		if r.code != http.StatusOK {
			t.Fatalf("%s: %s", id, r)
		}
		var res struct {
			Deps map[string][]struct {
				AgentID string `json:"agent_id"`
			} `json:"dependencies_resolved"`
		}
		if err := json.Unmarshal(r.body, &res); err != nil {
			t.Fatal(err)
		}
		if d := res.Deps["forecast"]; len(d) == 1 {
			return d[0].AgentID
		}
		t.Fatalf("%s: dependencies_resolved %s", id, r.body)
		return ""
	}
	acmeGeoCert := acme.leaf(t, "acme-geo")
	provider(t, e.client(&acmeGeoCert), "acme-geo")
	weatherCert, _ := agentCert(t, e.ca.auth, "weather", "n1")
	weather := e.client(&weatherCert)
	acmeWeatherCert := acme.leaf(t, "acme-weather")
	acmeWeather := e.client(&acmeWeatherCert)
	if got := resolved(t, weather, "weather"); got != "" {
		t.Errorf("the mesh agent's geocode resolved to %q, a partner's agent; want unresolved", got)
	}
	if got := resolved(t, acmeWeather, "acme-weather"); got != "acme-geo" {
		t.Errorf("acme's own agent's geocode resolved to %q, want acme-geo", got)
	}
	geoCert, _ := agentCert(t, e.ca.auth, "geo", "n2")
	provider(t, e.client(&geoCert), "geo")
	if got := resolved(t, weather, "weather"); got != "geo" {
		t.Errorf("the mesh agent's geocode resolved to %q, want geo", got)
	}
	if got := resolved(t, acmeWeather, "acme-weather"); got != "acme-geo" {
		t.Errorf("acme's own agent's geocode resolved to %q, want acme-geo (the lowest id it may use)", got)
	}
}

// TestE2EBoundedRegistration: a heartbeat past a limit is refused with 400
// and a reason naming it, and the agent is not registered.
func TestE2EBoundedRegistration(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	cert, _ := agentCert(t, e.ca.auth, "wide", "n1")
	c := e.client(&cert)
	caps := make([]string, 257)
	for i := range caps {
		caps[i] = fmt.Sprintf("cap-%d", i)
	}
	r := e.do(c, "POST", "/heartbeat", heartbeat("wide", 9400, caps...))
	if r.code != http.StatusBadRequest || r.reason() != "too_many_tools" || !strings.Contains(r.json(t)["error"].(string), "at most 256 tools") {
		t.Fatalf("257 tools: %s, want 400 too_many_tools naming the limit", r)
	}
	if _, ok := e.agents(c, "").find("wide"); ok {
		t.Error("the refused agent is listed")
	}
	if r := e.do(c, "POST", "/heartbeat", heartbeat("wide", 9400, caps[:256]...)); r.code != http.StatusOK {
		t.Errorf("256 tools: %s, want 200", r)
	}
}

// TestE2EOperatorReleasesSquattedID: a node that claimed another node's
// agent name ahead of it holds it until an operator releases it; the
// release is audited and the rightful owner claims the id next.
func TestE2EOperatorReleasesSquattedID(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	squatter, _ := agentCert(t, e.ca.auth, "opus", "ct666")
	owner, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	if r := e.do(e.freshClient(&squatter), "POST", "/heartbeat", heartbeat("opus", 1)); r.code != http.StatusOK {
		t.Fatalf("squatter's claim: %s", r)
	}
	if r := e.do(e.freshClient(&owner), "POST", "/heartbeat", heartbeat("opus", 2)); r.code != http.StatusForbidden {
		t.Fatalf("owner after the squat: %s, want 403", r)
	}
	if r := e.adminDo("DELETE", "/admin/agents/opus", nil); r.code != http.StatusOK {
		t.Fatalf("release: %s", r)
	}
	if r := e.adminDo("DELETE", "/admin/agents/nobody", nil); r.code != http.StatusNotFound {
		t.Errorf("releasing an unknown id: %s, want 404", r)
	}
	if r := e.do(e.freshClient(&owner), "POST", "/heartbeat", heartbeat("opus", 2)); r.code != http.StatusOK {
		t.Errorf("owner after the release: %s, want 200", r)
	}
	var released, claims int
	for _, a := range e.audit() {
		switch {
		case a.Action == "agent.release" && a.Identity == "opus":
			released++
		case a.Action == "agent.claim" && a.Identity == "opus":
			claims++
		}
	}
	if released != 1 || claims != 2 {
		t.Errorf("audit: %d releases and %d claims of opus, want 1 and 2", released, claims)
	}
}
