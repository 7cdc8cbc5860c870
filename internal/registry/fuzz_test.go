package registry

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/meshtrust/meshtrust/identity"
)

// FuzzParseRegistration feeds heartbeat bodies, outside input, to the
// parser. Whatever it accepts has a valid agent id, and its canonical
// payload is JSON without "timestamp" that parses back to the same
// registration and is its own canonical form.
func FuzzParseRegistration(f *testing.F) {
	for _, seed := range []string{
		`{"agent_id":"weather-agent-1","timestamp":"2026-01-01T00:00:00Z","http_host":"127.0.0.1","http_port":9101,` +
			`"tools":[{"function_name":"f","capability":"c","tags":["a"],"dependencies":[{"capability":"geocode","tags":["maps"]}]}]}`,
		`{"agent_id":"a"}`, `{"agent_id":"Opus"}`, `{}`, `[]`, `null`, `{"agent_id":"a","agent_id":"b"}`,
		`{"agent_id":"a","http_port":70000}`, `{"agent_id":"a","tools":[{}]}`, `{"agent_id":"a","x":{"y":[1,2,{"z":null}]}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		reg, payload, err := ParseRegistration(body)
		if err != nil {
			return
		}
		if identity.ValidateID(reg.AgentID) != nil {
			t.Fatalf("accepted agent_id %q", reg.AgentID)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(payload, &fields); err != nil {
			t.Fatalf("canonical payload %q is not a JSON object: %v", payload, err)
		}
		if _, ok := fields["timestamp"]; ok {
			t.Fatalf("canonical payload keeps the timestamp: %q", payload)
		}
		again, payload2, err := ParseRegistration(payload)
		if err != nil {
			t.Fatalf("canonical payload %q no longer parses: %v", payload, err)
		}
		if !bytes.Equal(payload, payload2) {
			t.Fatalf("canonical form is not stable: %q then %q", payload, payload2)
		}
		if !reflect.DeepEqual(reg, again) {
			t.Fatalf("registration changed through its canonical form: %+v then %+v", reg, again)
		}
	})
}

// FuzzParseBindings: no operator setting makes the parser panic, and one
// that parses prints as a setting that parses to the same.
func FuzzParseBindings(f *testing.F) {
	for _, s := range []string{"filestore=cn,trust-domain", "spire=spiffe:spiffe://mcp-mesh.local/agent/{agent}", "localca=none;x=cn-replicas", "a=trust-domain:td.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bs, err := ParseBindings(s, "mcp-mesh.local")
		if err != nil {
			return
		}
		for source, b := range bs {
			again, err := ParseBinding(b.String(), "mcp-mesh.local")
			if err != nil || again.String() != b.String() {
				t.Fatalf("%s=%s does not parse back: %v, %s", source, b, err, again)
			}
		}
	})
}

// FuzzParseEntityNamespaces: as FuzzParseBindings, for namespaces.
func FuzzParseEntityNamespaces(f *testing.F) {
	for _, s := range []string{"acme=ids:a,b", "beta=first-claim gamma=prefix", "x=ids:a-b,a-b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ns, err := ParseEntityNamespaces(s)
		if err != nil {
			return
		}
		for entity, n := range ns {
			again, err := ParseNamespace(n.String())
			if err != nil || again.String() != n.String() {
				t.Fatalf("%s=%s does not parse back: %v, %s", entity, n, err, again)
			}
		}
	})
}
