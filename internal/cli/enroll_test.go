package cli_test

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/pemfile"
)

const bootstrapSecret = "b00tstrap-s3cret-7f3a"

// node is a node directory beside a fake meshd's PKI routes.
type node struct {
	t    *testing.T
	srv  *enrolltest.Server
	base string
	dir  string
	root string // the mesh root, PEM
}

func newNode(t *testing.T, cfg enrolltest.Config) *node {
	t.Helper()
	for _, k := range []string{"MESHTRUST_NODE_DIR", "MESHTRUST_SERVER", "MESHTRUST_DATA_DIR", "MESHTRUST_ADMIN_URL"} {
		t.Setenv(k, "")
	}
	if cfg.Secret == "" {
		cfg.Secret = bootstrapSecret
	}
	n := &node{t: t, srv: enrolltest.NewServer(t, cfg), base: t.TempDir()}
	n.dir = filepath.Join(n.base, "etc", "meshtrust")
	n.root = filepath.Join(n.base, "root.pem")
	if err := os.WriteFile(n.root, n.srv.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// secretFile writes the bootstrap secret the way an operator would: with
// a trailing newline.
func (n *node) secretFile() string {
	p := filepath.Join(n.base, "bootstrap.secret")
	if err := os.WriteFile(p, []byte("\n  "+bootstrapSecret+"\n"), 0o600); err != nil {
		n.t.Fatal(err)
	}
	return p
}

func (n *node) enroll(extra ...string) result {
	n.t.Helper()
	args := append([]string{"enroll", "--server", n.srv.URL, "--node-id", "ct112", "--dir", n.dir}, extra...)
	return execute(n.t, args...)
}

func (n *node) mustEnroll() {
	n.t.Helper()
	if r := n.enroll("--secret-file", n.secretFile(), "--ca-cert", n.root); r.code != 0 {
		n.t.Fatalf("enroll: exit %d\n%s", r.code, r.output())
	}
}

func (n *node) path(elem ...string) string { return filepath.Join(append([]string{n.dir}, elem...)...) }

func (n *node) load() *enroll.Node {
	n.t.Helper()
	nd, err := enroll.Dir(n.dir).Load()
	if err != nil {
		n.t.Fatal(err)
	}
	return nd
}

func (n *node) requests(path string) []enrolltest.Request {
	var out []enrolltest.Request
	for _, r := range n.srv.Requests() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func perm(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestEnrollCmd(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	r := n.enroll("--secret-file", n.secretFile(), "--ca-cert", n.root)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.output())
	}
	for p, want := range map[string]os.FileMode{
		n.dir: 0o700, n.path("node.key"): 0o600, n.path("node.crt"): 0o644,
		n.path("ca.crt"): 0o644, n.path("agents"): 0o700, n.path("server"): 0o644,
	} {
		if got := perm(t, p); got != want {
			t.Errorf("%s: mode %04o, want %04o", p, got, want)
		}
		if !strings.Contains(r.stdout, p) {
			t.Errorf("output does not name %s:\n%s", p, r.stdout)
		}
	}
	nd := n.load()
	if nd.ID != "ct112" || len(nd.Chain) != 2 || !nd.Chain[1].Equal(n.srv.Root) {
		t.Errorf("enrolled %s with chain %v", nd.ID, nd.Chain)
	}
	if !strings.Contains(r.stdout, "verified: meshd at "+n.srv.URL+" accepts ct112.mesh over mTLS") {
		t.Errorf("no mTLS verification reported:\n%s", r.stdout)
	}
	// The secret, trimmed, went to /enroll only; the check ran over mTLS.
	enrolls := n.requests("/enroll")
	if len(enrolls) != 1 || enrolls[0].Authorization != "Bearer "+bootstrapSecret {
		t.Errorf("/enroll requests: %+v", enrolls)
	}
	health := n.requests("/health")
	if len(health) != 1 || health[0].ClientCN != "ct112.mesh" {
		t.Errorf("/health requests: %+v, want one as ct112.mesh", health)
	}
	for _, rq := range n.srv.Requests() {
		if rq.Path != "/enroll" && rq.Authorization != "" {
			t.Errorf("%s carried a credential", rq.Path)
		}
	}
	if strings.Contains(r.output(), bootstrapSecret) {
		t.Error("the bootstrap secret was printed")
	}
	if got, _ := os.ReadFile(n.path("server")); strings.TrimSpace(string(got)) != n.srv.URL {
		t.Errorf("server file = %q", got)
	}

	// A second enroll refuses to overwrite, and says how.
	before, _ := os.ReadFile(n.path("node.key"))
	r = n.enroll("--secret-file", n.secretFile(), "--ca-cert", n.root)
	if r.code == 0 || !strings.Contains(r.stderr, "--force") || !strings.Contains(r.stderr, "ct112.mesh, valid until") {
		t.Errorf("re-enroll without --force: exit %d\n%s", r.code, r.output())
	}
	if after, _ := os.ReadFile(n.path("node.key")); string(after) != string(before) {
		t.Error("the refused enroll replaced node.key")
	}
	if len(n.requests("/enroll")) != 1 {
		t.Error("the refused enroll called meshd")
	}
}

func TestEnrollCmdTokenAndFingerprint(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	n.srv.AddToken("mtj_tok3n-value", "ct112", time.Now().Add(time.Hour))
	r := n.enroll("--token", "mtj_tok3n-value", "--ca-fingerprint", "sha256:"+strings.ToUpper(n.srv.RootFingerprint()))
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.output())
	}
	if nd := n.load(); nd.Certificate.Leaf.Subject.CommonName != "ct112.mesh" {
		t.Errorf("CN %q", nd.Certificate.Leaf.Subject.CommonName)
	}
	// --force replaces the node with a new key; the token is spent, so
	// the secret does it (the fake's node certificate is revoked first).
	old := n.load()
	n.srv.Revoke(old.Certificate.Leaf.SerialNumber.Text(16), "ct112.mesh", "superseded")
	r = n.enroll("--force", "--secret-file", n.secretFile(), "--ca-cert", n.root)
	if r.code != 0 {
		t.Fatalf("--force: exit %d\n%s", r.code, r.output())
	}
	if nd := n.load(); nd.Certificate.Leaf.SerialNumber.Cmp(old.Certificate.Leaf.SerialNumber) == 0 {
		t.Error("--force kept the old certificate")
	}
}

