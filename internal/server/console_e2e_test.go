package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/meshapi"
)

// consoleLogin asks the admin socket for a console login.
func (e *env) consoleLogin() meshapi.ConsoleLogin {
	e.t.Helper()
	r := e.adminDo("POST", meshapi.PathAdminConsoleLogin, nil)
	if r.code != http.StatusOK {
		e.t.Fatalf("console login: %s", r)
	}
	var l meshapi.ConsoleLogin
	if err := json.Unmarshal(r.body, &l); err != nil {
		e.t.Fatal(err)
	}
	if !strings.HasPrefix(l.Path, meshapi.PathConsole+"login?token=") {
		e.t.Fatalf("console login path %q", l.Path)
	}
	return l
}

// clientCert issues user@external with the mesh CA and loads it.
func (e *env) clientCert(user string) tls.Certificate {
	e.t.Helper()
	if _, err := e.ca.auth.Sign(context.Background(), ca.ClientRequest(user), ca.WithGeneratedKey()); err != nil {
		e.t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(e.ca.cfg.IssuedCertPath(user+"@external"), e.ca.cfg.IssuedKeyPath(user+"@external"))
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// consoleBrowser is a client of the admin socket that keeps cookies, as
// a browser behind meshctl console does.
func (e *env) consoleBrowser() *http.Client {
	e.t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	sock := e.cfg.AdminSocket
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Jar: jar}
}

// TestE2EConsolePages: a console login from the admin socket opens a
// session acting as the socket's peer uid, and every page renders this
// meshd's state (agents, certificates, revocations and who revoked,
// entities and trust sources, the verified audit log, intermediates and
// their live certificates, the stored policies).
func TestE2EConsolePages(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict"})
	e.registeredAgent("opus", "ct111", 9001)
	e.registeredAgent("haiku", "ct112", 9002)
	e.registerEntity("acme", newTestCA(t, "Acme CA"))
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": "haiku@ct112", "reason": "superseded"}); r.code != 200 {
		t.Fatalf("revoke: %s", r)
	}
	uid := fmt.Sprintf("uid %d (admin socket)", os.Getuid())

	b := e.consoleBrowser()
	l := e.consoleLogin()
	if r := do(t, b, "GET", "http://meshd"+l.Path, nil); r.code != 200 || !strings.Contains(string(r.body), "opus") {
		t.Fatalf("login: %s", r)
	}
	for _, p := range []struct{ path, want string }{
		{"agents", "opus"},
		{"agents", "evicted"},
		{"nodes", "ct111"},
		{"certificates", "opus@ct111"},
		{"revocations", "haiku@ct112"},
		{"revocations", uid},
		{"revocations", "haiku"}, // what it evicted
		{"entities", "acme"},
		{"entities", "localca"},
		{"audit", "identity.revoke"},
		{"intermediates", "active"},
		{"policy", "meshd-admin"},
	} {
		r := do(t, b, "GET", "http://meshd"+meshapi.PathConsole+p.path, nil)
		if r.code != 200 || !strings.Contains(string(r.body), p.want) {
			t.Errorf("GET /console/%s: %d, want 200 showing %q:\n%.2000s", p.path, r.code, p.want, r.body)
		}
	}
	r := do(t, b, "GET", "http://meshd"+meshapi.PathConsole+"policy?"+
		"policy=meshd-admin&identity=admin@external&operation=GET+/admin/agents", nil)
	if r.code != 200 || !strings.Contains(string(r.body), "admin-identities") {
		t.Errorf("the policy explainer: %d:\n%.2000s", r.code, r.body)
	}
}

// TestE2EConsoleNotOnAgentPort: the agent port serves no console: a
// login URL presented there is a 404 and stays good for the admin
// surface; no page, no login route.
func TestE2EConsoleNotOnAgentPort(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict"})
	opus, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	agent := e.client(&opus)
	l := e.consoleLogin()
	for _, p := range []struct{ method, path string }{
		{"GET", l.Path},
		{"GET", meshapi.PathConsole},
		{"GET", meshapi.PathConsole + "agents"},
		{"GET", meshapi.PathConsole + "events"},
		{"POST", meshapi.PathConsole + "revoke"},
		{"POST", meshapi.PathAdminConsoleLogin},
	} {
		if r := e.do(agent, p.method, p.path, nil); r.code != http.StatusNotFound {
			t.Errorf("%s %s on the agent port: %s, want 404", p.method, p.path, r)
		}
	}
	// Unchanged: the login is still good, once, on the admin surface.
	b := e.consoleBrowser()
	if r := do(t, b, "GET", "http://meshd"+l.Path, nil); r.code != 200 {
		t.Fatalf("the login after its visit to the agent port: %s", r)
	}
	if r := do(t, e.consoleBrowser(), "GET", "http://meshd"+l.Path, nil); r.code != http.StatusUnauthorized {
		t.Fatalf("the login used twice: %s, want 401", r)
	}
}

