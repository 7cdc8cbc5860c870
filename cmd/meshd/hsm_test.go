//go:build cgo

package main

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/hsmtest"
	"github.com/meshtrust/meshtrust/internal/openssltest"
)

// TestPKCS11Meshd runs the built meshctl and meshd with the CA's keys on a
// SoftHSM2 token: meshctl creates the root and the intermediate there and
// rotates it; meshd (--dev, on that CA) signs its server certificate, a
// node's enrollment and an agent's certificate, re-signs the CRL on a
// revocation and signs audit checkpoints, all with the key on the token;
// openssl verifies the chain and the CRL; no CA key file is written; and
// a wrong PIN or a missing token stops meshd at start with the reason.
func TestPKCS11Meshd(t *testing.T) {
	openssltest.Bin(t)
	tok := hsmtest.New(t, "meshtrust", ca.CloseTokens)
	bin := buildBinaries(t)
	base := t.TempDir()
	data := filepath.Join(base, "data")
	pinFile := tok.PINFile(t)
	hsm := tok.Flags(pinFile)
	meshctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "meshctl"), append([]string{"--data-dir", data}, args...)...)
		cmd.Env = cleanEnv(filepath.Join(base, "home"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if out := meshctl(append([]string{"ca", "init"}, hsm...)...); !strings.Contains(out, "ca.pkcs11") {
		t.Fatalf("ca init does not name the root key's reference:\n%s", out)
	}
	meshctl(append([]string{"ca", "issue-intermediate"}, hsm...)...)
	meshctl(append([]string{"ca", "rotate-intermediate", "prepare"}, hsm...)...)
	meshctl(append([]string{"ca", "rotate-intermediate", "activate"}, hsm...)...)

	r := startReplica(t, bin, "hsm", data, "", append([]string{"--dev", "--checkpoint-interval", "100ms"}, hsm...)...)
	cfg := ca.Config{RootDir: filepath.Join(data, "root"), Dir: filepath.Join(data, "ca")}
	rootPath, chainPath := cfg.RootCertPath(), cfg.ChainPath()

	// meshd's own certificate, signed at start with the token's key.
	openssltest.RequireVerifies(t, rootPath, []string{chainPath}, cfg.IssuedCertPath("meshd.mesh"), "-purpose", "sslserver")

	// A node enrolls and gets an agent certificate: meshd signs both.
	node := enroll.Dir(filepath.Join(base, "node1"))
	meshctl("enroll", "--server", "https://"+r.addr, "--secret-file", filepath.Join(data, "bootstrap.secret"),
		"--node-id", "node1", "--ca-cert", filepath.Join(cfg.Dir, "intermediate", "root.crt"), "--dir", string(node))
	meshctl("agent-cert", "opus", "--dir", string(node))
	openssltest.RequireVerifies(t, rootPath, []string{chainPath}, node.Path("node.crt"), "-purpose", "sslclient")
	agentCert := node.AgentCertPath("opus")
	openssltest.RequireVerifies(t, rootPath, []string{chainPath}, agentCert, "-crl_check", "-CRLfile", cfg.CRLPath())

	// A revocation through meshd's admin socket: the CRL it re-signs
	// with the token's key lists the agent.
	meshctl("ca", "revoke", "opus@node1")
	eventually.True(t, "the CRL meshd re-signs lists the revoked agent", func() bool {
		out, err := openssltest.Verify(t, rootPath, []string{chainPath}, agentCert, "-crl_check", "-CRLfile", cfg.CRLPath())
		return err != nil && strings.Contains(out, "revoked")
	})
	openssltest.RequireRevoked(t, rootPath, []string{chainPath}, agentCert, cfg.CRLPath())

	// Audit checkpoints, signed by the intermediate on the token.
	eventually.True(t, "meshd signs an audit checkpoint", func() bool {
		fi, err := os.Stat(filepath.Join(cfg.Dir, "audit.checkpoints"))
		return err == nil && fi.Size() > 0
	})
	if out := meshctl("ca", "audit", "--verify"); !strings.Contains(out, "checkpoints verified") {
		t.Fatalf("ca audit --verify:\n%s", out)
	}

	// The CA's own keys live in the root directory and intermediate/
	// (issued/ holds leaves' keys, session-keys/ meshd's token keys).
	for _, dir := range []string{cfg.RootDir, filepath.Join(cfg.Dir, "intermediate")} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && filepath.Ext(p) == ".key" {
				t.Errorf("a CA key file exists: %s", p)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, ref := range []string{"root/ca.pkcs11", "ca/intermediate/int.pkcs11"} {
		if _, err := os.Stat(filepath.Join(data, ref)); err != nil {
			t.Errorf("no key reference %s: %v", ref, err)
		}
	}
	r.stop(t)

	// Start-up errors: meshd exits with the reason, before serving.
	for _, tc := range append(tok.Misconfigs(t, pinFile),
		hsmtest.Misconfig{Name: "module not loadable", Flags: []string{"--pkcs11-module", pinFile, "--pkcs11-token", tok.Label, "--pkcs11-pin-file", pinFile}, Want: "could not be loaded"},
		hsmtest.Misconfig{Name: "no token configured", Want: "is a key on PKCS#11 token"},
	) {
		t.Run(tc.Name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "meshd"), append([]string{"--data-dir", data, "--listen", freeAddr(t)}, tc.Flags...)...)
			cmd.Env = cleanEnv(filepath.Join(base, "home"))
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("meshd kept running with %s:\n%s", tc.Name, out)
			}
			if err == nil || !strings.Contains(string(out), tc.Want) {
				t.Fatalf("meshd with %s: %v; want an exit saying %q:\n%s", tc.Name, err, tc.Want, out)
			}
			if strings.Contains(string(out), tok.PIN) {
				t.Fatalf("meshd printed the PIN:\n%s", out)
			}
		})
	}
}
