package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"testing/iotest"
	"time"

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
		for _, at := range []time.Time{
			time.Date(2026, 12, 1, 16, 0, 0, 123456789, time.UTC),
			time.Date(2026, 12, 1, 16, 0, 0, 120000000, time.UTC), // trailing zeros trimmed
			time.Date(2026, 12, 1, 16, 0, 0, 0, time.UTC),
			time.Date(2026, 12, 1, 17, 0, 0, 5, time.FixedZone("CET", 3600)), // written in UTC
		} {
			var want bytes.Buffer
			if err := json.NewEncoder(&want).Encode(meshapi.HeartbeatResponse{AgentID: tc.res.AgentID, Status: "success", Message: tc.msg,
				Rotate: tc.res.Rotate, DependenciesResolved: tc.res.Resolved, Timestamp: at.UTC().Format(time.RFC3339Nano)}); err != nil {
				t.Fatal(err)
			}
			// Appended after bytes already there, as into a reused buffer.
			got := appendHeartbeatResponse([]byte("old"), tc.res, tc.msg, at)
			if !bytes.Equal(got[3:], want.Bytes()) || string(got[:3]) != "old" {
				t.Errorf("%s at %s:\n got %s\nwant %s", tc.name, at, got, want.Bytes())
			}
		}
	}
}

// TestAppendJSONString checks the heartbeat answer's strings against
// encoding/json's, bytes it escapes and invalid UTF-8 included.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "weather-agent-1", "opus@ct111", "Agent updated via heartbeat; re-register with a fresh certificate",
		`a"b`, `a\b`, "<", ">", "&", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "é", "\xff", "a\xc3", "tab\there", "~ ok !#$%'()*+,-./:;=?[]^_`{|}"} {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString([]byte("x"), s); string(got) != "x"+string(want) {
			t.Errorf("%q: got %s, want %s", s, got[1:], want)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	f.Add("weather-agent-1")
	f.Add("a\"<>&\u2028\xff")
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	})
}

// TestReadAll checks the heartbeat body's reader against io.ReadAll, from
// buffers of every spare capacity, with what they held before ignored.
func TestReadAll(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 300)
	for _, n := range []int{0, 1, 15, 16, 4096, len(body)} {
		for _, c := range []int{0, 1, 512, len(body) - 1, len(body), 2 * len(body)} {
			got, err := readAll(iotest.OneByteReader(bytes.NewReader(body[:n])), append(make([]byte, 0, c), "stale"[:min(c, 5)]...)[:0])
			if err != nil || !bytes.Equal(got, body[:n]) {
				t.Errorf("%d bytes into capacity %d: %d bytes, %v", n, c, len(got), err)
			}
		}
	}
	want := errors.New("cut")
	if _, err := readAll(iotest.ErrReader(want), nil); !errors.Is(err, want) {
		t.Errorf("a failing reader: %v, want %v", err, want)
	}
}