// TestE2EConsoleLoginOverMTLS: over the admin mTLS listener a console
// login acts as the admin certificate's identity, and an identity the
// meshd-admin policy does not admit gets none.
func TestE2EConsoleLoginOverMTLS(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
	}})
	admin, alice := e.clientCert("admin"), e.clientCert("alice")
	url := "https://" + e.srv.AdminTLSAddr()
	if r := do(t, e.freshClient(&alice), "POST", url+meshapi.PathAdminConsoleLogin, nil); r.code != http.StatusForbidden {
		t.Fatalf("alice's console login: %s, want 403", r)
	}
	if r := do(t, e.freshClient(&alice), "GET", url+meshapi.PathConsole+"agents", nil); r.code != http.StatusForbidden {
		t.Fatalf("alice's console page: %s, want 403", r)
	}
	r := do(t, e.freshClient(&admin), "POST", url+meshapi.PathAdminConsoleLogin, nil)
	if r.code != 200 {
		t.Fatalf("admin's console login: %s", r)
	}
	var l meshapi.ConsoleLogin
	if err := json.Unmarshal(r.body, &l); err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	c := e.freshClient(&admin)
	c.Jar = jar
	if r := do(t, c, "GET", url+l.Path, nil); r.code != 200 || !strings.Contains(string(r.body), "admin@external") {
		t.Fatalf("admin's console: %d, want 200 naming admin@external:\n%.2000s", r.code, r.body)
	}
}

// TestE2EConsoleLiveStream: the console's live stream, on the admin socket
// and on the mTLS listener, outlasts the listeners' read deadline (which
// bounds reading a request, not a stream) and carries a revocation made
// after it passed.
func TestE2EConsoleLiveStream(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
		c.ReadTimeout = readTimeout
	}})
	admin := e.clientCert("admin")
	agentCert(t, e.ca.auth, "opus", "ct111")
	agentCert(t, e.ca.auth, "haiku", "ct111")
	tlsURL := "https://" + e.srv.AdminTLSAddr()
	mtls := e.freshClient(&admin)
	for _, tc := range []struct {
		name, base, target string
		browser            *http.Client
		login              func() meshapi.ConsoleLogin
	}{
		{"socket", "http://meshd", "opus@ct111", e.consoleBrowser(), e.consoleLogin},
		{"mTLS", tlsURL, "haiku@ct111", mtls, func() meshapi.ConsoleLogin {
			var l meshapi.ConsoleLogin
			r := do(t, mtls, "POST", tlsURL+meshapi.PathAdminConsoleLogin, nil)
			if err := json.Unmarshal(r.body, &l); err != nil || r.code != 200 {
				t.Fatalf("login over mTLS: %s", r)
			}
			return l
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.browser.Jar == nil {
				tc.browser.Jar, _ = cookiejar.New(nil)
			}
			if r := do(t, tc.browser, "GET", tc.base+tc.login().Path, nil); r.code != 200 {
				t.Fatalf("login: %s", r)
			}
			ctx, cancel := context.WithTimeout(context.Background(), eventually.Bound)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", tc.base+meshapi.PathConsole+"events", nil)
			resp, err := tc.browser.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("the live stream: %s %s", resp.Status, resp.Header.Get("Content-Type"))
			}
			// Past the listener's read deadline: the stream must stay.
			<-time.After(3 * readTimeout)
			if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": tc.target}); r.code != 200 {
				t.Fatalf("revoke: %s", r)
			}
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "data: ") && strings.Contains(sc.Text(), `"subject":"`+tc.target+`"`) {
					return
				}
			}
			t.Fatalf("the live stream ended without the revocation of %s: %v", tc.target, sc.Err())
		})
	}
}
