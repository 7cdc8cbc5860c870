package console_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/meshapi"
)

type harness struct {
	t     *testing.T
	c     *console.Console
	be    *fakeBackend
	clock *clocktest.Clock
	logs  *logtest.Buffer
	srv   *httptest.Server
	cli   *http.Client
}

func newHarness(t *testing.T, be *fakeBackend, mod func(*console.Config)) *harness {
	t.Helper()
	h := &harness{t: t, be: be, clock: clocktest.New(t0), logs: &logtest.Buffer{}}
	cfg := console.Config{Backend: be, Now: h.clock.Now, Log: h.logs.Logger()}
	if mod != nil {
		mod(&cfg)
	}
	c, err := console.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.c = c
	h.srv = httptest.NewServer(c.Handler())
	t.Cleanup(h.srv.Close)
	h.cli = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return h
}

// do sends a request and returns the answer with its body read.
func (h *harness) do(req *http.Request) (*http.Response, string) {
	h.t.Helper()
	resp, err := h.cli.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("reading %s: %v", req.URL, err)
	}
	return resp, string(b)
}

func (h *harness) get(path string, ck *http.Cookie) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.srv.URL+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	if ck != nil {
		req.AddCookie(ck)
	}
	return h.do(req)
}

// post sends a form as a browser on the console's own page does
// (Origin: the server, Sec-Fetch-Site: same-origin), then applies hdr.
func (h *harness) post(path string, ck *http.Cookie, form url.Values, hdr map[string]string) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", h.srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	if ck != nil {
		req.AddCookie(ck)
	}
	return h.do(req)
}

// mint returns a fresh login path for actor.
func (h *harness) mint(actor string) string {
	h.t.Helper()
	l, err := h.c.MintLogin(actor)
	if err != nil {
		h.t.Fatalf("MintLogin: %v", err)
	}
	return l.Path
}

// login logs in as actor and returns the session cookie.
func (h *harness) login(actor string) *http.Cookie {
	h.t.Helper()
	resp, body := h.get(h.mint(actor), nil)
	if resp.StatusCode != http.StatusSeeOther {
		h.t.Fatalf("login: %s\n%s", resp.Status, body)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == "meshtrust_console" {
			return ck
		}
	}
	h.t.Fatalf("login set no session cookie: %v", resp.Header["Set-Cookie"])
	return nil
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads the session's CSRF token from the agents page, as the
// browser's form carries it.
func (h *harness) csrf(ck *http.Cookie) string {
	h.t.Helper()
	return h.csrfFrom("/console/agents", ck)
}

func (h *harness) csrfFrom(page string, ck *http.Cookie) string {
	h.t.Helper()
	_, body := h.get(page, ck)
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		h.t.Fatalf("no csrf field on %s:\n%s", page, body)
	}
	return m[1]
}

// TestMintLogin: the login path carries a 256-bit token, and a login
// needs an admin identity fit to show and audit.
func TestMintLogin(t *testing.T) {
	h := newHarness(t, &fakeBackend{}, nil)
	l, err := h.c.MintLogin("uid 0 (admin socket)")
	if err != nil {
		t.Fatal(err)
	}
	tok, ok := strings.CutPrefix(l.Path, "/console/login?token=")
	if !ok || len(tok) != 43 {
		t.Fatalf("Path = %q, want /console/login?token=<43 base64url characters>", l.Path)
	}
	if want := t0.Add(console.DefaultLoginTTL); !l.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %s, want %s", l.ExpiresAt, want)
	}
	l2, _ := h.c.MintLogin("uid 0 (admin socket)")
	if l2.Path == l.Path {
		t.Error("two logins share a token")
	}
	for _, bad := range []string{"", "a\nb", "a\x00", strings.Repeat("a", 300), "\xff"} {
		if _, err := h.c.MintLogin(bad); err == nil {
			t.Errorf("MintLogin(%q) = nil error", bad)
		}
	}
	if _, err := console.New(console.Config{}); err == nil {
		t.Error("New without a Backend = nil error")
	}
	if _, err := console.New(console.Config{Backend: &fakeBackend{}, IdleTimeout: -time.Second}); err == nil {
		t.Error("New with a negative IdleTimeout = nil error")
	}
}

