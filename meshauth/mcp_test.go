package meshauth_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/meshauth"
)

const mcpPolicy = `
rules:
  - name: everyone-basics
    who: ["*"]
    mcp:
      methods: [initialize, "notifications/*", tools/list, resources/list, prompts/list]
  - name: opus-search
    who: [opus@ct111]
    mcp:
      tools: ["search_*"]
      resources: ["file:///docs/**"]
      prompts: [summarize]
  - name: partner-read
    who: ["entity:partner-corp"]
    mcp:
      tools: [read_file]
`

// fakeMCP answers like an MCP server: lists of everything it has, and
// the name of what was called; stream answers as an event stream.
func fakeMCP(stream bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				Name, URI string
			} `json:"params"`
		}
		json.Unmarshal(body, &req)
		var result string
		switch req.Method {
		case "tools/list":
			result = `{"tools":[{"name":"search_docs"},{"name":"search_web"},{"name":"read_file"},{"name":"delete_all"}],"nextCursor":"c1"}`
		case "resources/list":
			result = `{"resources":[{"uri":"file:///docs/a/b.md","name":"b"},{"uri":"file:///etc/passwd","name":"p"}]}`
		case "prompts/list":
			result = `{"prompts":[{"name":"summarize"},{"name":"jailbreak"}]}`
		default:
			result = fmt.Sprintf(`{"called":%q}`, req.Method+" "+req.Params.Name+req.Params.URI)
		}
		msg := `{"jsonrpc":"2.0","id":` + string(req.ID) + `,"result":` + result + `}`
		if stream {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "event: message\ndata: %s\n\n", msg)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, msg)
	})
}

func rpc(method, params string) string {
	if params == "" {
		return fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":%q}`, method)
	}
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":%q,"params":%s}`, method, params)
}

func TestMCPCalls(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, mcpPolicy).Authorize})
	srv := serve(t, a, a.MCP(fakeMCP(false)))
	opus, bob, haiku := agentOf(t, w.mesh, "opus", "ct111"), leafOf(t, w.partner, "bob", ""), agentOf(t, w.mesh, "haiku", "ct112")
	tests := []struct {
		name    string
		cert    *tlsCert
		body    string
		headers []string
		code    int
		rpcCode int
		reason  string
	}{
		{"initialize", &haiku, rpc("initialize", `{}`), nil, 200, 0, ""},
		{"allowed tool", &opus, rpc("tools/call", `{"name":"search_docs","arguments":{"q":"x"}}`), nil, 200, 0, ""},
		{"denied tool", &opus, rpc("tools/call", `{"name":"delete_all"}`), nil, 403, meshauth.CodeForbidden, meshauth.ReasonForbidden},
		{"entity tool", &bob, rpc("tools/call", `{"name":"read_file"}`), nil, 200, 0, ""},
		{"tool of another rule", &haiku, rpc("tools/call", `{"name":"read_file"}`), nil, 403, meshauth.CodeForbidden, meshauth.ReasonForbidden},
		{"resource", &opus, rpc("resources/read", `{"uri":"file:///docs/x/y.md"}`), nil, 200, 0, ""},
		{"resource outside", &opus, rpc("resources/read", `{"uri":"file:///etc/passwd"}`), nil, 403, meshauth.CodeForbidden, meshauth.ReasonForbidden},
		{"prompt", &opus, rpc("prompts/get", `{"name":"summarize"}`), nil, 200, 0, ""},
		{"method not granted", &opus, rpc("sampling/createMessage", `{}`), nil, 403, meshauth.CodeForbidden, meshauth.ReasonForbidden},
		{"no certificate", nil, rpc("tools/call", `{"name":"search_docs"}`), nil, 401, meshauth.CodeUnauthenticated, "no_certificate"},
		{"headers match", &opus, rpc("tools/call", `{"name":"search_docs"}`), []string{"Mcp-Method", "tools/call", "Mcp-Name", "search_docs"}, 200, 0, ""},
		{"header names another tool", &opus, rpc("tools/call", `{"name":"delete_all"}`), []string{"Mcp-Method", "tools/call", "Mcp-Name", "search_docs"}, 400, -32600, meshauth.ReasonHeaderMismatch},
		{"header names another method", &opus, rpc("tools/call", `{"name":"search_docs"}`), []string{"Mcp-Method", "tools/list"}, 400, -32600, meshauth.ReasonHeaderMismatch},
		{"duplicate method key", &opus, `{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call","params":{"name":"delete_all"}}`, nil, 400, -32700, meshauth.ReasonBadRequest},
		{"method key in other case", &opus, `{"jsonrpc":"2.0","id":7,"method":"tools/list","Method":"tools/call"}`, nil, 400, -32700, meshauth.ReasonBadRequest},
		{"duplicate name", &opus, rpc("tools/call", `{"name":"search_docs","name":"delete_all"}`), nil, 400, -32600, meshauth.ReasonBadRequest},
		{"batch", &opus, "[" + rpc("initialize", "") + "]", nil, 400, -32600, meshauth.ReasonBadRequest},
		{"tools/call without a name", &opus, rpc("tools/call", `{}`), nil, 400, -32600, meshauth.ReasonBadRequest},
		{"not JSON", &opus, `hello`, nil, 400, -32700, meshauth.ReasonBadRequest},
		{"a response to the server", &opus, `{"jsonrpc":"2.0","id":3,"result":{}}`, nil, 200, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, client(srv, tt.cert), "POST", srv.URL+"/mcp", tt.body, append([]string{"Content-Type", "application/json"}, tt.headers...)...)
			if r.code != tt.code {
				t.Fatalf("code %d, want %d: %s", r.code, tt.code, r.body)
			}
			if tt.code == 200 {
				return
			}
			var e struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Error   struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
					Data    struct{ Reason string }
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(r.body), &e); err != nil {
				t.Fatalf("refusal is not JSON-RPC: %s", r.body)
			}
			if e.JSONRPC != "2.0" || e.Error.Code != tt.rpcCode || e.Error.Data.Reason != tt.reason || e.Error.Message == "" {
				t.Fatalf("refusal %s, want code %d reason %q", r.body, tt.rpcCode, tt.reason)
			}
			// A caller without an identity is refused before its body (and
			// so its id) is read.
			if strings.HasPrefix(tt.body, `{"jsonrpc":"2.0","id":7`) && tt.rpcCode != -32700 && tt.code != 401 && string(e.ID) != "7" {
				t.Fatalf("refusal id %s, want the request's 7", e.ID)
			}
		})
	}
}

