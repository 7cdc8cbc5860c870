package cli_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/internal/cli"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// commandsOf is every runnable command under root but cobra's own, by path.
func commandsOf(root *cobra.Command) []string {
	var out []string
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" {
			return // cobra's own: help and shell scripts, no data
		}
		if c.Runnable() && !c.HasSubCommands() && !c.Hidden {
			out = append(out, strings.TrimPrefix(c.CommandPath(), "meshctl "))
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return out
}

// TestEveryCommandTakesJSON: every meshctl command prints data, so every
// one takes --json.
func TestEveryCommandTakesJSON(t *testing.T) {
	root := cli.NewRoot()
	root.InitDefaultCompletionCmd()
	for _, path := range commandsOf(root) {
		c, _, err := root.Find(strings.Fields(path))
		if err != nil {
			t.Fatal(err)
		}
		if c.Flags().Lookup("json") == nil {
			t.Errorf("meshctl %s has no --json", path)
		}
	}
}

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// requireSnakeJSON checks that out is one JSON value, nothing else, whose
// every object key is snake_case.
func requireSnakeJSON(t *testing.T, what, out string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Errorf("%s --json: %v\n%s", what, err, out)
		return nil
	}
	if dec.More() {
		t.Errorf("%s --json printed more than one JSON value:\n%s", what, out)
	}
	var walk func(string, any)
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if !snakeCase.MatchString(k) {
					t.Errorf("%s --json: key %q at %s is not snake_case\n%s", what, k, at, out)
				}
				walk(at+"."+k, x)
			}
		case []any:
			for _, x := range v {
				walk(at+"[]", x)
			}
		}
	}
	walk("", v)
	return v
}

