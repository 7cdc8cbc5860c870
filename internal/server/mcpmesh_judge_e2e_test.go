package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/pemfile"
)

// mcpmeshAgents are the registrations both registries are judged with:
// MCP Mesh's benchmark agent (tools with dependencies, tags and input
// schemas), its geocode provider with a canonical schema, and an LLM
// agent (llm_provider, llm_filter, a2a_producer).
func mcpmeshAgents(t *testing.T) []map[string]any {
	t.Helper()
	data, err := os.ReadFile("../../bench/mcpmesh/heartbeat.json")
	if err != nil {
		t.Fatal(err)
	}
	var weather map[string]any
	if err := json.Unmarshal(data, &weather); err != nil {
		t.Fatal(err)
	}
	geo := map[string]any{"agent_id": "geo-agent-1", "name": "geo-agent", "version": "1.2.0", "runtime": "python", "http_host": "127.0.0.1", "http_port": 9102,
		"description": "Geocoding", "tools": []any{
			map[string]any{"function_name": "geocode", "capability": "geocode", "version": "1.2.0", "tags": []any{"maps"}, "description": "Place to lat/lon",
				"inputSchema":     map[string]any{"type": "object", "properties": map[string]any{"q": map[string]any{"type": "string"}}},
				"inputSchemaHash": "sha256:" + strings.Repeat("ab", 32), "inputSchemaCanonical": map[string]any{"type": "object", "properties": map[string]any{"q": map[string]any{"type": "string"}}}},
		}}
	llm := map[string]any{"agent_id": "smart-agent-1", "name": "smart-agent", "version": "0.1.0", "runtime": "typescript", "http_host": "127.0.0.1", "http_port": 9103,
		"a2a_producer": true, "tools": []any{
			map[string]any{"function_name": "smart_analyze", "capability": "analysis", "tags": []any{"llm"},
				"llm_provider": map[string]any{"capability": "llm", "tags": []any{"+claude"}},
				"llm_filter":   map[string]any{"filter": []any{map[string]any{"capability": "geocode"}, map[string]any{"capability": "weather_forecast", "tags": []any{"weather"}}}, "filter_mode": "all"},
				"kwargs":       map[string]any{"timeout": 30}},
		}}
	return []map[string]any{geo, weather, llm}
}

// judged is one registry under MCP Mesh's meshctl: where meshctl reaches
// its agent routes and its admin routes, with which variables.
type judged struct {
	name           string
	url, adminURL  string
	env, adminEnv  []string
	post           func(body any) reply
	head           func(id string) int
	cleanupOutputs []string
}

// TestMCPMeshMeshctlLists: MCP Mesh's meshctl list (every output flag)
// and status print the same against meshd as against MCP Mesh's
// registry, TLS off, once both hold the same agents.
func TestMCPMeshMeshctlLists(t *testing.T) {
	bin := mcpmeshBin(t)
	mm := startMCPMesh(t, bin, mcpmeshOptions{mode: "off"})
	e := newEnv(t, envOptions{mode: server.TLSOff})
	plain := &http.Client{Timeout: 10 * time.Second}
	for _, a := range mcpmeshAgents(t) {
		for _, u := range []string{mm.url, e.baseURL()} {
			if r := do(t, plain, "POST", u+"/heartbeat", a); r.code != http.StatusOK {
				t.Fatalf("register %s at %s: %s", a["agent_id"], u, r)
			}
		}
	}
	// Once more, so that both resolve against every agent.
	for _, a := range mcpmeshAgents(t) {
		for _, u := range []string{mm.url, e.baseURL()} {
			do(t, plain, "POST", u+"/heartbeat", a)
		}
	}
	home := t.TempDir()
	for _, args := range [][]string{
		{"list"}, {"list", "--all"}, {"list", "--filter", "weather"}, {"list", "--no-deps"}, {"list", "--wide"},
		{"list", "--tools"}, {"list", "--tools=get_forecast"}, {"list", "--tools=geo-agent-1:geocode"}, {"list", "--services"},
		{"list", "--since", "1h"}, {"list", "--verbose"}, {"list", "--tools", "--show-framework"},
		{"status"}, {"status", "weather-agent-1"}, {"status", "--verbose"},
	} {
		want := mcpmeshctl(t, bin, home, nil, append(args, "--registry-url", mm.url)...)
		got := mcpmeshctl(t, bin, home, nil, append(args, "--registry-url", e.baseURL())...)
		if got.code != want.code || normalize(got.out, e.baseURL()) != normalize(want.out, mm.url) {
			t.Errorf("meshctl %s: against meshd (exit %d):\n%s\nagainst MCP Mesh (exit %d):\n%s", strings.Join(args, " "), got.code, got.out, want.code, want.out)
		}
	}
	for _, args := range [][]string{{"list", "--json"}, {"list", "--json", "--all"}, {"status", "--json"}, {"status", "weather-agent-1", "--json"}, {"list", "--services", "--json"}} {
		want := mcpmeshctl(t, bin, home, nil, append(args, "--registry-url", mm.url)...)
		got := mcpmeshctl(t, bin, home, nil, append(args, "--registry-url", e.baseURL())...)
		if got.code != 0 || want.code != 0 {
			t.Errorf("meshctl %s: exit %d against meshd, %d against MCP Mesh:\n%s\n%s", strings.Join(args, " "), got.code, want.code, got.out, want.out)
			continue
		}
		var g, w any
		if err := json.Unmarshal([]byte(got.out), &g); err != nil {
			t.Errorf("meshctl %s against meshd: %v\n%s", strings.Join(args, " "), err, got.out)
			continue
		}
		if err := json.Unmarshal([]byte(want.out), &w); err != nil {
			t.Fatalf("meshctl %s against MCP Mesh: %v\n%s", strings.Join(args, " "), err, want.out)
		}
		for _, d := range diffJSON("", w, g, agentInfoAllowed) {
			t.Errorf("meshctl %s: %s", strings.Join(args, " "), d)
		}
	}
}