func TestEnrollCmdRefusals(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	other := enrolltest.NewServer(t, enrolltest.Config{})
	empty := filepath.Join(n.base, "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	wrong := filepath.Join(n.base, "wrong")
	os.WriteFile(wrong, []byte("not-the-secret"), 0o600)
	leafFile := filepath.Join(n.base, "leaf.pem")
	leaf := n.srv.Issue(t, "ct1.mesh")
	os.WriteFile(leafFile, pemCert(leaf.Leaf), 0o644)

	for _, tc := range []struct {
		name   string
		args   []string
		want   []string
		called bool // whether meshd may have been called
	}{
		{"no credential", []string{"--ca-cert", n.root}, []string{"--secret-file", "--token"}, false},
		{"two credentials", []string{"--secret-file", n.secretFile(), "--token", "t", "--ca-cert", n.root}, []string{"one of them"}, false},
		{"no trust", []string{"--secret-file", n.secretFile()}, []string{"--ca-cert", "--ca-fingerprint"}, false},
		{"empty secret file", []string{"--secret-file", empty, "--ca-cert", n.root}, []string{"is empty"}, false},
		{"missing secret file", []string{"--secret-file", filepath.Join(n.base, "nope"), "--ca-cert", n.root}, []string{"--secret-file"}, false},
		{"ca-cert not a CA", []string{"--secret-file", n.secretFile(), "--ca-cert", leafFile}, []string{"not a CA certificate"}, false},
		{"wrong secret", []string{"--secret-file", wrong, "--ca-cert", n.root}, []string{"invalid bootstrap credential", "meshctl token create"}, true},
		{"wrong fingerprint", []string{"--secret-file", n.secretFile(), "--ca-fingerprint", other.RootFingerprint()}, []string{"no root with SHA-256 fingerprint"}, true},
		{"wrong root", []string{"--secret-file", n.secretFile(), "--ca-cert", writePEM(t, n.base, "other.pem", other.RootPEM())}, []string{"not trusted"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(n.srv.Requests())
			r := n.enroll(tc.args...)
			if r.code == 0 {
				t.Fatalf("enrolled:\n%s", r.output())
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.output(), bootstrapSecret) {
				t.Error("the secret was printed")
			}
			if !tc.called && len(n.srv.Requests()) != before {
				t.Error("meshd was called for input refused locally")
			}
			if _, err := os.Stat(n.path("node.key")); !errors.Is(err, os.ErrNotExist) {
				t.Error("a failed enroll left node.key")
			}
		})
	}
	// No refused attempt ever sent the secret to the wrong server or to
	// anything but /enroll.
	for _, rq := range n.srv.Requests() {
		if rq.Path != "/enroll" && rq.Authorization != "" {
			t.Errorf("%s carried a credential", rq.Path)
		}
	}
	r := n.enroll("--secret-file", n.secretFile(), "--ca-cert", n.root, "--node-id", "CT_112")
	if r.code == 0 || !strings.Contains(r.stderr, "--node-id") {
		t.Errorf("bad node id: exit %d\n%s", r.code, r.output())
	}
}

func writePEM(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func TestAgentCertCmd(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	n.mustEnroll()
	r := execute(t, "agent-cert", "opus", "--dir", n.dir)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.output())
	}
	if perm(t, n.path("agents", "opus.key")) != 0o600 {
		t.Error("agent key is not 0600")
	}
	nd := n.load()
	if len(nd.Agents) != 1 || nd.Agents[0].Certificate.Leaf.Subject.CommonName != "opus@ct112" {
		t.Fatalf("agents: %+v", nd.Agents)
	}
	if !strings.Contains(r.stdout, "minted opus@ct112") || !strings.Contains(r.stdout, n.path("agents", "opus.crt")) {
		t.Errorf("output:\n%s", r.stdout)
	}
	reqs := n.requests("/agent-cert")
	if len(reqs) != 1 || reqs[0].ClientCN != "ct112.mesh" || reqs[0].Authorization != "" {
		t.Errorf("/agent-cert requests: %+v, want one over mTLS as the node", reqs)
	}

	// An existing agent is kept unless --force.
	r = execute(t, "agent-cert", "opus", "--dir", n.dir)
	if r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("second mint without --force: exit %d\n%s", r.code, r.output())
	}
	if r := execute(t, "agent-cert", "opus", "--dir", n.dir, "--force"); r.code != 0 {
		t.Errorf("--force: exit %d\n%s", r.code, r.output())
	}
	// Refusals read well.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent-cert", "Opus!", "--dir", n.dir}, "agent id"},
		{[]string{"agent-cert", "scout", "--dir", filepath.Join(n.base, "nowhere")}, "meshctl enroll"},
		{[]string{"agent-cert", "scout", "--dir", n.dir, "--server", "http://127.0.0.1:1"}, "TLS only"},
	} {
		if r := execute(t, tc.args...); r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, want a refusal mentioning %q\n%s", tc.args, r.code, tc.want, r.output())
		}
	}
}