// TestLogin: a good token gives a session cookie (HttpOnly, SameSite
// Strict, Path /console/, not Secure) and a 303 to /console/; the same
// token again, an expired one or an unknown one is the 401 page and sets
// nothing.
func TestLogin(t *testing.T) {
	h := newHarness(t, &fakeBackend{}, nil)
	path := h.mint("alice.mesh")
	resp, _ := h.get(path, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/" {
		t.Fatalf("login = %s to %q, want 303 to /console/", resp.Status, resp.Header.Get("Location"))
	}
	cks := resp.Cookies()
	if len(cks) != 1 {
		t.Fatalf("cookies = %v", cks)
	}
	ck := cks[0]
	if ck.Name != "meshtrust_console" || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/console/" || ck.Secure || len(ck.Value) != 43 {
		t.Errorf("cookie = %+v", ck)
	}
	if r, body := h.get("/console/", ck); r.StatusCode != http.StatusOK || !strings.Contains(body, "alice.mesh") {
		t.Errorf("GET /console/ with the session = %s", r.Status)
	}

	head, _ := http.NewRequest(http.MethodHead, h.srv.URL+h.mint("alice.mesh"), nil)
	if r, _ := h.do(head); r.StatusCode != http.StatusMethodNotAllowed || len(r.Cookies()) != 0 {
		t.Errorf("HEAD login = %s, want 405", r.Status)
	}
	if logins, _, _ := h.c.Counts(); logins != 1 {
		t.Errorf("HEAD spent the token: %d held", logins)
	}

	again, body := h.get(path, nil)
	if again.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "meshctl console") || len(again.Cookies()) != 0 {
		t.Errorf("reused token = %s, cookies %v\n%s", again.Status, again.Cookies(), body)
	}

	expired := h.mint("alice.mesh")
	h.clock.Advance(console.DefaultLoginTTL)
	if r, _ := h.get(expired, nil); r.StatusCode != http.StatusUnauthorized || len(r.Cookies()) != 0 {
		t.Errorf("expired token = %s", r.Status)
	}
	for _, p := range []string{"/console/login", "/console/login?token=", "/console/login?token=AAAA", "/console/login?token=" + strings.Repeat("A", 5000)} {
		if r, _ := h.get(p, nil); r.StatusCode != http.StatusUnauthorized || len(r.Cookies()) != 0 {
			t.Errorf("GET %.60s = %s", p, r.Status)
		}
	}
	// The expired token was consumed by its failed use; the HEAD's
	// token expired too; only the session stays.
	h.mint("alice.mesh")
	if logins, sessions, _ := h.c.Counts(); logins != 1 || sessions != 1 {
		t.Errorf("held %d logins, %d sessions; want 1 (just minted), 1", logins, sessions)
	}
}

// TestSessionRequired: every path but login and the static files needs a
// live session: the 401 page for pages, a plain 401 for the stream.
func TestSessionRequired(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, nil)
	bogus := &http.Cookie{Name: "meshtrust_console", Value: strings.Repeat("A", 43)}
	for _, p := range []string{"/console/", "/console/agents", "/console/nodes", "/console/certificates", "/console/revocations", "/console/entities", "/console/audit", "/console/intermediates", "/console/policy?policy=p&identity=i&operation=o", "/console/revoke?target=x", "/console/reinstate", "/console/entities/revoke", "/console/nope"} {
		for _, ck := range []*http.Cookie{nil, bogus} {
			resp, body := h.get(p, ck)
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "meshctl console") {
				t.Errorf("GET %s (cookie %v) = %s %s", p, ck != nil, resp.Status, resp.Header.Get("Content-Type"))
			}
		}
	}
	resp, _ := h.get("/console/events", nil)
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(resp.Header.Get("Content-Type"), "html") {
		t.Errorf("GET /console/events = %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, p := range []string{"/console/revoke", "/console/reinstate", "/console/entities/revoke", "/console/logout"} {
		if r, _ := h.post(p, nil, url.Values{"target": {"x"}, "name": {"x"}, "confirm": {"x"}}, nil); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("POST %s without a session = %s", p, r.Status)
		}
	}
	for _, p := range []string{"/console/static/console.js", "/console/static/console.css"} {
		if r, body := h.get(p, nil); r.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s = %s", p, r.Status)
		}
	}
	if len(be.Calls()) != 0 {
		t.Errorf("the backend acted: %v", be.Calls())
	}
}

