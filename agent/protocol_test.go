package agent_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/agent"
	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/meshapi"
)

// reply is one scripted answer of a fakeRegistry.
type reply struct {
	status int
	body   string
	header map[string]string
}

var (
	ok200       = reply{status: 200, body: `{"status":"success","message":"Agent registered via heartbeat","dependencies_resolved":{}}`}
	rotate200   = reply{status: 200, body: `{"status":"success","message":"Agent updated via heartbeat; re-register with a fresh certificate","rotate":true}`}
	headOK      = reply{status: 200}
	unavailable = reply{status: 503, body: `{"error":"internal error","timestamp":"t"}`}
)

// fakeRegistry answers POST and HEAD from scripts (then with 200), over
// TLS with a certificate of the test's mesh CA, and records the requests.
type fakeRegistry struct {
	url string

	mu       sync.Mutex
	posts    []reply
	heads    []reply
	requests []string // "POST /heartbeat", "HEAD /heartbeat/opus", ...
	bodies   []string // of the POSTs
	serials  []string // the client certificate of each request
	revoked  map[string]bool
}

func newFakeRegistry(t *testing.T, p *pki) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{}
	is, err := p.ca.Sign(context.Background(), ca.NodeRequest("registry", "IP:127.0.0.1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.load(is.Cert.Subject.CommonName)}, ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func (f *fakeRegistry) script(posts, heads []reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.posts, f.heads = posts, heads
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	serial := r.TLS.PeerCertificates[0].SerialNumber.Text(16)
	f.serials = append(f.serials, serial)
	var rep reply
	switch {
	case f.revoked[serial]:
		rep = reply{status: 403, body: `{"error":"revoked","reason":"revoked"}`}
	case r.Method == http.MethodPost:
		f.bodies = append(f.bodies, string(body))
		rep = ok200
		if len(f.posts) > 0 {
			rep, f.posts = f.posts[0], f.posts[1:]
		}
	case r.Method == http.MethodHead:
		rep = headOK
		if len(f.heads) > 0 {
			rep, f.heads = f.heads[0], f.heads[1:]
		}
	default:
		rep = reply{status: 204}
	}
	f.mu.Unlock()
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

// revoke refuses the certificate with serial as revoked from now on.
func (f *fakeRegistry) revoke(serial string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revoked == nil {
		f.revoked = make(map[string]bool)
	}
	f.revoked[serial] = true
}

func (f *fakeRegistry) presented() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.serials...)
}

func (f *fakeRegistry) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// TestBackoff: failures are retried after 1 s doubling to 30 s, the upper
// half of each delay random, or after a longer Retry-After; a success
// returns to the heartbeat interval.
func TestBackoff(t *testing.T) {
	p := newPKI(t)
	for _, tt := range []struct {
		name  string
		rand  func(int64) int64
		posts []reply
		want  []time.Duration
	}{
		{
			name:  "highest draw",
			rand:  func(n int64) int64 { return n - 1 },
			posts: []reply{unavailable, unavailable, unavailable, unavailable, unavailable, unavailable, unavailable},
			want:  []time.Duration{1 * sec, 2 * sec, 4 * sec, 8 * sec, 16 * sec, 30 * sec, 30 * sec},
		},
		{
			name:  "lowest draw",
			rand:  func(int64) int64 { return 0 },
			posts: []reply{unavailable, unavailable, unavailable},
			want:  []time.Duration{sec / 2, 1 * sec, 2 * sec},
		},
		{
			name:  "Retry-After beyond the backoff",
			rand:  func(n int64) int64 { return n - 1 },
			posts: []reply{{status: 429, body: `{"error":"slow down","reason":"rate_limited"}`, header: map[string]string{"Retry-After": "45"}}, unavailable},
			want:  []time.Duration{45 * sec, 2 * sec},
		},
		{
			name:  "a trust refusal that new credentials may lift",
			rand:  func(n int64) int64 { return n - 1 },
			posts: []reply{{status: 403, body: `{"error":"certificate expired","reason":"expired"}`}},
			want:  []time.Duration{1 * sec},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRegistry(t, p)
			f.script(tt.posts, nil)
			clk := newFakeClock()
			r := start(t, f.url, holder(t, p.agent("opus", "ct111")), clk, func(c *agent.Config) { c.Rand = tt.rand })
			for i, want := range tt.want {
				if got := clk.Step(t, wait); got != want {
					t.Fatalf("wait %d: %s, want %s", i+1, got, want)
				}
			}
			r.registered(t)
			if got := clk.NextWait(t, wait); got != 5*time.Second {
				t.Fatalf("after the success the agent waits %s, want the interval", got)
			}
			if n := strings.Count(strings.Join(f.log(), ","), "POST"); n != len(tt.want)+1 {
				t.Fatalf("%d POSTs, want %d: %v", n, len(tt.want)+1, f.log())
			}
		})
	}
}

