package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/cli"
	"github.com/meshtrust/meshtrust/pemfile"
)

// runWait bounds every wait in the sidecar tests.
const runWait = 20 * time.Second

// clearAgentEnv keeps the caller's environment from choosing the
// provider, the files or the registry.
func clearAgentEnv(t *testing.T) {
	for _, k := range []string{"MCP_MESH_TLS_PROVIDER", "MCP_MESH_TLS_CERT", "MCP_MESH_TLS_KEY", "MCP_MESH_TLS_CA",
		"MCP_MESH_REGISTRY_URL", "MESHTRUST_NODE_DIR", "MESHTRUST_SERVER", "VAULT_TOKEN", "MCP_MESH_SPIFFE_ID"} {
		t.Setenv(k, "")
	}
}

// useFiles points the file provider's variables at agent@node's
// certificate, issued by the meshd's CA.
func (m *testMeshd) useFiles(t *testing.T, agent, node string) {
	t.Helper()
	m.mustRun("ca", "issue-agent", agent, node)
	cn := agent + "@" + node
	t.Setenv("MCP_MESH_TLS_CERT", m.issued(cn))
	t.Setenv("MCP_MESH_TLS_KEY", m.issuedKey(cn))
	t.Setenv("MCP_MESH_TLS_CA", filepath.Join(m.root, "ca.crt"))
}