// TestSessionTimeouts: a session ends after IdleTimeout unused, and after
// SessionLifetime however busy.
func TestSessionTimeouts(t *testing.T) {
	h := newHarness(t, &fakeBackend{}, func(c *console.Config) {
		c.IdleTimeout = 10 * time.Minute
		c.SessionLifetime = time.Hour
	})
	idle := h.login("alice.mesh")
	h.clock.Advance(9 * time.Minute)
	if r, _ := h.get("/console/", idle); r.StatusCode != http.StatusOK {
		t.Fatalf("after 9m = %s", r.Status)
	}
	h.clock.Advance(10 * time.Minute)
	if r, _ := h.get("/console/", idle); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("after 10m idle = %s, want 401", r.Status)
	}

	// The page's background refresh does not keep a session alive.
	refreshed := h.login("alice.mesh")
	for range 2 {
		h.clock.Advance(6 * time.Minute)
		req, _ := http.NewRequest(http.MethodGet, h.srv.URL+"/console/agents", nil)
		req.Header.Set("X-Console-Refresh", "1")
		req.AddCookie(refreshed)
		h.do(req)
	}
	if r, _ := h.get("/console/", refreshed); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("a session only refreshed for 12m = %s, want 401", r.Status)
	}

	busy := h.login("alice.mesh")
	for range 6 {
		h.clock.Advance(9 * time.Minute)
		if r, _ := h.get("/console/", busy); r.StatusCode != http.StatusOK {
			t.Fatalf("busy session = %s before its lifetime", r.Status)
		}
	}
	h.clock.Advance(7 * time.Minute) // 61 minutes old
	if r, _ := h.get("/console/", busy); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("after its lifetime = %s, want 401", r.Status)
	}
	if _, sessions, _ := h.c.Counts(); sessions != 0 {
		t.Errorf("%d sessions held after both ended", sessions)
	}
}

// TestSecurityHeaders: every answer, whatever its status, carries the
// CSP and the other headers.
func TestSecurityHeaders(t *testing.T) {
	h := newHarness(t, &fakeBackend{}, nil)
	ck := h.login("alice.mesh")
	want := map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
		"Cache-Control":           "no-store",
		"X-Content-Type-Options":  "nosniff",
	}
	check := func(what string, resp *http.Response) {
		t.Helper()
		for k, v := range want {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", what, k, got, v)
			}
		}
	}
	for _, p := range []string{h.mint("alice.mesh"), "/console/login?token=bad", "/console/static/console.js", "/console/events"} {
		r, _ := h.get(p, nil)
		check("GET "+p, r)
	}
	for _, p := range []string{"/console/", "/console/agents", "/console/missing", "/console/static/missing"} {
		r, _ := h.get(p, ck)
		check("GET "+p, r)
	}
	r, _ := h.post("/console/revoke", ck, url.Values{"target": {"x"}}, nil)
	check("POST without csrf", r)
}

// TestNoInlineScriptOrStyle: the pages load the console's own script and
// sheet and hold no inline script, style or event handler, which the CSP
// would block.
func TestNoInlineScriptOrStyle(t *testing.T) {
	h := newHarness(t, hostileBackend(), nil)
	ck := h.login("alice.mesh")
	inline := regexp.MustCompile(`(?i)<script>|<script [^>]*>[^<]|<style|\sstyle=|\son[a-z]+=|javascript:`)
	for _, p := range pages {
		_, body := h.get(p, ck)
		if m := inline.FindString(body); m != "" {
			t.Errorf("%s holds inline code or style: %q", p, m)
		}
		if !strings.Contains(body, `<script src="/console/static/console.js" defer></script>`) || !strings.Contains(body, `href="/console/static/console.css"`) {
			t.Errorf("%s does not load the console's script and sheet", p)
		}
		if regexp.MustCompile(`(?i)(src|href|action)="(https?:)?//`).MatchString(body) {
			t.Errorf("%s refers to another site", p)
		}
	}
}