// TestHeadAnswers: 200 waits for the next HEAD; 202, 410 and 403 are
// answered with a POST at once; other answers are retried after a backoff.
func TestHeadAnswers(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	f.script(nil, []reply{{status: 202}, {status: 410, header: map[string]string{"X-Reason": "unhealthy"}}, {status: 403}, {status: 500}, headOK})
	clk := newFakeClock()
	r := start(t, f.url, holder(t, p.agent("opus", "ct111")), clk, func(c *agent.Config) { c.Rand = func(n int64) int64 { return n - 1 } })
	r.registered(t)
	waits := []time.Duration{5 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second, time.Second, 5 * time.Second}
	for i, want := range waits {
		if got := clk.Step(t, wait); got != want {
			t.Fatalf("wait %d: %s, want %s (requests %v)", i+1, got, want, f.log())
		}
	}
	clk.NextWait(t, wait)
	head := "HEAD /heartbeat/opus"
	want := []string{"POST /heartbeat", head, "POST /heartbeat", head, "POST /heartbeat", head, "POST /heartbeat", head, head, head}
	if got := f.log(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("requests\n%v\nwant\n%v", got, want)
	}
}

// TestRefusals: what ends Run, and what it retries.
func TestRefusals(t *testing.T) {
	p := newPKI(t)
	for _, tt := range []struct {
		name   string
		post   reply
		is     error
		reason string
	}{
		{"validation failure as MCP Mesh answers it", reply{status: 200, body: `{"status":"error","message":"validation failed: agent_type"}`}, agent.ErrRejected, ""},
		{"invalid payload", reply{status: 400, body: `{"error":"invalid JSON payload","reason":"bad_json"}`}, agent.ErrRejected, "bad_json"},
		{"payload too large", reply{status: 413, body: `{"error":"too large","reason":"body_too_large"}`}, agent.ErrRejected, "body_too_large"},
		{"certificate revoked", reply{status: 403, body: `{"error":"revoked","reason":"revoked"}`}, agent.ErrEvicted, "revoked"},
		{"entity revoked", reply{status: 403, body: `{"error":"entity revoked","reason":"entity_revoked"}`}, agent.ErrEvicted, "entity_revoked"},
		{"evicted", reply{status: 410, body: `{"error":"evicted","reason":"evicted"}`}, agent.ErrEvicted, "evicted"},
		{"another agent's certificate", reply{status: 403, body: `{"error":"mismatch","reason":"identity_mismatch"}`}, agent.ErrRejected, "identity_mismatch"},
		{"outside the entity's namespace", reply{status: 403, body: `{"error":"outside","reason":"outside_namespace"}`}, agent.ErrRejected, "outside_namespace"},
		{"owned by another certificate", reply{status: 403, body: `{"error":"owned","reason":"owned_by_other"}`}, agent.ErrRejected, "owned_by_other"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRegistry(t, p)
			f.script([]reply{tt.post}, nil)
			clk := newFakeClock()
			r := start(t, f.url, holder(t, p.agent("opus", "ct111")), clk, nil)
			err := r.stopped(t, clk)
			var ref *agent.Refusal
			if !errors.Is(err, tt.is) || !errors.As(err, &ref) {
				t.Fatalf("Run: %v, want a Refusal wrapping %v", err, tt.is)
			}
			if ref.Reason != tt.reason || ref.Status != tt.post.status || ref.AgentID != "opus" {
				t.Fatalf("Refusal %+v, want status %d reason %q", ref, tt.post.status, tt.reason)
			}
			if len(clk.Waits()) != 0 || len(f.log()) != 1 {
				t.Fatalf("Run retried: requests %v", f.log())
			}
			if strings.Contains(strings.Join(f.log(), ","), "DELETE") {
				t.Fatal("a refused agent deregistered")
			}
		})
	}
}

