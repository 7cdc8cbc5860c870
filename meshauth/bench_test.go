package meshauth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/meshauth"
)

// BenchmarkMiddleware measures what the middleware adds to a request on an
// established connection: "bare" is the handler alone, "meshauth" the
// handler behind Handler with a policy decision. In-process, the request
// carries its connection's TLS state and context as http.Server gives
// them; over loopback, a keep-alive TLS connection carries real requests.
// Compare meshauth against bare of the same kind, in the same run.
func BenchmarkMiddleware(b *testing.B) {
	w := newWorld(b)
	p := mustPolicy(b, httpPolicy)
	a := newAuth(b, w, meshauth.Config{Authorizer: p.Authorize})
	opus := agentOf(b, w.mesh, "opus", "ct111")
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	handlers := []struct {
		name string
		h    http.Handler
	}{{"bare", ok}, {"meshauth", a.Handler(ok)}}

	for _, h := range handlers {
		b.Run("inproc/"+h.name, func(b *testing.B) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()
			ctx := a.ConnContext(context.Background(), c1)
			req := httptest.NewRequestWithContext(ctx, "GET", "https://meshd/files/a", nil)
			req.TLS = &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509Certificate{opus.Leaf}}
			rw := &discardWriter{h: http.Header{}}
			h.h.ServeHTTP(rw, req) // the connection's first request verifies
			if rw.code != http.StatusNoContent {
				b.Fatalf("status %d", rw.code)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				h.h.ServeHTTP(rw, req)
			}
		})
	}
	for _, h := range handlers {
		b.Run("loopback/"+h.name, func(b *testing.B) {
			srv := serve(b, a, h.h)
			c := client(srv, &opus)
			get := func() {
				resp, err := c.Get(srv.URL + "/files/a")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			get()
			b.ResetTimer()
			for b.Loop() {
				get()
			}
		})
	}
}

type x509Certificate = x509.Certificate

type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }

// bigPolicy returns a policy of n rules: exact identities mostly, then
// nodes' agents, entities, SPIFFE IDs and globs, each granting HTTP paths,
// gRPC methods and MCP tools.
func bigPolicy(b *testing.B, n int) *meshauth.Policy {
	var doc strings.Builder
	doc.WriteString("rules:\n")
	for i := range n {
		var who string
		switch {
		case i%100 == 99:
			who = fmt.Sprintf(`"*@node-%d"`, i)
		case i%100 == 98:
			who = fmt.Sprintf(`"entity:partner-%d"`, i)
		case i%100 == 97:
			who = fmt.Sprintf(`"spiffe://example.org/ns/%d/*"`, i)
		case i%100 == 96:
			who = fmt.Sprintf(`"worker-*@node-%d"`, i)
		default:
			who = fmt.Sprintf("agent-%d@node-%d", i, i%50)
		}
		fmt.Fprintf(&doc, "  - name: rule-%d\n    who: [%s]\n    http: [\"GET /svc/%d/*\", \"POST /svc/%d/jobs\"]\n    grpc: [\"/svc%d.S/*\"]\n    mcp:\n      methods: [initialize, tools/list]\n      tools: [\"tool_%d_*\", read_%d]\n",
			i, who, i, i, i, i, i)
	}
	return mustPolicy(b, doc.String())
}

// BenchmarkPolicyDecision measures one decision over a policy of 10,000
// rules against the same decision over a policy of one rule, in the same
// run: the ratio shows that the cost does not grow with the policy.
func BenchmarkPolicyDecision(b *testing.B) {
	caller, _ := meshauth.ModelCaller("agent-5000@node-0", meshauth.ModelSource{}, td)
	ops := map[string]meshauth.Operation{
		"http-allow": {Kind: meshauth.KindHTTP, Method: "GET", Path: "/svc/5000/items"},
		"mcp-allow":  {Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "tool_5000_search"},
		"deny":       {Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "tool_4000_search"},
	}
	for _, n := range []int{1, 10000} {
		p := bigPolicy(b, n)
		if n == 1 {
			caller, _ = meshauth.ModelCaller("agent-0@node-0", meshauth.ModelSource{}, td)
			ops = map[string]meshauth.Operation{
				"http-allow": {Kind: meshauth.KindHTTP, Method: "GET", Path: "/svc/0/items"},
				"mcp-allow":  {Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "tool_0_search"},
				"deny":       {Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "tool_9_search"},
			}
		} else {
			caller, _ = meshauth.ModelCaller("agent-5000@node-0", meshauth.ModelSource{}, td)
			ops = map[string]meshauth.Operation{
				"http-allow": {Kind: meshauth.KindHTTP, Method: "GET", Path: "/svc/5000/items"},
				"mcp-allow":  {Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "tool_5000_search"},
				"deny":       {Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "tool_4000_search"},
			}
		}
		for _, name := range []string{"http-allow", "mcp-allow", "deny"} {
			op := ops[name]
			want := name != "deny"
			b.Run(fmt.Sprintf("rules=%d/%s", n, name), func(b *testing.B) {
				if d := p.Authorize(caller, &op); d.Allowed != want {
					b.Fatalf("decision %+v", d)
				}
				b.ReportAllocs()
				for b.Loop() {
					p.Authorize(caller, &op)
				}
			})
		}
	}
}
