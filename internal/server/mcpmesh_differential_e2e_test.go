package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/server"
)

// diffStep is one request of the differential sequence.
type diffStep struct {
	name         string
	method, path string
	body         any
	// codeWhy, when set, is why meshd's status code may differ from MCP
	// Mesh's here; it must still be the code given.
	meshdCode int
	codeWhy   string
	// compare the JSON answers field by field.
	compare bool
	// both, when set, is the status code both registries must answer.
	both int
}

// heartbeatAllowed are the accepted differences in POST /heartbeat
// answers.
var heartbeatAllowed = []allowedDiff{
	allow(`\.timestamp`, "value", "the time of the answer: two processes, two clocks"),
	allow(`\.rotate`, "extra", "meshd asks a meshd-aware agent to renew its certificate after `meshctl entity rotate`; MCP Mesh's agents ignore the field"),
	allow(`\.llm_tools(\..*)?`, "value", "meshd does not return the tools an @mesh.llm filter resolves to (llm_tools stays {}); GET /agents' llm_tool_resolutions carries the resolution (docs/mcpmesh-wire.md, what still differs)"),
	allow(`\.llm_tools\..*`, "missing", "as above"),
	allow(`\.message`, "value", "only after DELETE: MCP Mesh keeps the deleted row (unhealthy) and says the next POST updated it; meshd deleted the record, so the next POST registers it"),
	allow(`\.reason`, "extra", "meshd's machine-readable refusal reason"),
	allow(`\.error`, "value", "the wording of an error message"),
	allow(`\.(agent_id|status)`, "missing", "MCP Mesh answers a validation failure 200 with status:error and the agent id; meshd refuses it 400 with {error, reason}"),
	allow(`\.message`, "missing", "as above"),
	allow(`\.error`, "extra", "as above: meshd's 400 says what is wrong in error, where MCP Mesh's 200 says it in message"),
}

// listAllowed are the accepted differences in GET /agents answers.
var listAllowed = append(append([]allowedDiff{}, agentInfoAllowed...),
	allow(`\.agents\[\d+\]\.llm_tool_resolutions\[\d+\]\.(status|endpoint|provider_agent_id|provider_capability|mcp_tool)`, "value",
		"MCP Mesh 3.7.1 leaves these filters unresolved although a provider matches; meshd resolves them as it resolves dependencies"),
	allow(`\.agents\[\d+\]\.llm_tool_resolutions\[\d+\]\.(endpoint|provider_agent_id|provider_capability|mcp_tool)`, "extra", "as above"),
	allow(`\.agents\[\d+\]\.llm_provider_resolutions\[\d+\]\.(status)`, "value",
		"MCP Mesh 3.7.1 leaves the provider unresolved although an agent offers capability llm with the preferred tag; meshd resolves it"),
	allow(`\.agents\[\d+\]\.llm_provider_resolutions\[\d+\]\.(endpoint|provider_agent_id|mcp_tool)`, "extra", "as above"),
	allow(`\.agents\[\d+\]\.entity_id`, "extra", "meshd lists entity_id \"\" for an agent without a certificate; MCP Mesh omits it with TLS off"),
	allow(`\.agents\[\d+\]\.capabilities\[\d+\]\.available`, "value", "MCP Mesh's availability also needs every required dependency resolved (transitively); meshd's is the agent's health"),
	allow(`\.error`, "value", "the wording of an error message"),
	allow(`\.agents\[\d+\]\.capabilities\[\d+\]\.kwargs`, "missing", "meshd does not list a tool's kwargs in GET /agents (they stay in its stored registration)"),
)

// noNewsWhy is why meshd answers 200 where MCP Mesh asks (202) an agent
// to POST: its POST answer would be the one it received.
const noNewsWhy = "MCP Mesh asks every agent to POST after any change anywhere; meshd only an agent whose POST answer (its dependencies' resolution) would differ from the one it received, and geo depends on nothing (docs/mcpmesh-wire.md)"