// TestChangedCredentialsNewConnection: after the Source changes, the
// next request presents the new certificate: the connection kept alive
// with the old one is not reused.
func TestChangedCredentialsNewConnection(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	old := p.agent("opus", "ct111")
	src := holder(t, old)
	clk := newFakeClock()
	r := start(t, f.url, src, clk, nil)
	r.registered(t)
	clk.Step(t, wait) // a HEAD on the kept-alive connection
	clk.NextWait(t, wait)
	fresh := p.agent("opus", "ct111")
	if err := src.Set(fresh); err != nil {
		t.Fatal(err)
	}
	r.registered(t)
	want := []string{serialOf(old), serialOf(old), serialOf(fresh)}
	if got := f.presented(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("presented serials %v, want %v", got, want)
	}
}

// lazySource serves new credentials without closing its Changed channel,
// as a Source may for a moment between the two.
type lazySource struct {
	mu      sync.Mutex
	c       *credentials.Credentials
	changed chan struct{}
}

func (s *lazySource) Current() (*credentials.Credentials, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c, nil
}
func (s *lazySource) Changed() <-chan struct{} { return s.changed }
func (s *lazySource) Close() error             { return nil }

// TestRefusedOldCertificate: a revocation refusal of the certificate a
// kept-alive connection still carries is not an eviction of the agent:
// it asks again on a new connection with the current certificate.
func TestRefusedOldCertificate(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	old := p.agent("opus", "ct111")
	src := &lazySource{c: old, changed: make(chan struct{})}
	clk := newFakeClock()
	r := start(t, f.url, src, clk, nil)
	r.registered(t)
	clk.NextWait(t, wait)
	fresh := p.agent("opus", "ct111")
	src.mu.Lock()
	src.c = fresh
	src.mu.Unlock()
	f.revoke(serialOf(old))
	clk.Advance(5 * time.Second) // HEAD with the old certificate: 403, then POST
	if a := r.registered(t); a.Leaf.SerialNumber.Text(16) != serialOf(fresh) {
		t.Fatalf("registered serial %x, want the current %s", a.Leaf.SerialNumber, serialOf(fresh))
	}
	want := []string{serialOf(old), serialOf(old), serialOf(old), serialOf(fresh)}
	if got := f.presented(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("presented serials %v, want %v (POST, HEAD, POST refused, POST)", got, want)
	}
}

// TestRotateWithoutRotator: a Source that cannot rotate on demand is not
// asked twice, and the agent keeps heartbeating.
func TestRotateWithoutRotator(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	f.script([]reply{rotate200, rotate200}, []reply{{status: 202}})
	clk := newFakeClock()
	r := start(t, f.url, holder(t, p.agent("opus", "ct111")), clk, nil)
	if !r.registered(t).Rotate {
		t.Fatal("no rotate in the answer")
	}
	clk.Step(t, wait) // HEAD 202, POST answered rotate again
	if !r.registered(t).Rotate {
		t.Fatal("no rotate in the second answer")
	}
	if got := clk.NextWait(t, wait); got != 5*time.Second {
		t.Fatalf("the agent waits %s, want the interval", got)
	}
}