var pages = []string{
	"/console/", "/console/agents", "/console/nodes", "/console/certificates", "/console/revocations",
	"/console/entities", "/console/audit", "/console/intermediates", "/console/policy",
	"/console/policy?policy=meshd-admin&identity=opus%40ct111&operation=GET+%2Fadmin%2Fx",
	"/console/revoke?target=opus%40ct111", "/console/reinstate?name=opus%40ct111", "/console/entities/revoke?name=acme",
}

const hostile = `<script>alert(1)</script>"'&`

// hostileBackend fills every string the pages show with markup.
func hostileBackend() *fakeBackend {
	exp := t0.Add(30 * 24 * time.Hour)
	revoked := t0.Add(-time.Hour)
	return &fakeBackend{
		agents: []console.Agent{
			{ID: "opus" + hostile, Owner: "opus@ct111" + hostile, Node: "ct111" + hostile, Entity: hostile, Source: "localca" + hostile, Status: "healthy", Reason: hostile, Endpoint: "https://10.0.0.1:9000" + hostile, LastSeen: t0.Add(-time.Minute), CertExpires: &exp},
			{ID: "anon" + hostile, Status: "healthy" + hostile, Unauthenticated: true, LastSeen: t0},
			{ID: "gone" + hostile, Owner: "gone@ct111", Node: "ct111", Status: "evicted", Reason: "revoked" + hostile, LastSeen: t0},
		},
		certs: []console.Certificate{
			{Serial: "1a2b" + hostile, CommonName: "opus@ct111" + hostile, Kind: "agent" + hostile, IssuerKeyID: "ab" + hostile, NotBefore: t0.Add(-80 * 24 * time.Hour), NotAfter: t0.Add(10 * 24 * time.Hour), RenewAfter: t0.Add(-20 * 24 * time.Hour), Due: true},
			{Serial: "3c4d", CommonName: "ct111.mesh", Kind: "node", NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour), RenewAfter: t0.Add(60 * 24 * time.Hour)},
		},
		revs:     []console.Revocation{{Seq: 7, Serial: "5e" + hostile, CommonName: "bad@ct111" + hostile, Reason: "keyCompromise" + hostile, RevokedAt: revoked, KeyHash: "ff" + hostile, By: "alice.mesh" + hostile, Evicted: []string{"bad" + hostile}, Closed: 3}},
		revIDs:   []console.IdentityRevocation{{Name: "bad@ct111" + hostile, Reason: hostile, RevokedAt: revoked, By: hostile}},
		entities: []meshapi.EntityInfo{{Name: "acme" + hostile, Subject: "CN=" + hostile, Expires: "2027-01-01" + hostile, Fingerprint: "00" + hostile, Source: "meshd" + hostile, Status: "active", Agents: 2, Namespace: "prefix" + hostile}},
		sources: []console.TrustSource{
			{Name: "localca" + hostile, Entities: []string{""}},
			{Name: "spire" + hostile, Entities: []string{"example.org" + hostile}, Stale: true, Detail: "no bundle for 6m" + hostile},
		},
		audit: console.AuditLog{Total: 1, VerifyError: "hash mismatch at 3" + hostile, CheckedAt: t0, Entries: []console.AuditEntry{{Seq: 1, Time: t0, Action: "revoke" + hostile, Identity: hostile, Outcome: "ok" + hostile, Detail: hostile, Hash: "abcd" + hostile}}},
		intermediates: []console.Intermediate{
			{KeyID: "k1" + hostile, Subject: "CN=int" + hostile, State: "active", NotBefore: t0, NotAfter: t0.Add(time.Hour), LiveCerts: 12},
			{KeyID: "k2", Subject: "CN=int2", State: "prepared" + hostile, LiveCerts: 0},
			{KeyID: "k3", Subject: "CN=int3", State: "tainted", LiveCerts: 7},
			{KeyID: "k4", Subject: "CN=int4", State: "revoked", LiveCerts: 0},
		},
		policies: []string{"meshd-admin" + hostile, "meshd-admin"},
		decision: console.Decision{Allowed: false, Rule: "deny " + hostile},
	}
}