// TestMCPMeshDifferential runs one request sequence against MCP Mesh's
// registry and meshd, both with TLS off, and compares status codes and
// JSON answers field by field. Every difference it accepts is listed
// above or in the step, with its reason.
func TestMCPMeshDifferential(t *testing.T) {
	bin := mcpmeshBin(t)
	mm := startMCPMesh(t, bin, mcpmeshOptions{mode: "off"})
	e := newEnv(t, envOptions{mode: server.TLSOff})
	agents := mcpmeshAgents(t)
	geo, weather, smart := agents[0], agents[1], agents[2]
	llmProvider := map[string]any{"agent_id": "claude-provider-1", "http_host": "127.0.0.1", "http_port": 9104, "runtime": "python",
		"tools": []any{map[string]any{"function_name": "process_chat", "capability": "llm", "tags": []any{"llm", "claude"}, "version": "1.0.0"}}}
	// An older geocode provider, lower in id order: weather's >=1.0.0
	// must not resolve to it.
	geoOld := map[string]any{"agent_id": "geo-agent-0", "http_host": "127.0.0.1", "http_port": 9100,
		"tools": []any{map[string]any{"function_name": "geocode", "capability": "geocode", "tags": []any{"maps"}, "version": "0.9.0"}}}
	stdio := map[string]any{"agent_id": "stdio-agent-1", "tools": []any{map[string]any{"function_name": "f", "capability": "local", "dependencies": []any{map[string]any{"capability": "geocode"}}}}}
	steps := []diffStep{
		{name: "empty list", method: "GET", path: "/agents", compare: true},
		{name: "register geo", method: "POST", path: "/heartbeat", body: geo, compare: true},
		{name: "register an old geo", method: "POST", path: "/heartbeat", body: geoOld, compare: true},
		{name: "register weather", method: "POST", path: "/heartbeat", body: weather, compare: true},
		{name: "register the llm provider", method: "POST", path: "/heartbeat", body: llmProvider, compare: true},
		{name: "register the llm agent", method: "POST", path: "/heartbeat", body: smart, compare: true},
		{name: "register a stdio agent", method: "POST", path: "/heartbeat", body: stdio, compare: true},
		{name: "HEAD geo after others registered", method: "HEAD", path: "/heartbeat/geo-agent-1", meshdCode: http.StatusOK, codeWhy: noNewsWhy},
		{name: "HEAD geo again", method: "HEAD", path: "/heartbeat/geo-agent-1", meshdCode: http.StatusOK, codeWhy: noNewsWhy},
		{name: "geo POSTs again", method: "POST", path: "/heartbeat", body: geo, compare: true},
		{name: "HEAD geo after its POST", method: "HEAD", path: "/heartbeat/geo-agent-1"},
		{name: "weather POSTs again", method: "POST", path: "/heartbeat", body: weather, compare: true},
		{name: "HEAD weather", method: "HEAD", path: "/heartbeat/weather-agent-1"},
		{name: "HEAD unknown", method: "HEAD", path: "/heartbeat/nobody-1"},
		{name: "list", method: "GET", path: "/agents", compare: true},
		{name: "list by capability", method: "GET", path: "/agents?capabilities=geocode", compare: true},
		{name: "list by two capabilities", method: "GET", path: "/agents?capabilities=geocode&capabilities=llm", compare: true},
		{name: "list healthy", method: "GET", path: "/agents?status=healthy", compare: true},
		{name: "list by namespace", method: "GET", path: "/agents?namespace=default", compare: true},
		{name: "list fuzzy", method: "GET", path: "/agents?fuzzy=true", compare: true},
		{name: "list fuzzy=maybe", method: "GET", path: "/agents?fuzzy=maybe", compare: true},
		{name: "GET /agents/{id}", method: "GET", path: "/agents/geo-agent-1"},
		{name: "GET /heartbeat/{id}", method: "GET", path: "/heartbeat/geo-agent-1"},
		{name: "PUT /heartbeat", method: "PUT", path: "/heartbeat", body: geo},
		{name: "health", method: "HEAD", path: "/health"},
		{name: "delete weather", method: "DELETE", path: "/agents/weather-agent-1"},
		{name: "HEAD weather after DELETE", method: "HEAD", path: "/heartbeat/weather-agent-1"},
		{name: "delete an unknown id", method: "DELETE", path: "/agents/nobody-1", meshdCode: http.StatusNotFound,
			codeWhy: "MCP Mesh answers 204 to any DELETE; meshd says the id is not registered (identity-binding.md)"},
		{name: "weather registers again", method: "POST", path: "/heartbeat", body: weather, compare: true},
		{name: "HEAD weather after re-registering", method: "HEAD", path: "/heartbeat/weather-agent-1", meshdCode: http.StatusOK,
			codeWhy: "MCP Mesh counts an agent's own return as a topology change it has not seen and asks it (202) to POST once more; meshd does not"},
		{name: "bad JSON", method: "POST", path: "/heartbeat", body: "{nope", compare: true},
		{name: "no agent_id", method: "POST", path: "/heartbeat", body: `{"name":"x"}`, compare: true},
		{name: "http_port not a number", method: "POST", path: "/heartbeat", body: `{"agent_id":"bad-port-1","http_port":"x"}`, compare: true},
		{name: "malformed timestamp", method: "POST", path: "/heartbeat", body: `{"agent_id":"bad-ts-1","timestamp":"2026-01-15"}`, compare: true},
		{name: "agent_id with capitals", method: "POST", path: "/heartbeat", body: `{"agent_id":"Bad_Id"}`, compare: true, meshdCode: http.StatusBadRequest,
			codeWhy: "MCP Mesh answers a validation failure 200 with status:error; meshd refuses it 400 (identity-binding.md)"},
		{name: "unknown agent_type", method: "POST", path: "/heartbeat", body: `{"agent_id":"bad-type-1","agent_type":"robot"}`, compare: true, meshdCode: http.StatusBadRequest,
			codeWhy: "as above"},
		{name: "list after all that", method: "GET", path: "/agents", compare: true},
	}
	runDiff(t, mm.url, e.baseURL(), steps)
}