// nodeDir lays out an enrolled node's directory for node with agent's
// certificate, from certificates the meshd's CA issued, as `meshctl
// enroll` and `meshctl agent-cert` leave it.
func (m *testMeshd) nodeDir(t *testing.T, node, agent string) string {
	t.Helper()
	m.mustRun("ca", "issue-node", node)
	m.mustRun("ca", "issue-agent", agent, node)
	bundle := func(certFile string) *enroll.Bundle {
		certs, err := pemfile.ParseCerts(readFile(t, certFile))
		if err != nil {
			t.Fatal(err)
		}
		return &enroll.Bundle{Certificate: certs[0], Chain: certs[1:]}
	}
	key := func(keyFile string) crypto.Signer {
		k, err := pemfile.ReadKey(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	d := enroll.Dir(filepath.Join(t.TempDir(), "node"))
	if err := d.WriteNode(key(m.issuedKey(node+".mesh")), bundle(m.issued(node+".mesh"))); err != nil {
		t.Fatal(err)
	}
	cn := agent + "@" + node
	if err := d.WriteAgent(agent, key(m.issuedKey(cn)), bundle(m.issued(cn))); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteServer("https://" + m.agentAddr); err != nil {
		t.Fatal(err)
	}
	return string(d)
}

// sidecar is `meshctl agent run` running in this process.
type sidecar struct {
	done chan result
}

func startSidecar(t *testing.T, args ...string) *sidecar {
	t.Helper()
	s := &sidecar{done: make(chan result, 1)}
	go func() {
		var out, errb bytes.Buffer
		code := cli.Execute(context.Background(), append([]string{"agent", "run"}, args...), &out, &errb)
		s.done <- result{code, out.String(), errb.String()}
	}()
	return s
}

// result waits for meshctl to exit.
func (s *sidecar) result(t *testing.T) result {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	case <-time.After(runWait):
		t.Fatal("meshctl agent run did not exit")
		return result{}
	}
}

// fifo makes a named pipe in a fresh directory.
func fifo(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// openFIFO opens a named pipe, which blocks until the command opens its
// other end, unless meshctl exits first.
func openFIFO(t *testing.T, s *sidecar, path string, flag int) *os.File {
	t.Helper()
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			t.Error(err)
		}
		opened <- f
	}()
	select {
	case f := <-opened:
		return f
	case r := <-s.done:
		// Unblock the open, then report why the command never came.
		other := os.O_RDONLY
		if flag == os.O_RDONLY {
			other = os.O_WRONLY
		}
		if f, err := os.OpenFile(path, other|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		t.Fatalf("meshctl exited %d before the command opened %s:\n%s", r.code, filepath.Base(path), r.output())
	case <-time.After(runWait):
		t.Fatalf("the command never opened %s", filepath.Base(path))
	}
	return nil
}

// TestAgentRun: the sidecar registers the agent, hands the command its
// credentials as files (paths in its environment, never PEM), deregisters
// it and removes the files when it exits, and exits with its status.
func TestAgentRun(t *testing.T) {
	for _, provider := range []string{"file", "enroll"} {
		t.Run(provider, func(t *testing.T) {
			clearAgentEnv(t)
			m := startMeshd(t)
			// Two ways to say the endpoint: flags, or MCP Mesh's payload.
			var extra []string
			if provider == "file" {
				m.useFiles(t, "opus", "ct111")
				extra = []string{"--http-host", "127.0.0.1", "--http-port", "9443"}
			} else {
				payload := filepath.Join(t.TempDir(), "opus.json")
				if err := os.WriteFile(payload, []byte(`{"name":"opus","http_host":"127.0.0.1","http_port":9443,"tools":[{"function_name":"greet","capability":"greeting"}]}`), 0o644); err != nil {
					t.Fatal(err)
				}
				extra = []string{"--dir", m.nodeDir(t, "ct111", "opus"), "--registration", payload}
			}
			// The flag wins over the variable; the command gets neither
			// the token nor a variable holding PEM.
			t.Setenv("MCP_MESH_TLS_PROVIDER", "spire")
			t.Setenv("VAULT_TOKEN", "s.sidecar-secret")
			t.Setenv("SOME_PEM", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----")
			report := filepath.Join(t.TempDir(), "report")
			proceed := fifo(t, "proceed")
			t.Setenv("REPORT", report)
			t.Setenv("PROCEED", proceed)
			script := `env > "$REPORT"
echo --modes >> "$REPORT"
stat -c '%a %n' "$MCP_MESH_TLS_CERT" "$MCP_MESH_TLS_KEY" "$MCP_MESH_TLS_CA" "$(dirname "$MCP_MESH_TLS_CERT")" >> "$REPORT"
read line < "$PROCEED"
exit 3`
			url := "https://" + m.agentAddr
			args := append([]string{"--agent-id", "opus", "--provider", provider, "--registry-url", url}, extra...)
			s := startSidecar(t, append(args, "--", "sh", "-c", script)...)

			// The command waits on PROCEED: its report is written.
			w := openFIFO(t, s, proceed, os.O_WRONLY)
			env, modes, _ := strings.Cut(string(readFile(t, report)), "--modes\n")
			vars := map[string]string{}
			for _, line := range strings.Split(env, "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					vars[k] = v
				}
			}
			if strings.Contains(env, "BEGIN") {
				t.Errorf("the command's environment holds PEM:\n%s", env)
			}
			for _, k := range []string{"VAULT_TOKEN", "SOME_PEM"} {
				if _, ok := vars[k]; ok {
					t.Errorf("the command's environment has %s", k)
				}
			}
			if vars["MCP_MESH_REGISTRY_URL"] != url || vars["MCP_MESH_TLS_PROVIDER"] != "file" {
				t.Errorf("MCP_MESH_REGISTRY_URL=%q MCP_MESH_TLS_PROVIDER=%q", vars["MCP_MESH_REGISTRY_URL"], vars["MCP_MESH_TLS_PROVIDER"])
			}
			var paths []string
			for _, k := range []string{"MCP_MESH_TLS_CERT", "MCP_MESH_TLS_KEY", "MCP_MESH_TLS_CA"} {
				p := vars[k]
				if !filepath.IsAbs(p) || !strings.Contains(filepath.Base(filepath.Dir(p)), "meshtrust-opus-") {
					t.Errorf("%s=%q, want a path in the agent's private directory", k, p)
				}
				paths = append(paths, p)
			}
			dir := filepath.Dir(paths[0])
			wantModes := "600 " + paths[0] + "\n600 " + paths[1] + "\n600 " + paths[2] + "\n700 " + dir + "\n"
			if modes != wantModes {
				t.Errorf("modes:\n%s\nwant:\n%s", modes, wantModes)
			}

			// Registered while the command runs.
			views := m.agents()
			if len(views) != 1 || views[0].ID != "opus" || views[0].Status != "healthy" || views[0].Owner != "opus@ct111" || views[0].Endpoint != "https://127.0.0.1:9443" {
				t.Errorf("meshd's agents while the command runs: %+v", views)
			}

			w.WriteString("go\n")
			w.Close()
			r := s.result(t)
			if r.code != 3 {
				t.Fatalf("meshctl exited %d, want the command's 3\n%s", r.code, r.output())
			}
			for _, p := range append(paths, dir) {
				if _, err := os.Lstat(p); !os.IsNotExist(err) {
					t.Errorf("%s is still there after the command exited (%v)", p, err)
				}
			}
			if views := m.agents(); len(views) != 0 {
				t.Errorf("meshd still lists %+v after the command exited", views)
			}
			if strings.Contains(r.stderr, "s.sidecar-secret") || strings.Contains(r.stderr, "PRIVATE KEY") {
				t.Errorf("meshctl logged a secret:\n%s", r.stderr)
			}
		})
	}
}

// lines reads the lines the command writes to a named pipe.
func lines(t *testing.T, s *sidecar, path string) <-chan string {
	t.Helper()
	f := openFIFO(t, s, path, os.O_RDONLY)
	ch := make(chan string, 16)
	go func() {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}()
	return ch
}

func expectLine(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Fatalf("the command said %q, want %q", got, want)
		}
	case <-time.After(runWait):
		t.Fatalf("the command did not say %q", want)
	}
}

