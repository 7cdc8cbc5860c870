package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPolicyCommands: policy get shows the default admin policy; set
// refuses a file that does not compile, naming its line, and then takes
// effect on the admin API over mTLS; check names the deciding rule.
func TestPolicyCommands(t *testing.T) {
	m := startMeshd(t)
	m.mustRun("ca", "issue-client", "alice")
	url := "https://" + m.srv.AdminTLSAddr()
	alice := []string{"--admin-url", url, "--cert", m.issued("alice@external"), "--key", m.issuedKey("alice@external")}

	if r := m.mustCtl("policy", "get"); !strings.Contains(r.stdout, `who: ["admin@external"]`) {
		t.Fatalf("the default admin policy:\n%s", r.stdout)
	}
	requireRefused(t, "alice before", m.run(append([]string{"entity", "list"}, alice...)...), "alice@external may not call GET /admin/entities")

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - name: readers\n    who: [alice@external]\n    http: [\"list /admin/entities\"]\n"), 0o600)
	requireRefused(t, "a bad file", m.ctl("policy", "set", "meshd-admin", bad), bad+`:4: rule "readers": invalid policy: http "list /admin/entities"`)

	good := filepath.Join(dir, "admin.yaml")
	os.WriteFile(good, []byte("rules:\n  - name: admins\n    who: [admin@external]\n    http: [\"* /**\"]\n  - name: readers\n    who: [alice@external]\n    http: [\"GET /admin/entities\"]\n"), 0o600)
	if r := m.mustCtl("policy", "set", "meshd-admin", good); r.stdout != "policy meshd-admin set: 2 rules, in force now\n" {
		t.Fatalf("set: %q", r.stdout)
	}
	if r := m.run(append([]string{"entity", "list"}, alice...)...); r.code != 0 {
		t.Fatalf("alice after the policy: exit %d\n%s", r.code, r.output())
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"alice@external", "GET", "/admin/entities"}, "allow: rule \"readers\" of meshd-admin\n"},
		{[]string{"alice@external", "POST", "/admin/revoke"}, "deny: no rule of meshd-admin allows alice@external POST /admin/revoke (default deny)\n"},
		{[]string{"admin@external", "POST /admin/revoke"}, "allow: rule \"admins\" of meshd-admin\n"},
		{[]string{"--source", "localca", "admin@external", "POST /admin/revoke"}, "allow: rule \"admins\" of meshd-admin\n"},
		// A partner's CA may write admin@external into a certificate; only
		// the mesh CA vouches for it.
		{[]string{"--entity", "partner-corp", "admin@external", "POST /admin/revoke"}, "deny: no rule of meshd-admin allows admin@external POST /admin/revoke (default deny)\n"},
		{[]string{"--source", "filestore", "admin@external", "POST /admin/revoke"}, "deny: no rule of meshd-admin allows admin@external POST /admin/revoke (default deny)\n"},
	} {
		if r := m.mustCtl(append([]string{"policy", "check"}, c.args...)...); r.stdout != c.want {
			t.Errorf("check %v: %q, want %q", c.args, r.stdout, c.want)
		}
	}
	requireRefused(t, "a mesh identity from a SPIFFE bundle", m.ctl("policy", "check", "--source", "spire", "admin@external", "GET", "/admin/agents"), "vouches for SPIFFE IDs only")
	requireRefused(t, "a bad operation", m.ctl("policy", "check", "alice@external", "frobnicate"), `operation "frobnicate"`)
	requireRefused(t, "an unknown policy", m.ctl("policy", "get", "nope"), `no policy "nope"`)
}
