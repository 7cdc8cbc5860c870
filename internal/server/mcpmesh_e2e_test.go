package server_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/server"
)

// TestE2EMCPMeshRouteAnswers: what MCP Mesh answers 404 or 400, meshd
// answers the same.
func TestE2EMCPMeshRouteAnswers(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	c := e.registeredAgent("a1", "n1", 9100, "geo")
	for _, rq := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/agents/a1", "", http.StatusNotFound},
		{"GET", "/heartbeat/a1", "", http.StatusNotFound},
		{"PUT", "/heartbeat", "{}", http.StatusNotFound},
		{"POST", "/agents", "{}", http.StatusNotFound},
		{"DELETE", "/heartbeat/a1", "", http.StatusNotFound},
		{"POST", "/health", "", http.StatusNotFound},
		{"GET", "/admin/drain", "", http.StatusNotFound},
		{"GET", "/agents?fuzzy=maybe", "", http.StatusBadRequest},
		{"GET", "/agents?fuzzy=true", "", http.StatusOK},
		{"GET", "/agents?fuzzy=0", "", http.StatusOK},
		{"POST", "/heartbeat", `{"agent_id":"a1","timestamp":"2026-01-15"}`, http.StatusBadRequest},
		{"POST", "/heartbeat", `{"agent_id":"a1","timestamp":""}`, http.StatusBadRequest},
		{"POST", "/heartbeat", `{"agent_id":"a1","timestamp":5}`, http.StatusBadRequest},
		{"POST", "/heartbeat", `{"agent_id":"a1","timestamp":"2026-01-15T10:30:45+01:00"}`, http.StatusOK},
		{"POST", "/heartbeat", `{"agent_id":"a1","timestamp":null}`, http.StatusOK},
	} {
		if r := e.do(c, rq.method, rq.path, rq.body); r.code != rq.want {
			t.Errorf("%s %s %s: %s, want %d", rq.method, rq.path, rq.body, r, rq.want)
		}
	}
}

// resolvedAgent is what the MCP Mesh compatibility tests read of an agent
// in GET /agents.
type resolvedAgent struct {
	ID                    string `json:"id"`
	Endpoint              string `json:"endpoint"`
	CreatedAt             string `json:"created_at"`
	A2AProducer           bool   `json:"a2a_producer"`
	DependencyResolutions []struct {
		FunctionName    string   `json:"function_name"`
		Capability      string   `json:"capability"`
		Status          string   `json:"status"`
		Tags            []string `json:"tags"`
		Endpoint        string   `json:"endpoint"`
		ProviderAgentID string   `json:"provider_agent_id"`
		MCPTool         string   `json:"mcp_tool"`
	} `json:"dependency_resolutions"`
	LLMProviderResolutions []struct {
		Status          string `json:"status"`
		ProviderAgentID string `json:"provider_agent_id"`
	} `json:"llm_provider_resolutions"`
	LLMToolResolutions []struct {
		FilterCapability string `json:"filter_capability"`
		Status           string `json:"status"`
		ProviderAgentID  string `json:"provider_agent_id"`
	} `json:"llm_tool_resolutions"`
}

func (e *env) resolvedAgent(c *http.Client, id string) resolvedAgent {
	e.t.Helper()
	r := e.do(c, "GET", "/agents", nil)
	var l struct{ Agents []resolvedAgent }
	if err := json.Unmarshal(r.body, &l); err != nil {
		e.t.Fatalf("GET /agents: %v: %s", err, r)
	}
	for _, a := range l.Agents {
		if a.ID == id {
			return a
		}
	}
	e.t.Fatalf("GET /agents has no %s: %s", id, r)
	return resolvedAgent{}
}