func TestMCPListFiltering(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			w := newWorld(t)
			a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, mcpPolicy).Authorize})
			srv := serve(t, a, a.MCP(fakeMCP(stream)))
			opus, bob, haiku := agentOf(t, w.mesh, "opus", "ct111"), leafOf(t, w.partner, "bob", ""), agentOf(t, w.mesh, "haiku", "ct112")
			tests := []struct {
				cert   *tlsCert
				method string
				want   []string
			}{
				{&opus, "tools/list", []string{"search_docs", "search_web"}},
				{&bob, "tools/list", []string{"read_file"}},
				{&haiku, "tools/list", nil},
				{&opus, "resources/list", []string{"file:///docs/a/b.md"}},
				{&opus, "prompts/list", []string{"summarize"}},
				{&bob, "prompts/list", nil},
			}
			for _, tt := range tests {
				r := do(t, client(srv, tt.cert), "POST", srv.URL+"/mcp", rpc(tt.method, `{}`))
				if r.code != 200 {
					t.Fatalf("%s %s: %d %s", tt.cert.Leaf.Subject.CommonName, tt.method, r.code, r.body)
				}
				body := r.body
				if stream {
					if !strings.HasPrefix(body, "event: message\ndata: ") {
						t.Fatalf("not an event stream: %q", body)
					}
					body = strings.TrimSpace(strings.TrimPrefix(body, "event: message\ndata: "))
				}
				var msg struct {
					ID     int `json:"id"`
					Result map[string]json.RawMessage
				}
				if err := json.Unmarshal([]byte(body), &msg); err != nil {
					t.Fatalf("%s: %v: %s", tt.method, err, body)
				}
				var items []struct{ Name, URI string }
				field := strings.TrimSuffix(tt.method, "/list")
				json.Unmarshal(msg.Result[field], &items)
				var got []string
				for _, it := range items {
					got = append(got, it.Name+it.URI)
				}
				if tt.method == "resources/list" {
					got = nil
					for _, it := range items {
						got = append(got, it.URI)
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) || msg.ID != 7 {
					t.Errorf("%s %s: %v (id %d), want %v", tt.cert.Leaf.Subject.CommonName, tt.method, got, msg.ID, tt.want)
				}
				if tt.method == "tools/list" && string(msg.Result["nextCursor"]) != `"c1"` {
					t.Errorf("the result's other fields were lost: %s", body)
				}
			}
		})
	}
}