// TestPagesEscape: every page renders the backend's rows, and markup in
// any of them is escaped, never emitted.
func TestPagesEscape(t *testing.T) {
	h := newHarness(t, hostileBackend(), nil)
	ck := h.login("alice.mesh<script>")
	for _, p := range pages {
		resp, body := h.get(p, ck)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %s\n%s", p, resp.Status, body)
			continue
		}
		if strings.Contains(body, "<script>") {
			t.Errorf("GET %s emits a hostile string unescaped", p)
		}
	}
	// What each page must show (escaped).
	for p, wants := range map[string][]string{
		"/console/agents":        {`data-agent-id="opus&lt;script&gt;`, "unauthenticated", `data-evicted-agent-id="gone`, "healthy", "in 30d"},
		"/console/nodes":         {`data-node="ct111&lt;script&gt;`, "no node", `data-evicted-agent-id="gone`, `data-agent-id="opus`},
		"/console/certificates":  {`class="due"`, "1 due for renewal", "ct111.mesh"},
		"/console/revocations":   {"key blocked", "keyCompromise", "alice.mesh&lt;script&gt;", `data-identity="bad@ct111`, "reinstate"},
		"/console/entities":      {`data-entity="acme`, `data-stale="true"`, "stale", "the mesh", "example.org"},
		"/console/audit":         {`data-verified="false"`, "hash mismatch at 3"},
		"/console/intermediates": {`data-state="active"`, ">12<", `data-state="tainted"`, `data-state="revoked"`, ">7<"},
	} {
		_, body := h.get(p, ck)
		for _, w := range wants {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s lacks %q", p, w)
			}
		}
	}
}

// TestPolicyExplainer: the explainer passes the question on and shows
// the decision and its rule; a question missing a field is 400 and
// never asked.
func TestPolicyExplainer(t *testing.T) {
	be := hostileBackend()
	be.decision = console.Decision{Allowed: true, Rule: "allow mesh:*@ct111 tools/call"}
	h := newHarness(t, be, nil)
	ck := h.login("alice.mesh")
	resp, body := h.get("/console/policy?policy=meshd-admin&identity=opus%40ct111&source=spire&entity=acme&operation=tools%2Fcall", ck)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `data-allowed="true"`) || !strings.Contains(body, "allow mesh:*@ct111 tools/call") {
		t.Fatalf("explain = %s\n%s", resp.Status, body)
	}
	want := console.Question{Policy: "meshd-admin", Identity: "opus@ct111", Source: "spire", Entity: "acme", Operation: "tools/call"}
	if len(be.asked) != 1 || be.asked[0] != want {
		t.Errorf("asked %+v, want %+v", be.asked, want)
	}
	if resp, _ := h.get("/console/policy?policy=meshd-admin&identity=opus%40ct111", ck); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("no operation = %s, want 400", resp.Status)
	}
	if len(be.asked) != 1 {
		t.Errorf("an incomplete question was asked: %+v", be.asked)
	}
}

// TestCSRF: a POST without the session's token, with another, or that a
// browser marks cross-site is 403 and never reaches the backend; the
// same POST from the console's page with its token does.
func TestCSRF(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, nil)
	ck := h.login("alice.mesh")
	token := h.csrf(ck)
	other := h.csrf(h.login("bob.mesh"))
	form := func(csrf string) url.Values {
		v := url.Values{"target": {"opus@ct111"}, "reason": {"keyCompromise"}, "confirm": {"opus@ct111"}, "name": {"opus@ct111"}}
		if csrf != "" {
			v.Set("csrf", csrf)
		}
		return v
	}
	for _, path := range []string{"/console/revoke", "/console/reinstate", "/console/entities/revoke", "/console/logout"} {
		for _, tc := range []struct {
			name string
			form url.Values
			hdr  map[string]string
		}{
			{"no token", form(""), nil},
			{"wrong token", form(flipped(token)), nil},
			{"another session's token", form(other), nil},
			{"token in the URL only", form(""), map[string]string{}},
			{"cross-site Sec-Fetch-Site", form(token), map[string]string{"Sec-Fetch-Site": "cross-site"}},
			{"same-site Sec-Fetch-Site", form(token), map[string]string{"Sec-Fetch-Site": "same-site"}},
			{"foreign Origin", form(token), map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": ""}},
			{"null Origin", form(token), map[string]string{"Origin": "null", "Sec-Fetch-Site": ""}},
			{"foreign Origin, same-origin fetch", form(token), map[string]string{"Origin": "http://evil.example"}},
		} {
			p := path
			if tc.name == "token in the URL only" {
				p += "?csrf=" + url.QueryEscape(token)
			}
			resp, _ := h.post(p, ck, tc.form, tc.hdr)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("POST %s, %s = %s, want 403", path, tc.name, resp.Status)
			}
		}
	}
	if calls := be.Calls(); len(calls) != 0 {
		t.Fatalf("refused POSTs reached the backend: %v", calls)
	}
	if r, _ := h.get("/console/", ck); r.StatusCode != http.StatusOK {
		t.Fatalf("a refused logout ended the session: %s", r.Status)
	}
	// A client without Origin or Sec-Fetch-Site (curl) still needs the
	// token, and with it is served; so is Chromium's form POST under
	// Referrer-Policy: no-referrer (Origin: null, Sec-Fetch-Site:
	// same-origin).
	for i, hdr := range []map[string]string{{"Origin": "", "Sec-Fetch-Site": ""}, {"Origin": "null"}} {
		resp, _ := h.post("/console/revoke", ck, form(token), hdr)
		if resp.StatusCode != http.StatusOK || len(be.Calls()) != i+1 {
			t.Fatalf("POST with the token and %v = %s, calls %v", hdr, resp.Status, be.Calls())
		}
	}
}

