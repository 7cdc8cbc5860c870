package meshauth_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

const httpPolicy = `
rules:
  - name: opus-reads
    who: [opus@ct111]
    http: ["GET /files/*", "GET /whoami"]
  - name: ct112-agents
    who: ["*@ct112"]
    http: ["GET /whoami", "POST /jobs/**"]
  - name: partner
    who: ["entity:partner-corp"]
    http: ["GET /partner/*"]
  - name: health
    who: ["*", anonymous]
    http: ["GET /health"]
`

// whoami answers with the caller the middleware put in the context.
var whoami = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	c, ok := meshauth.FromContext(r.Context())
	if !ok {
		http.Error(w, "no caller", 500)
		return
	}
	sid := ""
	if c.Session != nil {
		sid = c.Session.ID
	}
	fmt.Fprintf(w, "%s|%s|%s|%s|%s", c.Name, c.Entity, c.SPIFFEID, c.Fingerprint, sid)
})

func newAuth(t testing.TB, w *world, cfg meshauth.Config) *meshauth.Auth {
	t.Helper()
	cfg.Chain = w.chain
	if cfg.Now == nil {
		cfg.Now = w.clock.Now
	}
	a, err := meshauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestHTTPDecisions(t *testing.T) {
	w := newWorld(t)
	var log bytes.Buffer
	a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, httpPolicy).Authorize, Anonymous: true,
		DecisionLog: slog.New(slog.NewJSONHandler(&log, nil))})
	srv := serve(t, a, a.Handler(whoami))
	opus := agentOf(t, w.mesh, "opus", "ct111")
	sonnet := agentOf(t, w.mesh, "sonnet", "ct111")
	haiku := agentOf(t, w.mesh, "haiku", "ct112")
	bob := leafOf(t, w.partner, "bob", "")
	stranger := agentOf(t, pkitest.NewRoot(t, "stranger root"), "opus", "ct111")

	tests := []struct {
		name         string
		cert         *tlsCert
		method, path string
		code         int
		reason       string
		want         string
	}{
		{"identity allowed", &opus, "GET", "/files/a", 200, "", "opus@ct111||spiffe://mesh.local/agent/ct111/opus|" + trust.Fingerprint(opus.Leaf) + "|"},
		{"identity, path outside its glob", &opus, "GET", "/files/a/b", 403, meshauth.ReasonForbidden, ""},
		{"identity, wrong method", &opus, "POST", "/files/a", 403, meshauth.ReasonForbidden, ""},
		{"another agent of the node", &sonnet, "GET", "/files/a", 403, meshauth.ReasonForbidden, ""},
		{"node rule", &haiku, "POST", "/jobs/x/y", 200, "", "haiku@ct112||spiffe://mesh.local/agent/ct112/haiku|" + trust.Fingerprint(haiku.Leaf) + "|"},
		{"entity rule", &bob, "GET", "/partner/x", 200, "", "bob|partner-corp||" + trust.Fingerprint(bob.Leaf) + "|"},
		{"entity, not its path", &bob, "GET", "/files/a", 403, meshauth.ReasonForbidden, ""},
		{"any verified caller", &bob, "GET", "/health", 200, "", "bob|partner-corp||" + trust.Fingerprint(bob.Leaf) + "|"},
		{"anonymous health", nil, "GET", "/health", 200, "", "anonymous||||"},
		{"anonymous elsewhere", nil, "GET", "/files/a", 403, meshauth.ReasonForbidden, ""},
		{"unknown CA", &stranger, "GET", "/files/a", 401, trust.ReasonUnknownCA, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, client(srv, tt.cert), tt.method, srv.URL+tt.path, "")
			if r.code != tt.code {
				t.Fatalf("code %d, want %d: %s", r.code, tt.code, r.body)
			}
			if tt.code == 200 {
				if r.body != tt.want {
					t.Fatalf("caller %q, want %q", r.body, tt.want)
				}
				return
			}
			var e meshapi.ErrorResponse
			if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Reason != tt.reason || e.Error == "" {
				t.Fatalf("refusal %s (%v), want reason %q", r.body, err, tt.reason)
			}
		})
	}
	if got := testutil.ToFloat64(a.Decisions().WithLabelValues("deny", meshauth.ReasonForbidden)); got != 5 {
		t.Errorf("forbidden decisions counted %v, want 5", got)
	}
	if got := testutil.ToFloat64(a.Decisions().WithLabelValues("deny", trust.ReasonUnknownCA)); got != 1 {
		t.Errorf("unknown_ca decisions counted %v, want 1", got)
	}
	if !strings.Contains(log.String(), `"rule":"ct112-agents"`) || !strings.Contains(log.String(), `"rule":"default deny"`) {
		t.Errorf("decision log lacks the deciding rules:\n%s", log.String())
	}
}

