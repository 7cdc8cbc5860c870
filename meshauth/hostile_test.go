package meshauth_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/meshauth"
)

// The hostile cases of issue 19 item 2, over real TLS on loopback: the
// name a rule allowed is the name the handler acts on, list answers show
// only what the caller may call however they are framed, and a caller is
// identified before its body is read.

const canonicalPolicy = `
rules:
  - name: everyone-basics
    who: ["*"]
    mcp:
      methods: [initialize, tools/list, resources/list, resources/templates/list, prompts/list, resources/subscribe, completion/complete]
  - name: opus-files
    who: [opus@ct111]
    http: ["GET /files/**"]
    mcp:
      tools: ["search_*"]
      resources: ["file:///docs/**"]
      prompts: [summarize]
`

// pathRecorder answers 200 and records every path it was handed.
type pathRecorder struct {
	mu    sync.Mutex
	paths []string
}

func (p *pathRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.paths = append(p.paths, r.URL.EscapedPath())
	p.mu.Unlock()
	io.WriteString(w, "ok")
}

func (p *pathRecorder) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.paths...)
}

func TestHostileNonCanonicalPaths(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, canonicalPolicy).Authorize})
	rec := &pathRecorder{}
	srv := serve(t, a, a.Handler(rec))
	opus := agentOf(t, w.mesh, "opus", "ct111")
	c := client(srv, &opus)
	for _, p := range []string{"/files/../admin/keys", "/files/%2e%2e/admin/keys", "/files/%2E%2E/admin/keys",
		"/files/..%2Fadmin/keys", "/files/x%2F..%2F..%2Fadmin", "/files/./x", "/files//x", "/files/%61", "/files/x%5C..%5Cadmin"} {
		r := do(t, c, "GET", srv.URL+p, "")
		var e struct{ Reason string }
		json.Unmarshal([]byte(r.body), &e)
		if r.code != http.StatusBadRequest || e.Reason != meshauth.ReasonNotCanonical {
			t.Errorf("GET %s: %d %s, want 400 %s", p, r.code, r.body, meshauth.ReasonNotCanonical)
		}
	}
	if r := do(t, c, "GET", srv.URL+"/files/a/b%20c.md", ""); r.code != 200 {
		t.Fatalf("GET of a canonical path: %d %s", r.code, r.body)
	}
	if got := rec.seen(); fmt.Sprint(got) != "[/files/a/b%20c.md]" {
		t.Fatalf("the handler was handed %v, want only the canonical path", got)
	}
}