// flipped returns s with its last character changed.
func flipped(s string) string {
	last := byte('A')
	if s[len(s)-1] == 'A' {
		last = 'B'
	}
	return s[:len(s)-1] + string(last)
}

// TestActions: each action first shows exactly what it will do and
// changes nothing; confirmed, it reaches the backend with the session's
// admin identity as the actor.
func TestActions(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, nil)
	ck := h.login("uid 0 (admin socket)")
	token := h.csrf(ck)

	resp, body := h.post("/console/revoke", ck, url.Values{"csrf": {token}, "target": {" opus@ct111 "}, "reason": {"keycompromise"}}, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="confirm"`) || !strings.Contains(body, "every certificate of the identity opus@ct111") || !strings.Contains(body, "keyCompromise") {
		t.Fatalf("unconfirmed revoke = %s\n%s", resp.Status, body)
	}
	if len(be.Calls()) != 0 {
		t.Fatalf("an unconfirmed revoke reached the backend: %v", be.Calls())
	}
	// A confirmation for another target does not confirm this one.
	h.post("/console/revoke", ck, url.Values{"csrf": {token}, "target": {"opus@ct111"}, "confirm": {"other@ct111"}}, nil)
	if len(be.Calls()) != 0 {
		t.Fatalf("a mismatched confirm reached the backend: %v", be.Calls())
	}
	resp, body = h.post("/console/revoke", ck, url.Values{"csrf": {token}, "target": {"opus@ct111"}, "reason": {"keyCompromise"}, "confirm": {"opus@ct111"}}, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="action-result"`) || !strings.Contains(body, "1 agent(s) evicted") {
		t.Fatalf("confirmed revoke = %s\n%s", resp.Status, body)
	}
	resp, body = h.post("/console/reinstate", ck, url.Values{"csrf": {token}, "name": {"opus@ct111"}}, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Reinstate the identity opus@ct111") {
		t.Fatalf("unconfirmed reinstate = %s", resp.Status)
	}
	h.post("/console/reinstate", ck, url.Values{"csrf": {token}, "name": {"opus@ct111"}, "confirm": {"opus@ct111"}}, nil)
	h.post("/console/entities/revoke", ck, url.Values{"csrf": {token}, "name": {"acme"}}, nil)
	h.post("/console/entities/revoke", ck, url.Values{"csrf": {token}, "name": {"acme"}, "confirm": {"acme"}}, nil)
	want := []call{
		{"Revoke", "uid 0 (admin socket)", "opus@ct111", "keyCompromise"},
		{"Reinstate", "uid 0 (admin socket)", "opus@ct111", ""},
		{"RevokeEntity", "uid 0 (admin socket)", "acme", ""},
	}
	if got := be.Calls(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("calls = %v, want %v", got, want)
	}

	// Bad input never reaches the backend.
	for _, f := range []url.Values{
		{"target": {""}, "confirm": {""}},
		{"target": {"opus@ct111"}, "reason": {"removeFromCRL"}, "confirm": {"opus@ct111"}},
		{"target": {"opus@ct111"}, "reason": {"bogus"}, "confirm": {"opus@ct111"}},
		{"target": {"a\x00b"}, "confirm": {"a\x00b"}},
		{"target": {strings.Repeat("a", 600)}, "confirm": {strings.Repeat("a", 600)}},
	} {
		f.Set("csrf", token)
		if resp, _ := h.post("/console/revoke", ck, f, nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("revoke %v = %s, want 400", f, resp.Status)
		}
	}
	if len(be.Calls()) != 3 {
		t.Errorf("bad input reached the backend: %v", be.Calls()[3:])
	}
}

