package server_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/store"
)

// TestE2EAuditNamesTheAdmin: the audit entries of revoke, reinstate and
// entity revoke name who asked: the admin socket's peer uid (SO_PEERCRED),
// the admin certificate's identity on the mTLS listener; never a name the
// caller wrote in the body.
func TestE2EAuditNamesTheAdmin(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
	}})
	ctx := context.Background()
	admin := e.clientCert("admin")
	agentCert(t, e.ca.auth, "opus", "ct111")
	agentCert(t, e.ca.auth, "haiku", "ct111")
	partner := newTestCA(t, "Acme CA")
	e.registerEntity("acme", partner)
	url := "https://" + e.srv.AdminTLSAddr()
	tlsDo := func(method, path string, body any) reply {
		return do(t, e.freshClient(&admin), method, url+path, body)
	}

	// The socket: a body naming someone else changes nothing.
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": "opus@ct111", "by": "mallory@external", "actor": "mallory@external"}); r.code != 200 {
		t.Fatalf("revoke over the socket: %s", r)
	}
	if r := e.adminDo("POST", "/admin/reinstate", map[string]string{"identity": "opus@ct111"}); r.code != 200 {
		t.Fatalf("reinstate over the socket: %s", r)
	}
	if r := tlsDo("POST", "/admin/revoke", map[string]string{"target": "haiku@ct111", "reason": "superseded"}); r.code != 200 {
		t.Fatalf("revoke over mTLS: %s", r)
	}
	if r := tlsDo("DELETE", "/admin/entities/acme", nil); r.code != 200 {
		t.Fatalf("entity revoke over mTLS: %s", r)
	}
	// A refused one names nobody new and changes nothing.
	if r := tlsDo("DELETE", "/admin/entities/acme", nil); r.code != 409 {
		t.Fatalf("a second entity revoke: %s, want 409", r)
	}

	log, err := e.ca.st.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sock := fmt.Sprintf("uid %d (admin socket)", os.Getuid())
	want := map[string]string{
		"identity.revoke opus@ct111":    sock,
		"identity.reinstate opus@ct111": sock,
		"identity.revoke haiku@ct111":   "admin@external",
		"entity.revoke acme":            "admin@external",
	}
	got := map[string]string{}
	for _, a := range log {
		if strings.Contains(a.Detail, "mallory") {
			t.Errorf("audit entry %d names the body's mallory: %+v", a.Seq, a)
		}
		if _, ok := want[a.Action+" "+a.Identity]; ok {
			got[a.Action+" "+a.Identity] = store.AttributedTo(a.Detail)
		}
	}
	for k, who := range want {
		if got[k] != who {
			t.Errorf("%s is attributed to %q, want %q", k, got[k], who)
		}
	}
}