// adminEnv is meshd with an mTLS admin listener on loopback (what
// MCP_MESH_ADMIN_PORT opens), and the variables MCP Mesh's meshctl reaches
// it with as admin@external, or as an agent.
func adminEnv(t *testing.T, mode server.TLSMode) (e *env, admin, agent []string) {
	t.Helper()
	e = newEnv(t, envOptions{mode: mode, configure: func(c *meshd.Config) {
		c.AdminListen, c.AdminIdentities = "127.0.0.1:0", []string{"admin@external"}
	}})
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, pemfile.EncodeCerts(e.ca.auth.Root()), 0o644); err != nil {
		t.Fatal(err)
	}
	iss, err := e.ca.auth.Sign(context.Background(), ca.ClientRequest("admin"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	adminCert, err := tls.LoadX509KeyPair(e.ca.cfg.IssuedCertPath(iss.Cert.Subject.CommonName), e.ca.cfg.IssuedKeyPath(iss.Cert.Subject.CommonName))
	if err != nil {
		t.Fatal(err)
	}
	c, k := writePair(t, dir, "admin", adminCert)
	admin = []string{"MCP_MESH_TLS_CERT=" + c, "MCP_MESH_TLS_KEY=" + k, "MCP_MESH_TLS_CA=" + root}
	agentTLS, _ := agentCert(t, e.ca.auth, "weather-agent-1", "n1")
	c, k = writePair(t, dir, "agent", agentTLS)
	agent = []string{"MCP_MESH_TLS_CERT=" + c, "MCP_MESH_TLS_KEY=" + k, "MCP_MESH_TLS_CA=" + root}
	return e, admin, agent
}

// TestMCPMeshMeshctlAdmin: MCP Mesh's meshctl registry status|drain|
// resume, list --schemas, audit and entity rotate work against meshd's
// admin listener with MCP Mesh's TLS variables, as against MCP Mesh's
// registry; an agent's certificate, or none, is refused there.
func TestMCPMeshMeshctlAdmin(t *testing.T) {
	bin := mcpmeshBin(t)
	mm := startMCPMesh(t, bin, mcpmeshOptions{mode: "off"})
	e, adminVars, agentVars := adminEnv(t, server.TLSAuto)
	adminURL := "https://" + e.srv.AdminTLSAddr()
	plain := &http.Client{Timeout: 10 * time.Second}
	certs := map[string]*http.Client{}
	for _, a := range mcpmeshAgents(t) {
		id := a["agent_id"].(string)
		cert, _ := agentCert(t, e.ca.auth, id, "n1")
		certs[id] = e.client(&cert)
		for i := 0; i < 2; i++ {
			if r := do(t, plain, "POST", mm.url+"/heartbeat", a); r.code != http.StatusOK {
				t.Fatalf("register %s with MCP Mesh: %s", id, r)
			}
			if r := e.do(certs[id], "POST", "/heartbeat", a); r.code != http.StatusOK {
				t.Fatalf("register %s with meshd: %s", id, r)
			}
		}
	}
	home := t.TempDir()
	same := func(args ...string) meshctlRun {
		t.Helper()
		want := mcpmeshctl(t, bin, home, nil, append(args, "--registry-url", mm.url)...)
		got := mcpmeshctl(t, bin, home, adminVars, append(args, "--registry-url", adminURL)...)
		if got.code != want.code || normalize(got.out, adminURL) != normalize(want.out, mm.url) {
			t.Errorf("meshctl %s: against meshd's admin listener (exit %d):\n%s\nagainst MCP Mesh (exit %d):\n%s", strings.Join(args, " "), got.code, got.out, want.code, want.out)
		}
		return got
	}
	same("registry", "status")
	same("registry", "status", "--json")
	same("registry", "drain")
	same("registry", "status")
	same("registry", "resume")
	same("registry", "drain", "--wait")
	same("registry", "resume")
	same("list", "--schemas")
	same("list", "--schemas", "--limit", "1")
	same("list", "--schemas", "--json")
	same("schema", "list")

	// audit: MCP Mesh records an event only when several providers
	// compete or the choice changes; meshd explains every dependency as
	// it resolves now. So meshd's audit names the chosen provider, and
	// why notify has none.
	got := mcpmeshctl(t, bin, home, adminVars, "audit", "weather-agent-1", "--explain", "--registry-url", adminURL)
	if got.code != 0 || !strings.Contains(got.out, "chosen: geo-agent-1") || !strings.Contains(got.out, "capability=notify") {
		t.Errorf("meshctl audit against meshd (exit %d):\n%s", got.code, got.out)
	}
	if got := mcpmeshctl(t, bin, home, adminVars, "audit", "weather", "--json", "--registry-url", adminURL); got.code != 0 || !strings.Contains(got.out, `"dependency_resolved"`) {
		t.Errorf("meshctl audit --json against meshd (exit %d):\n%s", got.code, got.out)
	}

	// entity rotate: the agents are asked to POST again (HEAD 202), and
	// one POST acknowledges it (HEAD 200), in both.
	want := mcpmeshctl(t, bin, home, nil, "entity", "rotate", "--registry-url", mm.url)
	got = mcpmeshctl(t, bin, home, adminVars, "entity", "rotate", "--registry-url", adminURL)
	if got.code != 0 || want.code != 0 || normalize(got.out) != normalize(want.out) {
		t.Errorf("meshctl entity rotate: against meshd (exit %d):\n%s\nagainst MCP Mesh (exit %d):\n%s", got.code, got.out, want.code, want.out)
	}
	geo := mcpmeshAgents(t)[0]
	for _, step := range []struct {
		what string
		post bool
		want int
	}{{"after rotate", false, http.StatusAccepted}, {"after one POST", true, http.StatusOK}} {
		if step.post {
			do(t, plain, "POST", mm.url+"/heartbeat", geo)
			e.do(certs["geo-agent-1"], "POST", "/heartbeat", geo)
		}
		mmCode := do(t, plain, "HEAD", mm.url+"/heartbeat/geo-agent-1", nil).code
		meshdCode := e.do(certs["geo-agent-1"], "HEAD", "/heartbeat/geo-agent-1", nil).code
		if mmCode != step.want || meshdCode != step.want {
			t.Errorf("HEAD %s: MCP Mesh %d, meshd %d, want %d", step.what, mmCode, meshdCode, step.want)
		}
	}

	// Never anonymous, never an agent: meshd's admin identities only.
	for name, vars := range map[string][]string{"an agent's certificate": agentVars, "no certificate": adminVars[2:]} {
		for _, args := range [][]string{{"registry", "drain"}, {"list", "--schemas"}, {"entity", "rotate"}} {
			if r := mcpmeshctl(t, bin, home, vars, append(args, "--registry-url", adminURL)...); r.code == 0 {
				t.Errorf("meshctl %s with %s: exit 0, want a refusal:\n%s", strings.Join(args, " "), name, r.out)
			}
		}
	}
	if r := e.adminDo("GET", "/admin/drain", nil); r.code != http.StatusOK || !strings.Contains(string(r.body), `"draining":false`) {
		t.Errorf("a refused drain drained meshd: GET /admin/drain: %s", r)
	}
}

// TestMCPMeshMeshctlEntities: MCP Mesh's meshctl entity register, list
// and revoke on a trust directory that meshd (filestore) and MCP Mesh's
// registry both trust: an entity's agent is admitted by both once it is
// registered, and refused by both once it is revoked.
func TestMCPMeshMeshctlEntities(t *testing.T) {
	bin := mcpmeshBin(t)
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true})
	mm := startMCPMesh(t, bin, mcpmeshOptions{mode: "strict", certFile: e.cfg.CertFile, keyFile: e.cfg.KeyFile, trustDir: e.trustDir})
	acme := newTestCA(t, "acme CA")
	caFile := filepath.Join(t.TempDir(), "acme-ca.pem")
	if err := os.WriteFile(caFile, acme.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	agentTLS := acme.leaf(t, "acme-weather-1")
	// A new connection for each request: meshd closes the connections of
	// a certificate that loses trust (the revocation below), and a POST
	// on a closed kept-alive connection is not retried.
	fresh := e.freshClient(&agentTLS)
	body := heartbeat("acme-weather-1", 9201, "weather")
	// meshd may also close a connection that is mid-request when trust
	// changes under it (its sweep closes every connection of a
	// certificate no longer trusted): that answer is code 0, a refusal
	// that eventually waits past for the 403 of a new connection.
	codes := func() (mmCode, meshdCode int) {
		t.Helper()
		data, _ := json.Marshal(body)
		resp, err := fresh.Post(mm.url+"/heartbeat", "application/json", strings.NewReader(string(data)))
		if err != nil {
			t.Fatalf("POST to MCP Mesh: %v\n%s", err, mm.logs)
		}
		resp.Body.Close()
		mmCode = resp.StatusCode
		resp, err = fresh.Post(e.baseURL()+"/heartbeat", "application/json", strings.NewReader(string(data)))
		if err != nil {
			t.Logf("POST to meshd: %v (a connection closed as trust changed)", err)
			return mmCode, 0
		}
		resp.Body.Close()
		return mmCode, resp.StatusCode
	}
	if a, b := codes(); a != http.StatusForbidden || b != http.StatusForbidden {
		t.Fatalf("an unknown entity's agent: MCP Mesh %d, meshd %d, want 403 from both\n%s", a, b, mm.logs)
	}
	home := t.TempDir()
	if r := mcpmeshctl(t, bin, home, nil, "entity", "register", "acme", "--ca-cert", caFile, "--trust-dir", e.trustDir); r.code != 0 {
		t.Fatalf("meshctl entity register: exit %d\n%s", r.code, r.out)
	}
	eventually.True(t, "both registries to admit acme's agent", func() bool {
		a, b := codes()
		return a == http.StatusOK && b == http.StatusOK
	})
	if r := mcpmeshctl(t, bin, home, nil, "entity", "list", "--trust-dir", e.trustDir); r.code != 0 || !strings.Contains(r.out, "entities/acme.pem") {
		t.Errorf("meshctl entity list: exit %d\n%s", r.code, r.out)
	}
	// meshd lists the entity MCP Mesh's meshctl registered, from the trust dir.
	if r := e.adminDo("GET", "/admin/entities", nil); r.code != http.StatusOK || !strings.Contains(string(r.body), `"acme"`) {
		t.Errorf("meshd's entity list: %s", r)
	}
	if r := mcpmeshctl(t, bin, home, nil, "entity", "revoke", "acme", "--force", "--trust-dir", e.trustDir); r.code != 0 {
		t.Fatalf("meshctl entity revoke: exit %d\n%s", r.code, r.out)
	}
	eventually.True(t, "both registries to refuse acme's agent", func() bool {
		a, b := codes()
		return a == http.StatusForbidden && b == http.StatusForbidden
	})
	// meshd evicts the revoked entity's agent at once; MCP Mesh lists it
	// healthy until its heartbeat timeout (docs/mcpmesh-wire.md).
	eventually.True(t, "meshd to evict acme's agent", func() bool {
		return strings.Contains(string(e.adminDo("GET", "/admin/agents", nil).body), `"status":"evicted"`)
	})
}