// TestBackendErrors: the operator's error (ErrInput) is shown, 400;
// meshd's is logged and shown generically, 500.
func TestBackendErrors(t *testing.T) {
	be := &fakeBackend{err: fmt.Errorf("%w: no certificate with serial 99", console.ErrInput)}
	h := newHarness(t, be, nil)
	ck := h.login("alice.mesh")
	token := h.csrfFrom("/console/policy", ck) // a failing backend still renders it
	resp, body := h.post("/console/revoke", ck, url.Values{"csrf": {token}, "target": {"99"}, "confirm": {"99"}}, nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "no certificate with serial 99") {
		t.Errorf("input error = %s\n%s", resp.Status, body)
	}
	be.err = errors.New("database is locked: secret detail")
	resp, body = h.post("/console/revoke", ck, url.Values{"csrf": {token}, "target": {"99"}, "confirm": {"99"}}, nil)
	if resp.StatusCode != http.StatusInternalServerError || strings.Contains(body, "secret detail") {
		t.Errorf("meshd error = %s\n%s", resp.Status, body)
	}
	if !strings.Contains(h.logs.String(), "database is locked") {
		t.Error("meshd's error was not logged")
	}
	for _, p := range []string{"/console/agents", "/console/audit", "/console/entities"} {
		if r, body := h.get(p, ck); r.StatusCode != http.StatusInternalServerError || strings.Contains(body, "secret detail") {
			t.Errorf("GET %s with a failing backend = %s", p, r.Status)
		}
	}
	if r, _ := h.get("/console/audit?n=0", ck); r.StatusCode != http.StatusBadRequest {
		t.Errorf("audit n=0 = %s", r.Status)
	}
}

// TestLogout: logout ends the session; the cookie no longer opens a page.
func TestLogout(t *testing.T) {
	h := newHarness(t, &fakeBackend{}, nil)
	ck := h.login("alice.mesh")
	resp, _ := h.post("/console/logout", ck, url.Values{"csrf": {h.csrf(ck)}}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("logout = %s", resp.Status)
	}
	if r, _ := h.get("/console/", ck); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("after logout = %s", r.Status)
	}
}

// TestCaps: past MaxLogins or MaxSessions the oldest is dropped, so a
// flood of logins holds no more than the caps.
func TestCaps(t *testing.T) {
	h := newHarness(t, &fakeBackend{}, func(c *console.Config) { c.MaxLogins, c.MaxSessions = 3, 2 })
	var paths []string
	for range 10 {
		paths = append(paths, h.mint("alice.mesh"))
	}
	if logins, _, _ := h.c.Counts(); logins != 3 {
		t.Errorf("held %d logins, want 3", logins)
	}
	if r, _ := h.get(paths[6], nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("a dropped login = %s", r.Status)
	}
	var cks []*http.Cookie
	for _, p := range paths[7:] {
		r, _ := h.get(p, nil)
		if r.StatusCode != http.StatusSeeOther {
			t.Fatalf("a kept login = %s", r.Status)
		}
		cks = append(cks, r.Cookies()[0])
	}
	if _, sessions, _ := h.c.Counts(); sessions != 2 {
		t.Errorf("held %d sessions, want 2", sessions)
	}
	if r, _ := h.get("/console/", cks[0]); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("the oldest session, dropped = %s", r.Status)
	}
	for _, ck := range cks[1:] {
		if r, _ := h.get("/console/", ck); r.StatusCode != http.StatusOK {
			t.Errorf("a newer session = %s", r.Status)
		}
	}
	// Expired logins are swept at the next mint, whatever the cap.
	h.clock.Advance(console.DefaultLoginTTL)
	h.mint("alice.mesh")
	if logins, _, _ := h.c.Counts(); logins != 1 {
		t.Errorf("held %d logins after the others expired, want 1", logins)
	}
}