func TestRenewCmd(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	n.mustEnroll()
	if r := execute(t, "agent-cert", "opus", "--dir", n.dir); r.code != 0 {
		t.Fatal(r.output())
	}
	before := n.load()

	// Fresh: not due, nothing called, exit 0 (it runs from a timer).
	r := execute(t, "renew", "--dir", n.dir)
	due := enroll.RenewAt(before.Certificate.Leaf, 2.0/3).UTC().Format(time.RFC3339)
	if r.code != 0 || !strings.Contains(r.stdout, "not due until "+due) {
		t.Errorf("renew when not due: exit %d\n%s", r.code, r.output())
	}
	if len(n.requests("/renew")) != 0 {
		t.Error("renew called meshd although nothing was due")
	}

	// --force renews the node and its agent, same keys.
	r = execute(t, "renew", "--dir", n.dir, "--force")
	if r.code != 0 || !strings.Contains(r.stdout, "renewed ct112.mesh") || !strings.Contains(r.stdout, "renewed opus@ct112") {
		t.Fatalf("renew --force: exit %d\n%s", r.code, r.output())
	}
	after := n.load()
	if after.Certificate.Leaf.SerialNumber.Cmp(before.Certificate.Leaf.SerialNumber) == 0 ||
		after.Agents[0].Certificate.Leaf.SerialNumber.Cmp(before.Agents[0].Certificate.Leaf.SerialNumber) == 0 {
		t.Error("renew --force did not replace the certificates")
	}
	keyBefore, _ := pemfile.MarshalKey(before.Key)
	keyAfter, _ := pemfile.MarshalKey(after.Key)
	if string(keyBefore) != string(keyAfter) {
		t.Error("renewal changed the node key")
	}
	if rq := n.requests("/renew"); len(rq) != 1 || rq[0].ClientCN != "ct112.mesh" {
		t.Errorf("/renew requests: %+v", rq)
	}

	// meshd refusing: a non-zero exit with its message, files untouched.
	n.srv.FailNext("/renew", 1, 403, "certificate revoked", "")
	r = execute(t, "renew", "--dir", n.dir, "--force")
	if r.code == 0 || !strings.Contains(r.stderr, "certificate revoked") || !strings.Contains(r.stderr, "enroll the node again") {
		t.Errorf("refused renew: exit %d\n%s", r.code, r.output())
	}
	if n.load().Certificate.Leaf.SerialNumber.Cmp(after.Certificate.Leaf.SerialNumber) != 0 {
		t.Error("a refused renewal changed node.crt")
	}
}

