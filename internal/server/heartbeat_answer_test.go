package server

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/meshtrust/meshtrust/internal/registry"
)

// heartbeatResponse is MCP Mesh's heartbeat answer plus rotate, as
// encoding/json writes it: what appendHeartbeatResponse must write.
type heartbeatResponse struct {
	AgentID              string                           `json:"agent_id"`
	Status               string                           `json:"status"`
	Message              string                           `json:"message"`
	Rotate               bool                             `json:"rotate"`
	DependenciesResolved map[string][]registry.Resolution `json:"dependencies_resolved"`
	LLMTools             struct{}                         `json:"llm_tools"`
	Timestamp            string                           `json:"timestamp"`
}

// TestHeartbeatResponseAsEncodingJSON checks that the heartbeat answer
// written by hand is byte for byte what encoding/json writes for
// heartbeatResponse: escaping, a missing resolution, a pre-encoded one
// and one encoded on the spot.
func TestHeartbeatResponseAsEncodingJSON(t *testing.T) {
	resolved := map[string][]registry.Resolution{
		"get_weather": {{AgentID: "geo-<1>&\u2028", Capability: "geo", Endpoint: "https://10.0.0.1:9000", FunctionName: "where", Status: "available"}},
		"empty":       {},
	}
	pre, err := json.Marshal(resolved)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		res  registry.Result
		msg  string
	}{
		{"no resolution", registry.Result{AgentID: "weather"}, "Agent registered via heartbeat"},
		{"pre-encoded", registry.Result{AgentID: "weather", Resolved: resolved, ResolvedJSON: pre}, "Agent updated via heartbeat"},
		{"encoded here", registry.Result{AgentID: "weather", Rotate: true, Resolved: resolved}, "Agent updated via heartbeat; re-register with a fresh certificate"},
		{"escaped id", registry.Result{AgentID: "a\"b<c>&d\x7f\xff"}, "m"},
		{"empty resolution", registry.Result{AgentID: "x", Resolved: map[string][]registry.Resolution{}}, "m"},
	} {
		const ts = "2026-12-01T16:00:00.123456789Z"
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(heartbeatResponse{AgentID: tc.res.AgentID, Status: "success", Message: tc.msg,
			Rotate: tc.res.Rotate, DependenciesResolved: tc.res.Resolved, Timestamp: ts}); err != nil {
			t.Fatal(err)
		}
		if got := appendHeartbeatResponse(nil, tc.res, tc.msg, ts); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, want.Bytes())
		}
	}
}
