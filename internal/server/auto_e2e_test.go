package server_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/server"
)

// consumerBody registers id serving on port with one tool that depends on
// capability.
func consumerBody(id string, port int, capability string) map[string]any {
	body := heartbeat(id, port)
	body["tools"] = []map[string]any{{"function_name": "ask", "capability": "ask-" + id,
		"dependencies": []map[string]any{{"capability": capability}}}}
	return body
}

// resolvedTo returns the provider a heartbeat answer resolved the "ask"
// tool's first dependency to, or "" when it is unresolved.
func resolvedTo(t *testing.T, r reply) string {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("POST /heartbeat: %s", r)
	}
	deps, _ := r.json(t)["dependencies_resolved"].(map[string]any)
	ask, _ := deps["ask"].([]any)
	if len(ask) != 1 {
		t.Fatalf("dependencies_resolved: %s", r)
	}
	id, _ := ask[0].(map[string]any)["agent_id"].(string)
	return id
}

// TestE2ETLSModeAuto: in auto, callers without a certificate use the agent
// routes as in MCP Mesh, for migrating from off to strict. They never act
// for an id a certificate claimed, never provide for an authenticated
// agent, are listed as unauthenticated, counted, and logged once per
// caller; and the start-up log names strict as the production mode.
func TestE2ETLSModeAuto(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto})
	anon := e.client(nil)
	if !e.log.hasRecord(t, "WARN", "TLS mode auto") || !strings.Contains(e.log.String(), "strict is the production mode") {
		t.Errorf("the start-up log does not say that strict is the production mode; log:\n%s", e.log)
	}
	if r := e.do(anon, "GET", "/health", nil); r.code != http.StatusOK || r.json(t)["status"] != "healthy" {
		t.Errorf("certless GET /health: %s", r)
	}

	// MCP Mesh's off -> auto step: an agent without a certificate
	// registers, heartbeats, is listed (meshctl list --insecure) and
	// deletes itself.
	if r := e.do(anon, "POST", "/heartbeat", heartbeat("plain-1", 9001, "geocode")); r.code != http.StatusOK || r.json(t)["status"] != "success" {
		t.Fatalf("certless POST /heartbeat: %s", r)
	}
	if r := e.do(anon, "HEAD", "/heartbeat/plain-1", nil); r.code != http.StatusOK {
		t.Errorf("certless HEAD /heartbeat/plain-1: %s", r)
	}
	cert, _ := agentCert(t, e.ca.auth, "a1", "n1")
	c := e.client(&cert)
	if r := e.do(c, "POST", "/heartbeat", heartbeat("a1", 9002, "geocode")); r.code != http.StatusOK {
		t.Fatalf("POST /heartbeat with an agent certificate: %s", r)
	}
	for _, lister := range []*http.Client{anon, c} {
		l := e.agents(lister, "")
		plain, _ := l.find("plain-1")
		a1, _ := l.find("a1")
		if !slices.Equal(l.ids(), []string{"a1", "plain-1"}) || !plain.Unauthenticated || plain.Owner != "" ||
			a1.Unauthenticated || a1.Owner != "a1@n1" || a1.Endpoint != "https://127.0.0.1:9002" {
			t.Errorf("GET /agents: %+v", l.Agents)
		}
	}
	if !strings.Contains(string(e.do(anon, "GET", "/agents", nil).body), `"unauthenticated":true`) {
		t.Errorf("GET /agents does not mark plain-1 \"unauthenticated\":true")
	}

	// An attacker without a certificate cannot re-register, heartbeat or
	// delete the id a certificate claimed, and its attempts change nothing.
	attacks := []struct{ method, path string }{
		{"POST", "/heartbeat"}, {"HEAD", "/heartbeat/a1"}, {"DELETE", "/agents/a1"},
	}
	for _, rq := range attacks {
		var body any
		if rq.method == "POST" {
			body = heartbeat("a1", 6666, "geocode")
		}
		r := e.do(anon, rq.method, rq.path, body)
		if r.code != http.StatusForbidden {
			t.Errorf("certless %s %s for the certificate-claimed a1: %s, want 403", rq.method, rq.path, r)
			continue
		}
		if rq.method == "HEAD" {
			if got := r.header.Get("X-Reason"); got != "owned_by_other" {
				t.Errorf("certless HEAD /heartbeat/a1: reason %q, want owned_by_other", got)
			}
			continue
		}
		if r.reason() != "owned_by_other" || !strings.Contains(r.json(t)["error"].(string), "without a certificate") {
			t.Errorf("certless %s %s: %s", rq.method, rq.path, r)
		}
	}
	if a1, ok := e.agents(c, "").find("a1"); !ok || a1.Status != "healthy" || a1.Owner != "a1@n1" || a1.Endpoint != "https://127.0.0.1:9002" {
		t.Errorf("a1 after the certless attacks: %+v", a1)
	}
	if r := e.do(c, "HEAD", "/heartbeat/a1", nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
		t.Errorf("the owner's HEAD after the attacks: %s", r)
	}

	// Issuance needs a certificate in auto too.
	for _, path := range []string{"/agent-cert", "/renew"} {
		if r := e.do(anon, "POST", path, map[string]string{"csr": "x"}); r.code != http.StatusForbidden || r.reason() != "no_certificate" {
			t.Errorf("certless POST %s: %s, want 403 no_certificate", path, r)
		}
	}

	// A caller without a certificate never becomes an authenticated
	// agent's provider; one without a certificate may use either.
	if got := resolvedTo(t, e.do(c, "POST", "/heartbeat", consumerBody("a1", 9002, "geocode"))); got != "" {
		t.Errorf("a1's geocode resolved to %q; only plain-1 (no certificate) and a1 itself offer it", got)
	}
	if r := e.do(c, "POST", "/heartbeat", heartbeat("a1", 9002, "geocode")); r.code != http.StatusOK {
		t.Fatal(r)
	}
	if got := resolvedTo(t, e.do(anon, "POST", "/heartbeat", consumerBody("plain-2", 9003, "geocode"))); got != "a1" {
		t.Errorf("plain-2's geocode resolved to %q, want the lowest id a1", got)
	}
	cert3, _ := agentCert(t, e.ca.auth, "a3", "n1")
	if got := resolvedTo(t, e.do(e.client(&cert3), "POST", "/heartbeat", consumerBody("a3", 9004, "geocode"))); got != "a1" {
		t.Errorf("a3's geocode resolved to %q, want a1 (never plain-1)", got)
	}

	// A certificate takes over an id registered without one; from then on
	// callers without a certificate are refused for it.
	cert2, _ := agentCert(t, e.ca.auth, "plain-1", "n2")
	if r := e.do(e.client(&cert2), "POST", "/heartbeat", heartbeat("plain-1", 9001, "geocode")); r.code != http.StatusOK {
		t.Fatalf("a certificate taking over plain-1: %s", r)
	}
	if p, _ := e.agents(anon, "").find("plain-1"); p.Unauthenticated || p.Owner != "plain-1@n2" {
		t.Errorf("plain-1 after the takeover: %+v", p)
	}
	if r := e.do(anon, "DELETE", "/agents/plain-1", nil); r.code != http.StatusForbidden {
		t.Errorf("certless DELETE of the taken-over plain-1: %s, want 403", r)
	}
	if r := e.do(anon, "DELETE", "/agents/plain-2", nil); r.code != http.StatusNoContent {
		t.Errorf("certless DELETE of plain-2, registered without a certificate: %s, want 204", r)
	}

	// Every admitted certless agent-route request is counted, by route; the
	// caller (one address) is logged once.
	m := e.metrics()
	for route, want := range map[string]float64{"POST /heartbeat": 3, "HEAD /heartbeat/{agent_id}": 2, "GET /agents": 3, "DELETE /agents/{agent_id}": 3} {
		if got := m[`meshd_unauthenticated_requests_total{route="`+route+`"}`]; got != want {
			t.Errorf("meshd_unauthenticated_requests_total{route=%q} = %v, want %v", route, got, want)
		}
	}
	logged := 0
	for _, rec := range e.log.records(t) {
		if strings.HasPrefix(rec["msg"].(string), "caller without a client certificate admitted") {
			logged++
			if rec["source"] != "127.0.0.1" || rec["level"] != "WARN" {
				t.Errorf("certless caller logged as %v", rec)
			}
		}
	}
	if logged != 1 {
		t.Errorf("the certless caller was logged %d times, want once", logged)
	}
}