// TestRenewCmdDue: a certificate past 2/3 of its lifetime is renewed by
// a plain `meshctl renew`, as the systemd timer runs it.
func TestRenewCmdDue(t *testing.T) {
	var shift atomic.Int64 // how far the fake meshd's clock is behind
	shift.Store(int64(61 * 24 * time.Hour))
	n := newNode(t, enrolltest.Config{Now: func() time.Time { return time.Now().Add(-time.Duration(shift.Load())) }})
	n.mustEnroll() // issued "61 days ago"
	shift.Store(0)
	r := execute(t, "renew", "--dir", n.dir)
	if r.code != 0 || !strings.Contains(r.stdout, "renewed ct112.mesh") {
		t.Fatalf("renew when due: exit %d\n%s", r.code, r.output())
	}
	if r := execute(t, "renew", "--dir", n.dir); r.code != 0 || !strings.Contains(r.stdout, "not due until") {
		t.Errorf("renew right after renewing: exit %d\n%s", r.code, r.output())
	}
}

// TestRenewCmdTainted: a fresh certificate is renewed by a plain `meshctl
// renew` once meshd's Meshtrust-Renew-After says it is due (its
// intermediate was tainted); a time still ahead is reported as the due
// time.
func TestRenewCmdTainted(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	n.mustEnroll()
	ahead := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	n.srv.SetRenewHeader(ahead.Format(time.RFC3339))
	if r := execute(t, "renew", "--dir", n.dir); r.code != 0 || !strings.Contains(r.stdout, "not due until "+ahead.Format(time.RFC3339)) {
		t.Fatalf("renew with meshd's time ahead: exit %d\n%s", r.code, r.output())
	}
	n.srv.SetRenewHeader(time.Now().Add(-time.Second).UTC().Format(time.RFC3339))
	if r := execute(t, "renew", "--dir", n.dir); r.code != 0 || !strings.Contains(r.stdout, "renewed ct112.mesh") {
		t.Fatalf("renew with meshd's time passed: exit %d\n%s", r.code, r.output())
	}
	if len(n.requests("/renew")) != 1 {
		t.Errorf("/renew requests: %+v", n.requests("/renew"))
	}
}

// fakeAdmin serves meshd's POST /admin/tokens on a unix socket in a data
// directory, minting tokens into srv.
type fakeAdmin struct {
	dataDir string
	mu      sync.Mutex
	bodies  []map[string]string
	status  int
}