// TestE2EMCPMeshResolutionTLSOff: with TLS off, providers are announced
// on http://, unresolved dependencies keep their capability, GET /agents
// lists every resolution (dependencies and @mesh.llm ones), and created_at
// survives a changed registration.
func TestE2EMCPMeshResolutionTLSOff(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSOff})
	c := e.client(nil)
	geo := map[string]any{"agent_id": "geo-1", "http_host": "127.0.0.1", "http_port": 9102, "tools": []map[string]any{
		{"function_name": "geocode", "capability": "geocode", "tags": []string{"maps"}},
		{"function_name": "chat", "capability": "llm", "tags": []string{"claude", "llm"}},
	}}
	if r := e.do(c, "POST", "/heartbeat", geo); r.code != http.StatusOK {
		t.Fatal(r)
	}
	weather := map[string]any{"agent_id": "weather-1", "http_host": "127.0.0.1", "http_port": 9101, "a2a_producer": true, "tools": []map[string]any{
		{"function_name": "forecast", "capability": "weather", "dependencies": []map[string]any{
			{"capability": "geocode", "tags": []string{"maps"}}, {"capability": "notify"},
		}},
		{"function_name": "smart", "capability": "analysis",
			"llm_provider": map[string]any{"capability": "llm", "tags": []string{"+claude", "-gpt"}},
			"llm_filter":   map[string]any{"filter": []any{"geocode", map[string]any{"capability": "nothing"}}}},
	}}
	r := e.do(c, "POST", "/heartbeat", weather)
	if r.code != http.StatusOK {
		t.Fatal(r)
	}
	var hb struct {
		DependenciesResolved map[string][]map[string]string `json:"dependencies_resolved"`
	}
	if err := json.Unmarshal(r.body, &hb); err != nil {
		t.Fatal(err)
	}
	want := []map[string]string{
		{"agent_id": "geo-1", "capability": "geocode", "endpoint": "http://127.0.0.1:9102", "function_name": "geocode", "status": "available"},
		{"agent_id": "", "capability": "notify", "endpoint": "", "function_name": "", "status": "unresolved"},
	}
	if got := hb.DependenciesResolved["forecast"]; !reflect.DeepEqual(got, want) {
		t.Errorf("dependencies_resolved[forecast] = %v, want %v", got, want)
	}
	a := e.resolvedAgent(c, "weather-1")
	if len(a.DependencyResolutions) != 2 {
		t.Fatalf("dependency_resolutions: %+v", a.DependencyResolutions)
	}
	d0, d1 := a.DependencyResolutions[0], a.DependencyResolutions[1]
	if d0.FunctionName != "forecast" || d0.Status != "available" || d0.ProviderAgentID != "geo-1" || d0.MCPTool != "geocode" || d0.Endpoint != "http://127.0.0.1:9102" || !reflect.DeepEqual(d0.Tags, []string{"maps"}) {
		t.Errorf("dependency_resolutions[0] = %+v", d0)
	}
	if d1.Capability != "notify" || d1.Status != "unresolved" || d1.ProviderAgentID != "" || d1.Endpoint != "" {
		t.Errorf("dependency_resolutions[1] = %+v", d1)
	}
	if !a.A2AProducer || a.Endpoint != "http://127.0.0.1:9101" {
		t.Errorf("a2a_producer %v, endpoint %s", a.A2AProducer, a.Endpoint)
	}
	if p := a.LLMProviderResolutions; len(p) != 1 || p[0].Status != "available" || p[0].ProviderAgentID != "geo-1" {
		t.Errorf("llm_provider_resolutions = %+v, want geo-1's chat (claude preferred, gpt excluded)", p)
	}
	if l := a.LLMToolResolutions; len(l) != 2 || l[0].Status != "available" || l[0].ProviderAgentID != "geo-1" || l[1].Status != "unresolved" || l[1].FilterCapability != "nothing" {
		t.Errorf("llm_tool_resolutions = %+v", l)
	}
	created := a.CreatedAt
	weather["description"] = "changed"
	if r := e.do(c, "POST", "/heartbeat", weather); r.code != http.StatusOK {
		t.Fatal(r)
	}
	if got := e.resolvedAgent(c, "weather-1").CreatedAt; got != created {
		t.Errorf("created_at moved from %s to %s on a changed registration", created, got)
	}
}

