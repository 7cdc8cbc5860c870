package server

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestHeartbeatResponseAsEncodingJSON checks that the heartbeat answer
// written by hand is byte for byte what encoding/json writes for
// meshapi.HeartbeatResponse: escaping, a missing resolution, a
// pre-encoded one and one encoded on the spot.
func TestHeartbeatResponseAsEncodingJSON(t *testing.T) {
	resolved := map[string][]meshapi.Resolution{
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
		{"empty resolution", registry.Result{AgentID: "x", Resolved: map[string][]meshapi.Resolution{}}, "m"},
	} {
		const ts = "2026-12-01T16:00:00.123456789Z"
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(meshapi.HeartbeatResponse{AgentID: tc.res.AgentID, Status: "success", Message: tc.msg,
			Rotate: tc.res.Rotate, DependenciesResolved: tc.res.Resolved, Timestamp: ts}); err != nil {
			t.Fatal(err)
		}
		if got := appendHeartbeatResponse(nil, tc.res, tc.msg, ts); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, want.Bytes())
		}
	}
}
