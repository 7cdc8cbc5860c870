package server_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestE2EAdminPolicy: the admin API over mTLS is guarded by a policy, the
// default one from --admin-identity until an operator sets another;
// setting one refuses a bad document with its line and changes nothing;
// check names the deciding rule.
func TestE2EAdminPolicy(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
	}})
	ctx := context.Background()
	issue := func(user string) tls.Certificate {
		if _, err := e.ca.auth.Sign(ctx, ca.ClientRequest(user), ca.WithGeneratedKey()); err != nil {
			t.Fatal(err)
		}
		cn := user + "@external"
		c, err := tls.LoadX509KeyPair(e.ca.cfg.IssuedCertPath(cn), e.ca.cfg.IssuedKeyPath(cn))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	admin, alice := issue("admin"), issue("alice")
	opus, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	url := "https://" + e.srv.AdminTLSAddr()
	as := func(cert tls.Certificate, method, path string, body any) reply {
		return do(t, e.freshClient(&cert), method, url+path, body)
	}

	if r := as(admin, "GET", "/admin/agents", nil); r.code != 200 {
		t.Fatalf("an admin identity: %s", r)
	}
	if r := as(alice, "GET", "/admin/agents", nil); r.code != 403 || r.reason() != "forbidden" {
		t.Fatalf("not an admin identity: %s", r)
	}
	if r := as(opus, "GET", "/admin/agents", nil); r.code != 403 {
		t.Fatalf("an agent: %s", r)
	}
	if r := e.adminDo("GET", meshapi.PathAdminPolicies+"/"+server.AdminPolicy, nil); r.code != 200 || !strings.Contains(r.json(t)["document"].(string), `"admin@external"`) {
		t.Fatalf("the default admin policy: %s", r)
	}

	// A bad document is refused with its line; nothing changes.
	bad := "rules:\n  - name: readers\n    who: [alice@@external]\n    http: [\"GET /admin/agents\"]\n"
	if r := e.adminDo("PUT", meshapi.PathAdminPolicies+"/"+server.AdminPolicy, map[string]string{"document": bad}); r.code != 400 ||
		!strings.Contains(r.json(t)["error"].(string), `meshd-admin:3: rule "readers"`) {
		t.Fatalf("a bad policy: %s", r)
	}
	if r := as(admin, "GET", "/admin/agents", nil); r.code != 200 {
		t.Fatalf("after a refused policy: %s", r)
	}

	// alice may read agents; admin keeps everything.
	good := "rules:\n  - name: admins\n    who: [admin@external]\n    http: [\"* /**\"]\n  - name: readers\n    who: [alice@external]\n    http: [\"GET /admin/agents\", \"GET /admin/entities\"]\n"
	if r := e.adminDo("PUT", meshapi.PathAdminPolicies+"/"+server.AdminPolicy, map[string]string{"document": good}); r.code != 200 || r.json(t)["rules"].(float64) != 2 {
		t.Fatalf("set the policy: %s", r)
	}
	if r := as(alice, "GET", "/admin/agents", nil); r.code != 200 {
		t.Fatalf("alice, allowed to read: %s", r)
	}
	if r := as(alice, "POST", "/admin/revoke", map[string]string{"target": "opus@ct111"}); r.code != 403 {
		t.Fatalf("alice, not allowed to revoke: %s", r)
	}
	for _, c := range []struct {
		who, op string
		allowed bool
		rule    string
	}{
		{"alice@external", "GET /admin/agents", true, "readers"},
		{"alice@external", "POST /admin/revoke", false, "default deny"},
		{"admin@external", "POST /admin/revoke", true, "admins"},
	} {
		r := e.adminDo("POST", meshapi.PathAdminPolicies+"/"+server.AdminPolicy+"/check", map[string]string{"identity": c.who, "operation": c.op})
		j := r.json(t)
		if r.code != 200 || j["allowed"] != c.allowed || j["rule"] != c.rule {
			t.Errorf("check %s %s: %s", c.who, c.op, r)
		}
	}
	// Revoking alice ends her admin access on her open connection too.
	ac := e.client(&alice)
	if r := do(t, ac, "GET", url+"/admin/agents", nil); r.code != 200 {
		t.Fatalf("alice: %s", r)
	}
	e.revokeName("alice@external")
	if r := do(t, ac, "GET", url+"/admin/agents", nil); r.code != 401 || r.reason() != "revoked" {
		t.Fatalf("alice after her revocation: %s", r)
	}
	if r := e.adminDo("GET", meshapi.PathAdminPolicies+"/nope", nil); r.code != 404 {
		t.Fatalf("an unknown policy: %s", r)
	}
}
