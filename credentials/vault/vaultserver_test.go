package vault_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/logtest"
)

// vaultScript is scripts/vault.sh, from this package's directory.
var vaultScript = filepath.Join("..", "..", "scripts", "vault.sh")

// vaultServer is a real Vault dev server run by scripts/vault.sh, set up
// as MCP Mesh's integration test does: role mesh-agent on pki_int, for
// names under mcp-mesh.local.
type vaultServer struct {
	dir string
	tls bool
	// From the env file scripts/vault.sh writes.
	addr, rootToken, caCert, pkiPath, rootCA string
}

// startVault starts a Vault in a fresh t.TempDir() and stops it at the
// end of the test. It skips the test when Vault has not been built
// (scripts/vault.sh build) unless MESHTRUST_REQUIRE_VAULT is set, as CI
// sets it: there a missing Vault fails the test.
func startVault(t *testing.T, tls bool) *vaultServer {
	t.Helper()
	bin := strings.TrimSpace(run(t, nil, "bash", vaultScript, "path"))
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("MESHTRUST_REQUIRE_VAULT") != "" {
			t.Fatalf("no Vault at %s and MESHTRUST_REQUIRE_VAULT is set: build it with scripts/vault.sh build", bin)
		}
		t.Skipf("no Vault at %s: build it with scripts/vault.sh build (about 15 minutes, once) to run the tests against a real Vault", bin)
	}
	v := &vaultServer{dir: t.TempDir(), tls: tls}
	v.start(t)
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(v.dir, "pid")); err == nil {
			v.stop(t)
		}
	})
	return v
}

// start starts the server (again: on the same address, with the same root
// token, and a new PKI setup, its storage being in memory).
func (v *vaultServer) start(t *testing.T) {
	t.Helper()
	// Should the test binary die (a timeout), the server goes with it.
	env := []string{fmt.Sprintf("VAULT_SH_PARENT=%d", os.Getpid())}
	if v.tls {
		env = append(env, "VAULT_SH_TLS=1")
	}
	out := run(t, env, "bash", vaultScript, "start", v.dir)
	vars := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, val, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = val
		}
	}
	v.addr, v.rootToken, v.caCert = vars["VAULT_ADDR"], vars["VAULT_TOKEN"], vars["VAULT_CACERT"]
	v.pkiPath, v.rootCA = vars["VAULT_PKI_PATH"], vars["VAULT_ROOT_CA"]
	if v.addr == "" || v.rootToken == "" || v.pkiPath == "" {
		t.Fatalf("scripts/vault.sh start printed no address, token or PKI path:\n%s", out)
	}
}

func (v *vaultServer) stop(t *testing.T) {
	t.Helper()
	run(t, nil, "bash", vaultScript, "stop", v.dir)
}

// cli runs the vault CLI as root against the server and returns its
// standard output.
func (v *vaultServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	bin := strings.TrimSpace(run(t, nil, "bash", vaultScript, "path"))
	env := []string{"HOME=" + v.dir, "VAULT_ADDR=" + v.addr, "VAULT_TOKEN=" + v.rootToken, "VAULT_CACERT=" + v.caCert}
	return strings.TrimSpace(run(t, env, bin, args...))
}

// run runs a command with env added to the test's environment and returns
// its standard output; it fails the test, with its standard error, if
// the command fails.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// newLog returns a logger whose output, at the end of the test, must hold
// none of secrets, no PEM and no key; the test logs it when it fails.
func newLog(t *testing.T, secrets ...string) (*slog.Logger, *logtest.Buffer) {
	t.Helper()
	b := &logtest.Buffer{}
	t.Cleanup(func() {
		out := b.String()
		noSecrets(t, "the log", out, secrets...)
		if t.Failed() {
			t.Logf("source log:\n%s", out)
		}
	})
	return b.Logger(), b
}

// noSecrets fails the test if text (named what) holds one of secrets or
// any PEM.
func noSecrets(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s holds a token", what)
		}
	}
	for _, marker := range []string{"-----BEGIN", "PRIVATE KEY", "MII"} {
		if strings.Contains(text, marker) {
			t.Errorf("%s holds PEM (%q)", what, marker)
		}
	}
}