// listServer answers every list method with the given status, content
// type and body (a format with %s for the request's id), and other
// methods with the method and name it was asked for.
func listServer(code int, ct, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID     json.RawMessage
			Method string
		}
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &req)
		if !strings.HasSuffix(req.Method, "/list") {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"called":%q}}`, req.ID, string(b))
			return
		}
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(code)
		fmt.Fprintf(w, body, req.ID)
	})
}

const allTools = `{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"search_docs"},{"name":"delete_everything"}]}}`

func TestHostileListAnswers(t *testing.T) {
	tests := []struct {
		name, ct, body string
		code           int
	}{
		{"bare CR event stream", "text/event-stream", "event: message\rdata: " + allTools + "\r\r", 200},
		{"CRLF event stream", "text/event-stream", "event: message\r\ndata: " + allTools + "\r\n\r\n", 200},
		{"BOM before the stream", "text/event-stream", "\uFEFFdata: " + allTools + "\n\n", 200},
		{"batch in an event", "text/event-stream", "event: message\ndata: [" + allTools + "]\n\n", 200},
		{"message over two data lines", "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":%s,\ndata: \"result\":{\"tools\":[{\"name\":\"delete_everything\"}]}}\n\n", 200},
		{"second event", "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\ndata: " + allTools + "\n\n", 200},
		{"event-stream in capitals", "Text/Event-Stream", "data: " + allTools + "\n\n", 200},
		{"JSON batch", "application/json", "[" + allTools + "]", 200},
		{"JSON, status 500", "application/json", allTools, 500},
		{"JSON, status 203", "application/json", allTools, 203},
		{"event stream, status 206", "text/event-stream", "data: " + allTools + "\n\n", 206},
		{"result key in capitals", "application/json", `{"jsonrpc":"2.0","id":%s,"Result":{"tools":[{"name":"delete_everything"}]}}`, 200},
		{"tools key twice", "application/json", `{"jsonrpc":"2.0","id":%s,"result":{"tools":[],"Tools":[{"name":"delete_everything"}]}}`, 200},
		{"item named twice", "application/json", `{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"search_docs","Name":"delete_everything"}]}}`, 200},
		{"plain text, status 500", "text/plain", "delete_everything is broken %s", 500},
	}
	w := newWorld(t)
	opus := agentOf(t, w.mesh, "opus", "ct111")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, canonicalPolicy).Authorize})
			srv := serve(t, a, a.MCP(listServer(tt.code, tt.ct, tt.body)))
			r := do(t, client(srv, &opus), "POST", srv.URL+"/mcp", rpc("tools/list", `{}`))
			if strings.Contains(r.body, "delete_everything") {
				t.Fatalf("%d: a tool opus may not call went out: %q", r.code, r.body)
			}
			if r.code == http.StatusBadGateway {
				return // refused whole: nothing went out
			}
			if strings.Contains(tt.body, `{"name":"search_docs"}`) && !strings.Contains(r.body, "search_docs") {
				t.Fatalf("%d: the allowed tool was lost: %q", r.code, r.body)
			}
		})
	}
}

func TestHostileMCPNames(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, canonicalPolicy).Authorize})
	srv := serve(t, a, a.MCP(listServer(200, "application/json",
		`{"jsonrpc":"2.0","id":%s,"result":{"resourceTemplates":[{"uriTemplate":"file:///docs/{path}","name":"docs"},{"uriTemplate":"file:///etc/{name}","name":"etc"},{"uriTemplate":"file:///docs/{a}/../../etc/{b}","name":"up"}]}}`)))
	opus := agentOf(t, w.mesh, "opus", "ct111")
	c := client(srv, &opus)
	tests := []struct {
		name, body string
		code       int
		reason     string
	}{
		{"read a doc", rpc("resources/read", `{"uri":"file:///docs/a.md"}`), 200, ""},
		{"read up a dot segment", rpc("resources/read", `{"uri":"file:///docs/../etc/shadow"}`), 400, meshauth.ReasonNotCanonical},
		{"read up an encoded dot segment", rpc("resources/read", `{"uri":"file:///docs/%2e%2e/etc/shadow"}`), 400, meshauth.ReasonNotCanonical},
		{"read through an encoded slash", rpc("resources/read", `{"uri":"file:///docs/..%2Fetc/shadow"}`), 400, meshauth.ReasonNotCanonical},
		{"subscribe to a doc", rpc("resources/subscribe", `{"uri":"file:///docs/a.md"}`), 200, ""},
		{"subscribe outside", rpc("resources/subscribe", `{"uri":"file:///etc/shadow"}`), 403, meshauth.ReasonForbidden},
		{"subscribe up a dot segment", rpc("resources/subscribe", `{"uri":"file:///docs/../etc/shadow"}`), 400, meshauth.ReasonNotCanonical},
		{"complete an allowed prompt", rpc("completion/complete", `{"ref":{"type":"ref/prompt","name":"summarize"},"argument":{"name":"a","value":"b"}}`), 200, ""},
		{"complete another prompt", rpc("completion/complete", `{"ref":{"type":"ref/prompt","name":"jailbreak"},"argument":{"name":"a","value":"b"}}`), 403, meshauth.ReasonForbidden},
		{"complete an allowed template", rpc("completion/complete", `{"ref":{"type":"ref/resource","uri":"file:///docs/{path}"},"argument":{"name":"path","value":""}}`), 200, ""},
		{"complete another template", rpc("completion/complete", `{"ref":{"type":"ref/resource","uri":"file:///etc/{name}"},"argument":{"name":"name","value":""}}`), 403, meshauth.ReasonForbidden},
		{"complete a ref of no known type", rpc("completion/complete", `{"ref":{"type":"ref/tool","name":"delete_all"}}`), 400, meshauth.ReasonBadRequest},
		{"complete a ref named twice", rpc("completion/complete", `{"ref":{"type":"ref/prompt","name":"summarize","Name":"jailbreak"}}`), 400, meshauth.ReasonBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, c, "POST", srv.URL+"/mcp", tt.body)
			var e struct {
				Error struct{ Data struct{ Reason string } }
			}
			json.Unmarshal([]byte(r.body), &e)
			if r.code != tt.code || e.Error.Data.Reason != tt.reason {
				t.Fatalf("%d %s, want %d %q", r.code, r.body, tt.code, tt.reason)
			}
		})
	}
	t.Run("templates/list", func(t *testing.T) {
		r := do(t, c, "POST", srv.URL+"/mcp", rpc("resources/templates/list", `{}`))
		var msg struct {
			Result struct {
				ResourceTemplates []struct{ URITemplate string }
			}
		}
		if err := json.Unmarshal([]byte(r.body), &msg); err != nil || r.code != 200 {
			t.Fatalf("%d %s", r.code, r.body)
		}
		if got := fmt.Sprint(msg.Result.ResourceTemplates); got != "[{file:///docs/{path}}]" {
			t.Fatalf("templates %s, want only file:///docs/{path}", got)
		}
	})
}

// unreadBody fails the test if the middleware reads it.
type unreadBody struct{ t *testing.T }

func (b unreadBody) Read([]byte) (int, error) {
	b.t.Error("the body was read before the caller was identified and authorized")
	return 0, io.EOF
}
func (unreadBody) Close() error { return nil }

func TestMCPIdentifiesBeforeReadingBody(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, canonicalPolicy).Authorize})
	h := a.MCP(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("the handler ran") }))
	opus := agentOf(t, w.mesh, "opus", "ct111")
	tests := []struct {
		name    string
		cert    *tls.Certificate
		headers []string
		code    int
	}{
		{"no certificate", nil, nil, 401},
		{"untrusted certificate", ptr(leafOf(t, pkitest.NewRoot(t, "stranger"), "opus@ct111", "")), nil, 401},
		{"headers name a tool it may not call", &opus, []string{"Mcp-Method", "tools/call", "Mcp-Name", "delete_all"}, 403},
		{"headers name a method it may not call", &opus, []string{"Mcp-Method", "sampling/createMessage"}, 403},
		{"headers name a resource up a dot segment", &opus, []string{"Mcp-Method", "resources/read", "Mcp-Name", "file:///docs/../etc/shadow"}, 400},
		{"endpoint path up a dot segment", &opus, []string{"X-Path", "/mcp/../admin"}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "https://mcp.example/mcp", nil)
			if len(tt.headers) == 2 && tt.headers[0] == "X-Path" {
				r.URL.Path, tt.headers = tt.headers[1], nil
			}
			r.Body = unreadBody{t}
			r.ContentLength = 4 << 20
			if tt.cert != nil {
				r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{tt.cert.Leaf}}
			} else {
				r.TLS = nil
			}
			for i := 0; i+1 < len(tt.headers); i += 2 {
				r.Header.Set(tt.headers[i], tt.headers[i+1])
			}
			rw := httptest.NewRecorder()
			h.ServeHTTP(rw, r)
			if rw.Code != tt.code {
				t.Fatalf("%d %s, want %d", rw.Code, rw.Body, tt.code)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