// TestE2ETLSModeStrictAgentRoutes: strict still refuses callers without a
// certificate on every agent route, and counts none as unauthenticated.
func TestE2ETLSModeStrictAgentRoutes(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	anon := e.client(nil)
	for _, rq := range []struct{ method, path string }{{"POST", "/heartbeat"}, {"GET", "/agents"}, {"HEAD", "/heartbeat/a1"}, {"DELETE", "/agents/a1"}} {
		var body any
		if rq.method == "POST" {
			body = heartbeat("a1", 9001)
		}
		r := e.do(anon, rq.method, rq.path, body)
		if r.code != http.StatusForbidden || (rq.method != "HEAD" && r.reason() != "no_certificate") {
			t.Errorf("certless %s %s in strict: %s, want 403 no_certificate", rq.method, rq.path, r)
		}
	}
	m := e.metrics()
	if n := m["meshd_agents"]; n != 0 {
		t.Errorf("strict registered %v agents from callers without a certificate", n)
	}
	for k, v := range m {
		if strings.HasPrefix(k, "meshd_unauthenticated_requests_total") && v != 0 {
			t.Errorf("%s = %v in strict", k, v)
		}
	}
	if strings.Contains(e.log.String(), "TLS mode auto") {
		t.Errorf("strict logs the auto warning")
	}
}
