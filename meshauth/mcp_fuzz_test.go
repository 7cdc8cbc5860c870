package meshauth

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// rpcSeeds are JSON-RPC requests, the attacks on parseRPC among them.
var rpcSeeds = []string{
	`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"}}`,
	`{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"delete_all"}}`,
	`{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call"}`,
	`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","NAME":"b"}}`,
	`[{"jsonrpc":"2.0","id":1,"method":"initialize"}]`,
	`{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///docs/../etc/shadow"}}`,
	`{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///etc/passwd"}}`,
	`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":"b"}}}`,
	`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{x}","URI":"file:///etc"}}}`,
	`{"jsonrpc":"2.0","id":3,"result":{}}`,
}

// FuzzParseRPC checks that whatever parseRPC accepts, a server decoding
// the body with encoding/json (which matches keys in any case and keeps
// the last of duplicates) reads the same method and the same name.
func FuzzParseRPC(f *testing.F) {
	for _, s := range rpcSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		msg, _, err := parseRPC(body)
		if err != nil {
			return
		}
		var server struct {
			Method string
			Params struct {
				Name, URI string
				Ref       struct{ Type, Name, URI string }
			}
		}
		if json.Unmarshal(body, &server) != nil {
			return // the server refuses it too
		}
		if server.Method != msg.Method {
			t.Fatalf("meshauth read method %q, a server reads %q", msg.Method, server.Method)
		}
		var name string
		switch {
		case msg.Method == "completion/complete":
			name = server.Params.Ref.Name
			if msg.gate == "resources/read" {
				name = server.Params.Ref.URI
			}
		case msg.gate == "resources/read":
			name = server.Params.URI
		case msg.gate != "":
			name = server.Params.Name
		default:
			return
		}
		if msg.name == "" || name != msg.name {
			t.Fatalf("%s: meshauth authorizes %q, a server acts on %q", msg.Method, msg.name, name)
		}
	})
}

// keepOK allows the names that begin with "ok".
func keepOK(name string) bool { return strings.HasPrefix(name, "ok") }

// listAnswer is how a client written in Go reads a tools/list answer:
// keys in any case, the last of duplicates.
type listAnswer struct {
	Result *struct {
		Tools []struct{ Name string }
	}
}

// checkFiltered fails t if a client reading the message data sees a
// tool keepOK does not allow, read as a Go client or as a JavaScript one
// (exact keys) would.
func checkFiltered(t *testing.T, data []byte) {
	t.Helper()
	var g listAnswer
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatalf("filtered message does not decode: %v: %q", err, data)
	}
	if g.Result != nil {
		for _, it := range g.Result.Tools {
			if !keepOK(it.Name) {
				t.Fatalf("tool %q passed the filter: %q", it.Name, data)
			}
		}
	}
	var exact struct {
		Result map[string][]map[string]any `json:"result"`
	}
	if json.Unmarshal(data, &exact) == nil {
		for _, it := range exact.Result["tools"] {
			if n, _ := it["name"].(string); !keepOK(n) {
				t.Fatalf("tool %v passed the filter: %q", it["name"], data)
			}
		}
	}
}

var listSeeds = []string{
	`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok_a"},{"name":"bad"}]}}`,
	`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok_a","Name":"bad"}]}}`,
	`{"jsonrpc":"2.0","id":1,"result":{"tools":[],"Tools":[{"name":"bad"}]}}`,
	`{"jsonrpc":"2.0","id":1,"Result":{"tools":[{"name":"bad"}]}}`,
	`[{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"bad"}]}}]`,
	`{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}`,
}

// FuzzFilterMessage checks that a filtered JSON list answer shows a
// client only what the filter allows.
func FuzzFilterMessage(f *testing.F) {
	for _, s := range listSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := filterMessage(data, "tools", "name", keepOK)
		if err != nil {
			return
		}
		checkFiltered(t, out)
	})
}

// sseLine splits an event stream into lines as the HTML standard says.
var sseLine = regexp.MustCompile(`\r\n|\r|\n`)

// FuzzFilterStream checks that a filtered event stream shows a client,
// reading it as the HTML standard's event-stream parser does, only what
// the filter allows, in every event.
func FuzzFilterStream(f *testing.F) {
	for _, s := range listSeeds {
		f.Add([]byte("event: message\ndata: " + s + "\n\n"))
		f.Add([]byte("event: message\rdata: " + s + "\r\r"))
		f.Add([]byte("\uFEFFdata: " + s + "\r\n\r\n"))
	}
	f.Add([]byte("data: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{\"tools\":[{\"name\":\"bad\"}]}}\n\n"))
	f.Add([]byte("id: 1\ndata:\n\ndata: [{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"bad\"}]}}]\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := filterStream(data, "tools", "name", keepOK)
		if err != nil {
			return
		}
		text := strings.TrimPrefix(string(out), "\uFEFF")
		var payload []string
		for _, line := range sseLine.Split(text, -1) {
			if line == "" {
				if p := strings.Join(payload, "\n"); strings.TrimSpace(p) != "" {
					checkFiltered(t, []byte(p))
				}
				payload = nil
				continue
			}
			field, value := line, ""
			if i := strings.IndexByte(line, ':'); i >= 0 {
				field, value = line[:i], strings.TrimPrefix(line[i+1:], " ")
			}
			if field == "data" {
				payload = append(payload, value)
			}
		}
	})
}