// signalScript is a command that reports the signals it gets on
// $REPORT, and exits $TERM_STATUS on SIGTERM.
const signalScript = `trap 'echo hup >&3' HUP
trap 'echo term >&3; exit $TERM_STATUS' TERM
exec 3>"$REPORT"
echo ready >&3
while :; do sleep 1 </dev/null >/dev/null 2>&1 3>&- & wait $!; done`

// startSignalled runs signalScript as agent opus against a new meshd,
// with the file provider, and returns once the command is ready, with
// what it says.
func startSignalled(t *testing.T, termStatus string, flags ...string) (*testMeshd, *sidecar, <-chan string) {
	t.Helper()
	clearAgentEnv(t)
	m := startMeshd(t)
	m.useFiles(t, "opus", "ct111")
	report := fifo(t, "report")
	t.Setenv("REPORT", report)
	t.Setenv("TERM_STATUS", termStatus)
	args := append([]string{"--agent-id", "opus", "--registry-url", "https://" + m.agentAddr}, flags...)
	s := startSidecar(t, append(args, "--", "sh", "-c", signalScript)...)
	said := lines(t, s, report)
	expectLine(t, said, "ready")
	return m, s, said
}

// TestAgentRunSignals: the command gets SIGHUP after each rewrite of its
// files and the signals sent to meshctl, and meshctl exits with its
// status.
func TestAgentRunSignals(t *testing.T) {
	m, s, said := startSignalled(t, "7")

	// A renewal rewrites the files under MCP_MESH_TLS_CERT: the file
	// provider reloads, the sidecar rewrites its files, then SIGHUP.
	m.mustRun("ca", "issue-agent", "opus", "ct111")
	expectLine(t, said, "hup")
	// meshctl's own signals go to the command.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expectLine(t, said, "hup")
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectLine(t, said, "term")
	if r := s.result(t); r.code != 7 {
		t.Fatalf("meshctl exited %d, want the command's 7\n%s", r.code, r.output())
	}
	if views := m.agents(); len(views) != 0 {
		t.Errorf("meshd still lists %+v", views)
	}
}