// TestNoSecretsLogged: tokens, session ids and CSRF tokens never reach
// the log.
func TestNoSecretsLogged(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, nil)
	path := h.mint("alice.mesh")
	resp, _ := h.get(path, nil)
	ck := resp.Cookies()[0]
	token := h.csrf(ck)
	h.get(path, nil)
	h.post("/console/revoke", ck, url.Values{"target": {"x"}}, nil)
	h.post("/console/revoke", ck, url.Values{"csrf": {token}, "target": {"x"}, "confirm": {"x"}}, nil)
	h.post("/console/logout", ck, url.Values{"csrf": {token}}, nil)
	logs := h.logs.String()
	if !strings.Contains(logs, "session opened") {
		t.Fatalf("nothing logged:\n%s", logs)
	}
	for _, secret := range []string{strings.TrimPrefix(path, "/console/login?token="), ck.Value, token} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret reached the log:\n%s", logs)
		}
	}
}

// TestSessionBoundToCaller: with Config.Caller, a login is redeemed and a
// session used only by a request authenticated as the admin it was minted
// for; another caller with the cookie gets 401 and changes nothing, and
// the session stays its own admin's.
func TestSessionBoundToCaller(t *testing.T) {
	var caller atomic.Pointer[string]
	as := func(name string) { caller.Store(&name) }
	as("alice.mesh")
	h := newHarness(t, hostileBackend(), func(c *console.Config) {
		c.Caller = func(*http.Request) string { return *caller.Load() }
	})
	ck := h.login("alice.mesh")
	csrf := h.csrf(ck)

	as("uid 1000 (admin socket)")
	if resp, _ := h.get("/console/agents", ck); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("alice's session used by another admin: %s, want 401", resp.Status)
	}
	if resp, _ := h.post("/console/revoke", ck, url.Values{"csrf": {csrf}, "target": {"opus@ct111"}, "confirm": {"opus@ct111"}}, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("alice's session revoking for another admin: %s, want 401", resp.Status)
	}
	if n := len(h.be.Calls()); n != 0 {
		t.Fatalf("the backend was asked %d actions", n)
	}
	login := h.mint("alice.mesh")
	if resp, _ := h.get(login, nil); resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Fatalf("alice's login visited by another admin: %s %v, want 401 and no cookie", resp.Status, resp.Cookies())
	}

	as("alice.mesh")
	if resp, _ := h.get("/console/agents", ck); resp.StatusCode != http.StatusOK {
		t.Fatalf("alice's session afterwards: %s, want 200", resp.Status)
	}
	if resp, _ := h.get(login, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("alice's login after another admin spent it: %s, want 401", resp.Status)
	}
}

// TestEndpointNeverALink: an agent's endpoint is its own claim; a
// javascript: or data: URL (or any other) is shown as text, never as a
// link or an attribute the browser would follow.
func TestEndpointNeverALink(t *testing.T) {
	be := &fakeBackend{agents: []console.Agent{
		{ID: "opus@ct111", Owner: "opus@ct111", Status: "healthy", Endpoint: `javascript:alert(document.cookie)`, LastSeen: t0},
		{ID: "haiku@ct111", Owner: "haiku@ct111", Status: "healthy", Endpoint: `data:text/html,<script>alert(1)</script>`, LastSeen: t0},
	}}
	h := newHarness(t, be, nil)
	ck := h.login("alice.mesh")
	for _, page := range []string{"/console/agents", "/console/nodes"} {
		resp, body := h.get(page, ck)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", page, resp.Status)
		}
		if page == "/console/agents" && !strings.Contains(body, ">javascript:alert(document.cookie)<") {
			t.Errorf("%s does not show the endpoint as text:\n%s", page, body)
		}
		for _, bad := range []string{`="javascript:`, `="data:`, "<script>alert"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s carries %q:\n%s", page, bad, body)
			}
		}
	}
}
