package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestHostileConsoleSessionBoundToAdmin: a console login and session act
// only for requests authenticated as the admin they were minted for. A
// login minted over the mTLS listener and visited over the admin socket
// opens nothing; a session cookie carried to another admin's channel acts
// for nobody (it would have made that admin's revocations say "by
// admin@external"); and once admin@external's certificate is revoked its
// console is closed, over its own channel as over any other.
func TestHostileConsoleSessionBoundToAdmin(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
	}})
	admin := e.clientCert("admin")
	base := "https://" + e.srv.AdminTLSAddr()
	mint := func() meshapi.ConsoleLogin {
		t.Helper()
		r := do(t, e.freshClient(&admin), "POST", base+meshapi.PathAdminConsoleLogin, nil)
		if r.code != http.StatusOK {
			t.Fatalf("admin's console login: %s", r)
		}
		var l meshapi.ConsoleLogin
		if err := json.Unmarshal(r.body, &l); err != nil {
			t.Fatal(err)
		}
		return l
	}

	// admin@external's login, visited over the socket (uid 0).
	if r := do(t, e.consoleBrowser(), "GET", "http://meshd"+mint().Path, nil); r.code != http.StatusUnauthorized {
		t.Fatalf("admin@external's login over the admin socket: %d, want 401", r.code)
	}

	// admin@external's session, then its cookie over the socket.
	jar, _ := cookiejar.New(nil)
	c := e.freshClient(&admin)
	c.Jar = jar
	if r := do(t, c, "GET", base+mint().Path, nil); r.code != 200 || !strings.Contains(string(r.body), "admin@external") {
		t.Fatalf("admin's console over mTLS: %d, want 200 naming admin@external", r.code)
	}
	u, _ := url.Parse(base + meshapi.PathConsole)
	var cookie string
	for _, ck := range jar.Cookies(u) {
		cookie = ck.Name + "=" + ck.Value
	}
	if cookie == "" {
		t.Fatal("no session cookie")
	}
	page := meshapi.PathConsole + "agents"
	hdr := http.Header{"Cookie": {cookie}}
	if r := doHeader(t, e.admin(), "GET", "http://meshd"+page, hdr, nil); r.code != http.StatusUnauthorized {
		t.Fatalf("admin@external's session over the admin socket: %d, want 401", r.code)
	}
	if r := doHeader(t, e.admin(), "GET", "http://meshd"+meshapi.PathConsole+"events", hdr, nil); r.code != http.StatusUnauthorized {
		t.Fatalf("admin@external's live stream over the admin socket: %d, want 401", r.code)
	}
	// Still admin@external's own, over its own channel.
	if r := do(t, c, "GET", base+page, nil); r.code != 200 {
		t.Fatalf("admin's session over mTLS: %d, want 200", r.code)
	}

	// Revoked: its open live stream ends, its certificate opens no
	// connection, and its session acts nowhere else.
	ctx, cancel := context.WithTimeout(context.Background(), eventually.Bound)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+meshapi.PathConsole+"events", nil)
	stream, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != 200 {
		t.Fatalf("admin's live stream: %s", stream.Status)
	}
	if r := e.adminDo("POST", meshapi.PathAdminRevoke, meshapi.RevokeRequest{Target: "admin@external", Reason: "keyCompromise"}); r.code != http.StatusOK {
		t.Fatalf("revoke admin@external: %s", r)
	}
	if _, err := io.Copy(io.Discard, stream.Body); err != nil {
		t.Fatalf("admin@external's live stream after its certificate was revoked: %v, want it ended", err)
	}
	if r, err := c.Get(base + page); err == nil {
		r.Body.Close()
		if r.StatusCode == 200 {
			t.Fatal("admin@external's console after its certificate was revoked: 200")
		}
	}
	if r := doHeader(t, e.admin(), "GET", "http://meshd"+page, hdr, nil); r.code != http.StatusUnauthorized {
		t.Fatalf("revoked admin@external's session over the admin socket: %d, want 401", r.code)
	}
}

// TestHostileConsoleCertlessAgentPort: in TLS mode auto, where the agent
// port admits callers without a certificate, none of issue 23's routes
// is there for them (nor for an agent's certificate): the console, its
// login, the status.
func TestHostileConsoleCertlessAgentPort(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto})
	opus, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	for name, c := range map[string]*http.Client{"certless": e.client(nil), "agent": e.client(&opus)} {
		for _, p := range []struct{ method, path string }{
			{"GET", meshapi.PathAdminStatus},
			{"POST", meshapi.PathAdminConsoleLogin},
			{"GET", meshapi.PathConsole},
			{"GET", meshapi.PathConsole + "login?token=x"},
			{"GET", meshapi.PathConsole + "events"},
			{"GET", meshapi.PathConsole + "static/console.js"},
		} {
			if r := e.do(c, p.method, p.path, nil); r.code != http.StatusNotFound {
				t.Errorf("%s: %s %s on the agent port: %s, want 404", name, p.method, p.path, r)
			}
		}
	}
}