// TestAgentRunEvicted: when meshd evicts the agent, the command is told
// to stop and meshctl exits non-zero, saying why.
func TestAgentRunEvicted(t *testing.T) {
	m, s, said := startSignalled(t, "0", "--heartbeat-interval", "20ms", "--json")
	m.mustCtl("ca", "revoke", "opus@ct111", "--reason", "keyCompromise")
	expectLine(t, said, "term")
	r := s.result(t)
	if r.code != 1 {
		t.Fatalf("meshctl exited %d after the eviction, want 1\n%s", r.code, r.output())
	}
	requireContains(t, "stderr", r.stderr, "evicted by the registry", "revoked")
	res := requireSnakeJSON(t, "agent run", r.stdout).(map[string]any)
	if res["exit_status"] != float64(0) || res["registered"] != true || res["deregistered"] != false || !strings.Contains(res["error"].(string), "evicted") {
		t.Errorf("agent run --json: %v", res)
	}
}

// TestAgentRunRefuses: what keeps the command from starting, said on
// stderr.
func TestAgentRunRefuses(t *testing.T) {
	clearAgentEnv(t)
	m := startMeshd(t)
	url := "https://" + m.agentAddr
	marker := filepath.Join(t.TempDir(), "started")
	cmd := []string{"--", "touch", marker}
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T)
		args  []string
		wants []string
	}{
		{"no command", nil, []string{"--agent-id", "opus", "--registry-url", url}, []string{"give the command to run after --"}},
		{"no agent id", nil, append([]string{"--registry-url", url}, cmd...), []string{"agent-id"}},
		{"invalid agent id", nil, append([]string{"--agent-id", "Opus", "--registry-url", url}, cmd...), []string{"--agent-id", `"Opus"`}},
		{"no registry", nil, append([]string{"--agent-id", "opus"}, cmd...), []string{"--registry-url", "MCP_MESH_REGISTRY_URL"}},
		{"plain HTTP registry", nil, append([]string{"--agent-id", "opus", "--registry-url", "http://" + m.agentAddr}, cmd...), []string{"https://host:port"}},
		{"unknown provider", nil, append([]string{"--agent-id", "opus", "--registry-url", url, "--provider", "ldap"}, cmd...), []string{`"ldap"`, "file, vault, spire, enroll"}},
		{"vault without its settings", nil, append([]string{"--agent-id", "opus", "--registry-url", url, "--provider", "vault"}, cmd...), []string{"MCP_MESH_VAULT_ADDR"}},
		{"no files", nil, append([]string{"--agent-id", "opus", "--registry-url", url}, cmd...), []string{"MCP_MESH_TLS_CERT", "MCP_MESH_TLS_KEY"}},
		{"another agent's certificate", func(t *testing.T) { m.useFiles(t, "other", "ct111") },
			append([]string{"--agent-id", "opus", "--registry-url", url}, cmd...), []string{"rejected", "identity_mismatch"}},
		{"a SPIFFE ID for the file provider", func(t *testing.T) { m.useFiles(t, "opus", "ct111") },
			append([]string{"--agent-id", "opus", "--registry-url", url, "--spiffe-id", "spiffe://mcp-mesh.local/agent/opus"}, cmd...), []string{"provider file", "spire provider only"}},
		{"registration and endpoint flags", nil, append([]string{"--agent-id", "opus", "--registry-url", url, "--registration", "opus.json", "--http-port", "9443"}, cmd...), []string{"put http_host and http_port in it"}},
		{"unreadable registration", nil, append([]string{"--agent-id", "opus", "--registry-url", url, "--registration", filepath.Join(t.TempDir(), "none.json")}, cmd...), []string{"--registration", "none.json"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			r := startSidecar(t, tt.args...).result(t)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1\n%s", r.code, r.output())
			}
			requireContains(t, "stderr", r.stderr, tt.wants...)
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran")
			}
		})
	}
}