// TestE2EMCPMeshAdminRoutes: what MCP Mesh's meshctl reads for registry
// status|drain|resume, list --schemas and audit, on the admin API only.
func TestE2EMCPMeshAdminRoutes(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	geoCert, _ := agentCert(t, e.ca.auth, "geo-1", "n1")
	geo := map[string]any{"agent_id": "geo-1", "http_host": "127.0.0.1", "http_port": 9102, "tools": []map[string]any{
		{"function_name": "geocode", "capability": "geocode", "tags": []string{"maps"},
			"inputSchemaHash": "sha256:" + strings.Repeat("a", 64), "inputSchemaCanonical": map[string]any{"type": "object"}},
	}}
	if r := e.do(e.client(&geoCert), "POST", "/heartbeat", geo); r.code != http.StatusOK {
		t.Fatal(r)
	}
	wCert, _ := agentCert(t, e.ca.auth, "weather-1", "n1")
	weather := heartbeat("weather-1", 9101)
	weather["tools"] = []map[string]any{{"function_name": "forecast", "capability": "weather",
		"dependencies": []map[string]any{{"capability": "geocode", "tags": []string{"maps"}}, {"capability": "geocode", "tags": []string{"sea"}}}}}
	if r := e.do(e.client(&wCert), "POST", "/heartbeat", weather); r.code != http.StatusOK {
		t.Fatal(r)
	}

	if r := e.adminDo("GET", "/admin/drain", nil); r.code != http.StatusOK || r.json(t)["draining"] != false {
		t.Errorf("GET /admin/drain: %s", r)
	}
	if r := e.adminDo("POST", "/admin/drain", nil); r.code != http.StatusOK || r.json(t)["draining"] != true {
		t.Errorf("POST /admin/drain: %s", r)
	}
	// Draining: a new agent is sent elsewhere, the registered ones stay.
	newCert, _ := agentCert(t, e.ca.auth, "late-1", "n1")
	if r := e.do(e.client(&newCert), "POST", "/heartbeat", heartbeat("late-1", 9103)); r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("a new agent while draining: %s, want 503 with Retry-After", r)
	}
	if r := e.do(e.client(&wCert), "POST", "/heartbeat", weather); r.code != http.StatusOK {
		t.Errorf("a registered agent while draining: %s", r)
	}
	if r := e.adminDo("DELETE", "/admin/drain", nil); r.code != http.StatusOK || r.json(t)["draining"] != false {
		t.Errorf("DELETE /admin/drain: %s", r)
	}
	if r := e.do(e.client(&newCert), "POST", "/heartbeat", heartbeat("late-1", 9103)); r.code != http.StatusOK {
		t.Errorf("a new agent after resume: %s", r)
	}

	r := e.adminDo("GET", "/schemas?limit=10", nil)
	var schemas struct {
		Count   int
		Schemas []struct{ Hash, RuntimeOrigin string }
	}
	if err := json.Unmarshal(r.body, &schemas); err != nil || schemas.Count != 1 || schemas.Schemas[0].Hash != "sha256:"+strings.Repeat("a", 64) {
		t.Errorf("GET /schemas: %s", r)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x"} {
		if r := e.adminDo("GET", "/schemas?"+q, nil); r.code != http.StatusBadRequest {
			t.Errorf("GET /schemas?%s: %s, want 400", q, r)
		}
	}

	r = e.adminDo("GET", "/events?agent_id=weather-1&limit=40", nil)
	var events struct {
		Count  int
		Events []struct {
			EventType string `json:"event_type"`
			Data      struct {
				DepIndex int `json:"dep_index"`
				Chosen   *struct {
					AgentID string `json:"agent_id"`
				}
				Stages []struct {
					Stage   string
					Kept    []string
					Evicted []struct{ ID, Reason string }
				}
			}
		}
	}
	if err := json.Unmarshal(r.body, &events); err != nil || events.Count != 2 {
		t.Fatalf("GET /events: %s", r)
	}
	ok, unresolved := events.Events[0], events.Events[1]
	if ok.EventType != "dependency_resolved" || ok.Data.Chosen == nil || ok.Data.Chosen.AgentID != "geo-1" {
		t.Errorf("first dependency: %+v", ok)
	}
	if unresolved.EventType != "dependency_unresolved" || unresolved.Data.DepIndex != 1 {
		t.Errorf("second dependency: %+v", unresolved)
	}
	var tagStage []struct{ ID, Reason string }
	for _, s := range unresolved.Data.Stages {
		if s.Stage == "tags" {
			tagStage = s.Evicted
		}
	}
	if len(tagStage) != 1 || tagStage[0].ID != "geo-1:geocode" || tagStage[0].Reason != "MissingTag" {
		t.Errorf("why geo-1 does not provide geocode[sea]: %+v", unresolved.Data.Stages)
	}
	// None of it on the agent port.
	for _, p := range []string{"/admin/drain", "/schemas", "/events?agent_id=weather-1"} {
		if r := e.do(e.client(&wCert), "GET", p, nil); r.code != http.StatusNotFound {
			t.Errorf("GET %s on the agent port: %s, want 404", p, r)
		}
	}
}
