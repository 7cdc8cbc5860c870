package server_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"

	"github.com/meshtrust/meshtrust/internal/server"
)

// TestE2EMCPMeshRouteAnswers: what MCP Mesh answers 404 or 400, meshd
// answers the same.
func TestE2EMCPMeshRouteAnswers(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	cert, _ := agentCert(t, e.ca.auth, "a1", "n1")
	c := e.client(&cert)
	if r := e.do(c, "POST", "/heartbeat", heartbeat("a1", 9100, "geo")); r.code != http.StatusOK {
		t.Fatal(r)
	}
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