// TestPayload: a raw MCP Mesh payload is sent with its unknown fields and
// its agent_id filled in, byte for byte the same on every POST.
func TestPayload(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	f.script(nil, []reply{{status: 202}})
	clk := newFakeClock()
	raw := `{"name":"weather","runtime":"python","tools":[{"function_name":"f","capability":"c","inputSchema":{"type":"object"}}],"llm_filter":{"x":1}}`
	r := start(t, f.url, holder(t, p.agent("opus", "ct111")), clk, func(c *agent.Config) { c.Payload = json.RawMessage(raw) })
	r.registered(t)
	clk.Step(t, wait) // HEAD 202, then POST
	r.registered(t)
	f.mu.Lock()
	bodies := append([]string(nil), f.bodies...)
	f.mu.Unlock()
	if len(bodies) != 2 || bodies[0] != bodies[1] {
		t.Fatalf("POST bodies %q, want two identical", bodies)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(bodies[0]), &got); err != nil {
		t.Fatal(err)
	}
	if got["agent_id"] != "opus" || got["llm_filter"] == nil || got["name"] != "weather" {
		t.Fatalf("sent %s", bodies[0])
	}
}

// TestNewRefuses: a configuration that cannot work fails at New, saying
// what to fix.
func TestNewRefuses(t *testing.T) {
	p := newPKI(t)
	src := holder(t, p.agent("opus", "ct111"))
	for _, tt := range []struct {
		name string
		cfg  agent.Config
		want string
	}{
		{"plain HTTP", agent.Config{RegistryURL: "http://127.0.0.1:8000", AgentID: "opus", Source: src}, "want https://host:port"},
		{"no URL", agent.Config{AgentID: "opus", Source: src}, "MCP_MESH_REGISTRY_URL"},
		{"no Source", agent.Config{RegistryURL: "https://r:1", AgentID: "opus"}, "no credentials Source"},
		{"no agent id", agent.Config{RegistryURL: "https://r:1", Source: src}, "agent id"},
		{"invalid agent id", agent.Config{RegistryURL: "https://r:1", AgentID: "Opus", Source: src}, `"Opus"`},
		{"ids disagree", agent.Config{RegistryURL: "https://r:1", AgentID: "opus", Source: src, Registration: meshapi.Registration{AgentID: "geo"}}, `"geo" is not Config.AgentID "opus"`},
		{"payload ids disagree", agent.Config{RegistryURL: "https://r:1", AgentID: "opus", Source: src, Payload: json.RawMessage(`{"agent_id":"geo"}`)}, `"geo"`},
		{"payload not an object", agent.Config{RegistryURL: "https://r:1", AgentID: "opus", Source: src, Payload: json.RawMessage(`[1]`)}, "not a JSON object"},
		{"payload agent_id not a string", agent.Config{RegistryURL: "https://r:1", Source: src, Payload: json.RawMessage(`{"agent_id":7}`)}, "not a string"},
		{"payload too large", agent.Config{RegistryURL: "https://r:1", AgentID: "opus", Source: src, Registration: meshapi.Registration{Description: strings.Repeat("x", 1<<20)}}, "at most"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error saying %q", err, tt.want)
			}
		})
	}
	a, err := agent.New(agent.Config{RegistryURL: "https://r:1", Source: src, Payload: json.RawMessage(`{"agent_id":"geo"}`)})
	if err != nil || a.ID() != "geo" {
		t.Fatalf("New with the id in the payload: %v, id %q", err, a.ID())
	}
}

// TestClosedSource: Run ends when its Source is closed.
func TestClosedSource(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	src := holder(t, p.agent("opus", "ct111"))
	clk := newFakeClock()
	r := start(t, f.url, src, clk, nil)
	r.registered(t)
	clk.NextWait(t, wait)
	src.Close()
	if err := r.stopped(t, clk); !errors.Is(err, credentials.ErrClosed) {
		t.Fatalf("Run: %v, want ErrClosed", err)
	}
}

// TestRunTwice: an Agent runs once.
func TestRunTwice(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	clk := newFakeClock()
	r := start(t, f.url, holder(t, p.agent("opus", "ct111")), clk, nil)
	r.registered(t)
	if err := r.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("second Run: %v", err)
	}
}

const sec = time.Second