type tlsCert = tls.Certificate

func TestNoCertificate(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: meshauth.AuthorizeAny()})
	srv := serve(t, a, a.Handler(whoami))
	r := do(t, client(srv, nil), "GET", srv.URL+"/x", "")
	if r.code != 401 || !strings.Contains(r.body, trust.ReasonNoCertificate) || !strings.Contains(r.body, "client certificate required") {
		t.Fatalf("certless caller: %d %s", r.code, r.body)
	}
}

func TestRevokedCertificateOnOpenConnection(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: meshauth.AuthorizeAny()})
	srv := serve(t, a, a.Handler(whoami))
	opus := agentOf(t, w.mesh, "opus", "ct111")
	c := client(srv, &opus)
	if r := do(t, c, "GET", srv.URL+"/x", ""); r.code != 200 {
		t.Fatalf("before revocation: %d %s", r.code, r.body)
	}
	w.revs.AddSerial(trust.Revoked{Serial: opus.Leaf.SerialNumber.Text(16), IssuerKeyID: fmt.Sprintf("%x", opus.Leaf.AuthorityKeyId), At: time.Now()})
	r := do(t, c, "GET", srv.URL+"/x", "") // the same connection, verified before
	if r.code != 401 || !strings.Contains(r.body, `"reason":"revoked"`) {
		t.Fatalf("after revocation: %d %s", r.code, r.body)
	}
}

func TestCloseWhere(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: meshauth.AuthorizeAny()})
	srv := serve(t, a, a.Handler(whoami))
	opus, haiku := agentOf(t, w.mesh, "opus", "ct111"), agentOf(t, w.mesh, "haiku", "ct112")
	co, ch := client(srv, &opus), client(srv, &haiku)
	do(t, co, "GET", srv.URL+"/x", "")
	do(t, ch, "GET", srv.URL+"/x", "")
	if n := a.CloseWhere(func(c *meshauth.Caller) bool { return c.Identity.Node == "ct111" }); n != 1 {
		t.Fatalf("closed %d connections, want 1", n)
	}
	if r := do(t, ch, "GET", srv.URL+"/x", ""); r.code != 200 {
		t.Fatalf("the other connection: %d", r.code)
	}
}

func TestLegacyBearer(t *testing.T) {
	w := newWorld(t)
	p := mustPolicy(t, "rules:\n  - name: legacy\n    who: [legacy:bearer]\n    http: [\"POST /heartbeat\"]\n")
	a := newAuth(t, w, meshauth.Config{Authorizer: p.Authorize, Legacy: &meshauth.Legacy{Secret: "s3cret-value", Until: w.clock.Now().Add(time.Hour)}})
	srv := serve(t, a, a.Handler(whoami))
	c := client(srv, nil)
	if r := do(t, c, "POST", srv.URL+"/heartbeat", "", "Authorization", "Bearer s3cret-value"); r.code != 200 || r.body != "legacy:bearer||||" {
		t.Fatalf("legacy bearer: %d %s", r.code, r.body)
	}
	if r := do(t, c, "GET", srv.URL+"/agents", "", "Authorization", "Bearer s3cret-value"); r.code != 403 {
		t.Fatalf("legacy bearer outside its grant: %d %s", r.code, r.body)
	}
	if r := do(t, c, "POST", srv.URL+"/heartbeat", "", "Authorization", "Bearer wrong"); r.code != 401 || !strings.Contains(r.body, meshauth.ReasonLegacyRefused) {
		t.Fatalf("wrong secret: %d %s", r.code, r.body)
	}
	// A partner CA's certificate named like the legacy principal is not it.
	fake := leafOf(t, w.partner, meshauth.LegacyName, "")
	if r := do(t, client(srv, &fake), "POST", srv.URL+"/heartbeat", ""); r.code != 403 {
		t.Fatalf("certificate named %s: %d %s", meshauth.LegacyName, r.code, r.body)
	}
	w.clock.Advance(time.Hour)
	if r := do(t, c, "POST", srv.URL+"/heartbeat", "", "Authorization", "Bearer s3cret-value"); r.code != 401 || !strings.Contains(r.body, meshauth.ReasonLegacyExpired) {
		t.Fatalf("after the deadline: %d %s", r.code, r.body)
	}
	if _, err := meshauth.New(meshauth.Config{Chain: w.chain, Authorizer: p.Authorize, Legacy: &meshauth.Legacy{Secret: "x"}}); err == nil {
		t.Fatal("a legacy path without a deadline was accepted")
	}
}