// TestJSONEverywhere runs every meshctl command with --json, on the CA
// directory, against meshd's admin API and against a node's meshd, and
// checks each prints one JSON value with snake_case keys only.
func TestJSONEverywhere(t *testing.T) {
	m := startMeshd(t) // CA commands run on its CA directory
	covered := map[string]bool{}
	check := func(path string, r result, wantCode int) any {
		t.Helper()
		covered[path] = true
		if r.code != wantCode {
			t.Fatalf("meshctl %s --json: exit %d, want %d\n%s", path, r.code, wantCode, r.output())
		}
		return requireSnakeJSON(t, "meshctl "+path, r.stdout)
	}

	// A CA of its own for the first steps, which meshd's already took.
	fresh := newEnv(t)
	check("ca init", fresh.run("ca", "init", "--json"), 0)
	check("ca issue-intermediate", fresh.run("ca", "issue-intermediate", "--json"), 0)
	check("ca rotate-intermediate prepare", fresh.run("ca", "rotate-intermediate", "prepare", "--json"), 0)
	check("ca rotate-intermediate activate", fresh.run("ca", "rotate-intermediate", "activate", "--json"), 0)
	ints, _ := check("ca status", fresh.run("ca", "status", "--json"), 0).([]any)
	if len(ints) != 2 || ints[0].(map[string]any)["state"] != "active" || ints[1].(map[string]any)["state"] != "retired" {
		t.Fatalf("ca status --json after a rotation: %v", ints)
	}
	retiredID, _ := ints[1].(map[string]any)["key_id"].(string)
	tainted := check("ca rotate-intermediate taint", fresh.run("ca", "rotate-intermediate", "taint", retiredID, "--json"), 0)
	if tainted.(map[string]any)["state"] != "tainted" {
		t.Errorf("taint --json: %v", tainted)
	}
	revoked := check("ca rotate-intermediate revoke", fresh.run("ca", "rotate-intermediate", "revoke", retiredID, "--json"), 0)
	if revoked.(map[string]any)["state"] != "revoked" {
		t.Errorf("revoke --json: %v", revoked)
	}

	check("ca issue-node", m.run("ca", "issue-node", "ct1", "--json"), 0)
	check("ca issue-agent", m.run("ca", "issue-agent", "opus", "ct1", "--json"), 0)
	m.mustRun("ca", "issue-agent", "scout", "ct1")
	check("ca issue-client", m.run("ca", "issue-client", "alice", "--json"), 0)
	csr := m.writeCSR("ct2.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct2.mesh"}})
	check("ca sign", m.run("ca", "sign", csr, "--profile", "node", "--json"), 0)
	check("ca list", m.run("ca", "list", "--json"), 0)
	check("ca crl", m.run("ca", "crl", "--json"), 0)
	check("ca verify", m.run("ca", "verify", m.issued("opus@ct1"), "--json"), 0)
	// Offline, then through meshd.
	check("ca revoke", m.run("ca", "revoke", "opus@ct1", "--reason", "keyCompromise", "--json"), 0)
	v := check("ca verify", m.run("ca", "verify", m.issued("opus@ct1"), "--json"), 1)
	if rv, _ := v.(map[string]any)["revoked"].(map[string]any); rv["reason"] != "keyCompromise" {
		t.Errorf("ca verify --json of a revoked certificate: %v", v)
	}
	check("ca revoke", m.ctl("ca", "revoke", "scout@ct1", "--json"), 0)
	check("ca reinstate", m.run("ca", "reinstate", "opus@ct1", "--json"), 0)
	check("ca reinstate", m.ctl("ca", "reinstate", "scout@ct1", "--json"), 0)
	check("ca audit", m.run("ca", "audit", "--json"), 0)
	rep := check("ca audit", m.run("ca", "audit", "--verify", "--json"), 0)
	if r, _ := rep.(map[string]any); r["intact"] != true || r["checkpoints"] == float64(0) {
		t.Errorf("ca audit --verify --json: %v", rep)
	}

	acme := m.validCA("acme")
	check("entity register", m.ctl("entity", "register", "acme", "--ca-cert", acme.file, "--json"), 0)
	check("entity list", m.ctl("entity", "list", "--json"), 0)
	check("status", m.ctl("status", "--json"), 0)
	check("entity rotate", m.ctl("entity", "rotate", "--json"), 0)
	check("entity revoke", m.ctl("entity", "revoke", "acme", "--force", "--json"), 0)
	pol := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(pol, []byte("rules:\n  - name: admins\n    who: [admin@external]\n    http: [\"* /**\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("policy set", m.ctl("policy", "set", "meshd-admin", pol, "--json"), 0)
	check("policy get", m.ctl("policy", "get", "--json"), 0)
	check("policy check", m.ctl("policy", "check", "admin@external", "GET", "/admin/agents", "--json"), 0)
	check("console", m.startConsole().stop(), 0)
	check("session keys", m.ctl("session", "keys", "--json"), 0)
	check("session rotate-key", m.ctl("session", "rotate-key", "--json"), 0)
	keys, _ := check("session keys", m.ctl("session", "keys", "--json"), 0).(map[string]any)["keys"].([]any)
	if len(keys) != 2 {
		t.Fatalf("session keys after a rotation: %v", keys)
	}
	current, _ := keys[0].(map[string]any)["key_id"].(string)
	retired, _ := keys[1].(map[string]any)["key_id"].(string)
	if r := m.ctl("session", "drop-key", "--", current); r.code == 0 || !strings.Contains(r.stderr, "rotate first") {
		t.Errorf("meshctl session drop-key of the current key: exit %d\n%s", r.code, r.output())
	}
	left, _ := check("session drop-key", m.ctl("session", "drop-key", "--json", "--", retired), 0).(map[string]any)["keys"].([]any)
	if len(left) != 1 || left[0].(map[string]any)["key_id"] != current {
		t.Errorf("session drop-key --json: keys left %v, want only %s", left, current)
	}
	m.registerAgent(t, "rel", "ct1")
	check("agent release", m.ctl("agent", "release", "rel", "--force", "--json"), 0)
	m.useFiles(t, "runner", "ct1")
	check("agent run", execute(t, "agent", "run", "--agent-id", "runner", "--provider", "file", "--registry-url", "https://"+m.agentAddr, "--json", "--", "true"), 0)

	// A node, against a meshd's PKI routes.
	n := newNode(t, enrolltest.Config{})
	check("enroll", n.enroll("--secret-file", n.secretFile(), "--ca-cert", n.root, "--json"), 0)
	check("agent-cert", execute(t, "agent-cert", "opus", "--dir", n.dir, "--json"), 0)
	due := check("renew", execute(t, "renew", "--dir", n.dir, "--json"), 0)
	if d, _ := due.(map[string]any); d["renewed"] != false || d["due_at"] == nil {
		t.Errorf("renew --json when not due: %v", due)
	}
	done := check("renew", execute(t, "renew", "--dir", n.dir, "--force", "--json"), 0)
	if d, _ := done.(map[string]any); d["renewed"] != true || len(d["agents"].([]any)) != 1 {
		t.Errorf("renew --force --json: %v", done)
	}
	a := startFakeAdmin(t, n.srv)
	check("token create", execute(t, "token", "create", "--node", "ct113", "--data-dir", a.dataDir, "--json"), 0)

	for _, path := range commandsOf(cli.NewRoot()) {
		if !covered[path] {
			t.Errorf("meshctl %s --json is not checked here", path)
		}
	}
}

// registerAgent issues agent@node with meshctl and registers it with
// meshd over mTLS.
func (m *testMeshd) registerAgent(t *testing.T, agent, node string) {
	t.Helper()
	if r := m.run("ca", "issue-agent", agent, node); r.code != 0 {
		t.Fatalf("issue-agent: %s", r.output())
	}
	cn := agent + "@" + node
	cert, err := tls.LoadX509KeyPair(filepath.Join(m.caDir, "issued", cn+".crt"), filepath.Join(m.caDir, "issued", cn+".key"))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: m.rootCAs, Certificates: []tls.Certificate{cert}}}}
	resp, err := c.Post("https://"+m.agentAddr+"/heartbeat", "application/json", strings.NewReader(`{"agent_id":"`+agent+`","name":"`+agent+`","http_host":"127.0.0.1","http_port":9000,"tools":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("heartbeat of %s: %s", cn, resp.Status)
	}
}