func startFakeAdmin(t *testing.T, srv *enrolltest.Server) *fakeAdmin {
	t.Helper()
	dataDir, err := os.MkdirTemp("", "mtadm") // a socket path must fit in 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	a := &fakeAdmin{dataDir: dataDir, status: http.StatusCreated}
	ln, err := net.Listen("unix", filepath.Join(dataDir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/admin/tokens" {
			http.NotFound(w, r)
			return
		}
		var body map[string]string
		json.NewDecoder(r.Body).Decode(&body)
		a.mu.Lock()
		a.bodies = append(a.bodies, body)
		status := a.status
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if status != http.StatusCreated {
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(map[string]string{"error": "ttl \"9000h0m0s\": want a duration between 1s and 168h0m0s"})
			return
		}
		ttl, _ := time.ParseDuration(body["ttl"])
		exp := time.Now().Add(ttl).UTC().Truncate(time.Second)
		token := "mtj_" + body["node_id"] + "-0123456789abcdef"
		srv.AddToken(token, body["node_id"], exp)
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{"token": token, "node_id": body["node_id"], "expires_at": exp, "root_fingerprint": srv.RootFingerprint()})
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return a
}

func TestTokenCreateCmd(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	a := startFakeAdmin(t, n.srv)
	r := execute(t, "token", "create", "--node", "ct112", "--ttl", "2h", "--data-dir", a.dataDir, "--server", n.srv.URL)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.output())
	}
	const token = "mtj_ct112-0123456789abcdef"
	if strings.Count(r.stdout, token) != 2 { // once alone, once in the command
		t.Errorf("token printed %d times:\n%s", strings.Count(r.stdout, token), r.stdout)
	}
	if a.bodies[0]["node_id"] != "ct112" || a.bodies[0]["ttl"] != "2h0m0s" {
		t.Errorf("request body %v", a.bodies[0])
	}
	// The printed command enrolls the node as it stands.
	var line string
	for _, l := range strings.Split(r.stdout, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "meshctl enroll ") {
			line = l
		}
	}
	want := "meshctl enroll --server " + n.srv.URL + " --node-id ct112 --token " + token + " --ca-fingerprint " + n.srv.RootFingerprint()
	if line != want {
		t.Fatalf("printed command:\n%s\nwant:\n%s", line, want)
	}
	args := append(strings.Fields(strings.TrimPrefix(line, "meshctl ")), "--dir", n.dir)
	if r := execute(t, args...); r.code != 0 {
		t.Fatalf("the printed command failed: exit %d\n%s", r.code, r.output())
	}
	if n.load().ID != "ct112" {
		t.Error("not enrolled")
	}

	// --json prints meshd's answer.
	r = execute(t, "token", "create", "--node", "ct113", "--data-dir", a.dataDir, "--json")
	var out map[string]any
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil || out["node_id"] != "ct113" || out["token"] == "" {
		t.Errorf("--json: exit %d\n%s", r.code, r.output())
	}
	if a.bodies[1]["ttl"] != "1h0m0s" {
		t.Errorf("default ttl sent as %q", a.bodies[1]["ttl"])
	}

	// Refusals: local, and meshd's own message.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "create", "--node", "CT!", "--data-dir", a.dataDir}, "--node"},
		{[]string{"token", "create", "--node", "ct114", "--ttl", "soon", "--data-dir", a.dataDir}, "--ttl"},
		{[]string{"token", "create", "--data-dir", a.dataDir}, "node"},
	} {
		if r := execute(t, tc.args...); r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, want a refusal mentioning %q\n%s", tc.args, r.code, tc.want, r.output())
		}
	}
	a.mu.Lock()
	a.status = http.StatusBadRequest
	a.mu.Unlock()
	if r := execute(t, "token", "create", "--node", "ct115", "--ttl", "9000h", "--data-dir", a.dataDir); r.code == 0 || !strings.Contains(r.stderr, "want a duration between") {
		t.Errorf("meshd's refusal: exit %d\n%s", r.code, r.output())
	}
}