func TestComposableAuthorizers(t *testing.T) {
	meshLocal := spiffeid.RequireTrustDomainFromString("mesh.local")
	opus := &meshauth.Caller{Name: "opus@ct111", MeshCA: true, TrustDomain: meshLocal}
	opus.Identity.Node, opus.Identity.Kind = "ct111", 2
	bob := &meshauth.Caller{Name: "bob", Entity: "partner-corp"}
	op := &meshauth.Operation{Kind: meshauth.KindHTTP, Method: "GET", Path: "/"}
	tests := []struct {
		name string
		a    meshauth.Authorizer
		c    *meshauth.Caller
		want bool
	}{
		{"identity", meshauth.AuthorizeIdentity("opus@ct111"), opus, true},
		{"identity other", meshauth.AuthorizeIdentity("opus@ct111"), bob, false},
		{"node", meshauth.AuthorizeNode("ct111"), opus, true},
		{"node other", meshauth.AuthorizeNode("ct112"), opus, false},
		{"entity", meshauth.AuthorizeEntity("partner-corp"), bob, true},
		{"entity empty", meshauth.AuthorizeEntity(""), opus, false},
		{"member of", meshauth.AuthorizeMemberOf(meshLocal), opus, true},
		{"member of, no SPIFFE ID", meshauth.AuthorizeMemberOf(meshLocal), bob, false},
		{"member of the zero trust domain", meshauth.AuthorizeMemberOf(spiffeid.TrustDomain{}), bob, false},
		{"any of", meshauth.AuthorizeAnyOf(meshauth.AuthorizeNode("ct112"), meshauth.AuthorizeEntity("partner-corp")), bob, true},
		{"all of", meshauth.AuthorizeAllOf(meshauth.AuthorizeNode("ct111"), meshauth.AuthorizeEntity("partner-corp")), opus, false},
	}
	for _, tt := range tests {
		if got := tt.a(tt.c, op).Allowed; got != tt.want {
			t.Errorf("%s: allowed %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestVerifyAndRecheckVerified checks the route-level API a service that
// decides per route itself uses: Verify hands over the verified caller
// without copying the request (none in its context, no allocation on a
// connection verified before), RecheckVerified passes it while trust
// holds and refuses it once its certificate is revoked mid-request, and
// Identify still carries the caller in the request's context.
func TestVerifyAndRecheckVerified(t *testing.T) {
	w := newWorld(t)
	a := newAuth(t, w, meshauth.Config{Authorizer: meshauth.AuthorizeAny()})
	opus := agentOf(t, w.mesh, "opus", "ct111")
	srv := serve(t, a, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		v, err := a.Verify(r)
		if err != nil {
			http.Error(rw, "verify: "+err.Error(), 401)
			return
		}
		if _, ok := meshauth.FromContext(r.Context()); ok {
			http.Error(rw, "Verify put the caller in the request's context", 500)
			return
		}
		if v.Peer() == nil || v.Caller.Name != "opus@ct111" {
			http.Error(rw, fmt.Sprintf("caller %+v", v.Caller), 500)
			return
		}
		if n := testing.AllocsPerRun(20, func() { a.Verify(r) }); n != 0 {
			http.Error(rw, fmt.Sprintf("Verify of a connection verified before: %v allocations", n), 500)
			return
		}
		if r.URL.Query().Get("revoke") != "" {
			w.revs.AddSerial(trust.Revoked{Serial: opus.Leaf.SerialNumber.Text(16), IssuerKeyID: fmt.Sprintf("%x", opus.Leaf.AuthorityKeyId), At: time.Now()})
		}
		if err := a.RecheckVerified(r.Context(), v); err != nil {
			http.Error(rw, "recheck: "+trust.Reason(err), 403)
			return
		}
		c, ir, err := a.Identify(r)
		if fc, ok := meshauth.FromContext(ir.Context()); err != nil || !ok || fc != c || c != v.Caller {
			http.Error(rw, "Identify's request does not carry the caller Verify returned", 500)
			return
		}
		rw.Write([]byte("ok"))
	}))
	c := client(srv, &opus)
	if r := do(t, c, "GET", srv.URL+"/x", ""); r.code != 200 || r.body != "ok" {
		t.Fatalf("trusted: %d %s", r.code, r.body)
	}
	if r := do(t, c, "GET", srv.URL+"/x?revoke=1", ""); r.code != 403 || !strings.Contains(r.body, "recheck: "+trust.ReasonRevoked) {
		t.Fatalf("revoked mid-request: %d %s", r.code, r.body)
	}
	if r := do(t, c, "GET", srv.URL+"/x", ""); r.code != 401 {
		t.Fatalf("after the revocation: %d %s", r.code, r.body)
	}
	if err := a.RecheckVerified(context.Background(), meshauth.Verified{}); err != nil {
		t.Fatalf("the zero Verified (no certificate): %v", err)
	}
}
