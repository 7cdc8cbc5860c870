package server_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestHostileAdminNonCanonicalPaths: on the admin API over mTLS, a caller
// whose policy allows GET /admin/entities/** cannot reach another route
// by a dot segment or an encoded separator: meshauth refuses every such
// path itself (400 not_canonical, no redirect to follow), and the path
// a rule allowed is the one the handler is handed.
func TestHostileAdminNonCanonicalPaths(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
	}})
	if _, err := e.ca.auth.Sign(context.Background(), ca.ClientRequest("alice"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	alice, err := tls.LoadX509KeyPair(e.ca.cfg.IssuedCertPath("alice@external"), e.ca.cfg.IssuedKeyPath("alice@external"))
	if err != nil {
		t.Fatal(err)
	}
	doc := "rules:\n  - name: admins\n    who: [admin@external]\n    http: [\"* /**\"]\n" +
		"  - name: entity-readers\n    who: [alice@external]\n    http: [\"GET /admin/entities\", \"GET /admin/entities/**\"]\n"
	if r := e.adminDo("PUT", meshapi.PathAdminPolicies+"/"+server.AdminPolicy, map[string]string{"document": doc}); r.code != 200 {
		t.Fatalf("set the policy: %s", r)
	}
	c := e.freshClient(&alice)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	url := "https://" + e.srv.AdminTLSAddr()
	if r := do(t, c, "GET", url+meshapi.PathAdminEntities, nil); r.code != 200 {
		t.Fatalf("alice, allowed to list entities: %s", r)
	}
	for _, p := range []string{
		"/admin/entities/../policies/meshd-admin",
		"/admin/entities/%2e%2e/policies/meshd-admin",
		"/admin/entities/x%2F..%2F..%2Fpolicies%2Fmeshd-admin",
		"/admin/entities/.%2E/agents",
		"/admin/entities//../agents",
	} {
		if r := do(t, c, "GET", url+p, nil); r.code != http.StatusBadRequest || r.reason() != "not_canonical" {
			t.Errorf("GET %s: %s, want 400 not_canonical", p, r)
		}
	}
	if r := do(t, c, "GET", url+meshapi.PathAdminPolicies+"/"+server.AdminPolicy, nil); r.code != 403 {
		t.Fatalf("alice, not allowed to read the admin policy: %s", r)
	}
}