// TestMCPMeshDependentToldOfItsProvider: a dependent's provider goes
// away and comes back. MCP Mesh's registry and meshd both tell the
// dependent (HEAD 202) each time, and its POSTs re-resolve alike; the
// provider, which depends on nothing, hears 200 from meshd where MCP
// Mesh asks it to POST for nothing.
func TestMCPMeshDependentToldOfItsProvider(t *testing.T) {
	bin := mcpmeshBin(t)
	mm := startMCPMesh(t, bin, mcpmeshOptions{mode: "off"})
	e := newEnv(t, envOptions{mode: server.TLSOff})
	agents := mcpmeshAgents(t)
	geo, weather := agents[0], agents[1]
	runDiff(t, mm.url, e.baseURL(), []diffStep{
		{name: "register geo", method: "POST", path: "/heartbeat", body: geo, compare: true},
		{name: "register weather", method: "POST", path: "/heartbeat", body: weather, compare: true},
		{name: "HEAD weather", method: "HEAD", path: "/heartbeat/weather-agent-1", both: http.StatusOK},
		{name: "HEAD geo after weather registered", method: "HEAD", path: "/heartbeat/geo-agent-1", meshdCode: http.StatusOK, codeWhy: noNewsWhy},
		{name: "delete geo", method: "DELETE", path: "/agents/geo-agent-1"},
		{name: "HEAD weather after its provider left", method: "HEAD", path: "/heartbeat/weather-agent-1", both: http.StatusAccepted},
		{name: "HEAD weather again", method: "HEAD", path: "/heartbeat/weather-agent-1", both: http.StatusAccepted},
		{name: "weather re-resolves without geo", method: "POST", path: "/heartbeat", body: weather, compare: true},
		{name: "HEAD weather after re-resolving", method: "HEAD", path: "/heartbeat/weather-agent-1", both: http.StatusOK},
		{name: "geo registers again", method: "POST", path: "/heartbeat", body: geo, compare: true},
		{name: "HEAD weather after its provider came back", method: "HEAD", path: "/heartbeat/weather-agent-1", both: http.StatusAccepted},
		{name: "weather re-resolves to geo", method: "POST", path: "/heartbeat", body: weather, compare: true},
		{name: "HEAD weather after re-resolving to geo", method: "HEAD", path: "/heartbeat/weather-agent-1", both: http.StatusOK},
	})
}

// runDiff sends each step to MCP Mesh's registry at mmURL and to meshd at
// meshdURL, and compares the answers.
func runDiff(t *testing.T, mmURL, meshdURL string, steps []diffStep) {
	t.Helper()
	plain := &http.Client{Timeout: 10 * time.Second}
	for _, s := range steps {
		want := do(t, plain, s.method, mmURL+s.path, s.body)
		got := do(t, plain, s.method, meshdURL+s.path, s.body)
		wantCode := want.code
		if s.codeWhy != "" {
			wantCode = s.meshdCode
		}
		if s.both != 0 && want.code != s.both {
			t.Errorf("%s: %s %s: MCP Mesh %s, want %d", s.name, s.method, s.path, want, s.both)
		}
		if got.code != wantCode {
			t.Errorf("%s: %s %s: meshd %s, MCP Mesh %s", s.name, s.method, s.path, got, want)
			continue
		}
		if !s.compare {
			continue
		}
		var w, g any
		if err := json.Unmarshal(want.body, &w); err != nil {
			t.Fatalf("%s: MCP Mesh's answer is not JSON: %s", s.name, want)
		}
		if err := json.Unmarshal(got.body, &g); err != nil {
			t.Errorf("%s: meshd's answer is not JSON: %s", s.name, got)
			continue
		}
		allowed := heartbeatAllowed
		if s.method == "GET" {
			allowed = listAllowed
			w, g = agentsByID(t, s.name, w, g)
		}
		for _, d := range diffJSON("", w, g, allowed) {
			t.Errorf("%s: %s %s: %s", s.name, s.method, s.path, d)
		}
	}
}

// agentsByID lines up the agents of two GET /agents answers: the ones
// MCP Mesh still lists after a DELETE (unhealthy, until its sweep) and
// meshd has deleted are dropped from MCP Mesh's side.
func agentsByID(t *testing.T, step string, want, got any) (any, any) {
	t.Helper()
	wm, ok1 := want.(map[string]any)
	gm, ok2 := got.(map[string]any)
	if !ok1 || !ok2 {
		return want, got
	}
	wa, _ := wm["agents"].([]any)
	ga, _ := gm["agents"].([]any)
	have := map[string]bool{}
	for _, a := range ga {
		have[fmt.Sprint(a.(map[string]any)["id"])] = true
	}
	var kept []any
	for _, a := range wa {
		m := a.(map[string]any)
		if !have[fmt.Sprint(m["id"])] && m["status"] == "unhealthy" {
			continue // deleted: see agentsByID
		}
		kept = append(kept, a)
	}
	if len(kept) != len(wa) {
		wm = copyMap(wm)
		wm["agents"], wm["count"] = kept, float64(len(kept))
	}
	if _, isList := wm["agents"]; isList && !strings.Contains(step, "empty") && len(kept) == 0 {
		t.Errorf("%s: MCP Mesh lists no agents", step)
	}
	return wm, gm
}

func copyMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
