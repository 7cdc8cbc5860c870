//go:build cgo

package meshtrust_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/hsmtest"
	"github.com/meshtrust/meshtrust/internal/openssltest"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestPKCS11ReplicasValuesProcess: the pkcs11 values combination (three
// replicas, PostgreSQL, the CA's keys on a PKCS#11 token, no volume) runs
// as rendered: three meshd processes built from the tree, with the
// StatefulSet's arguments and environment (the module, the PIN file and
// the paths a pod has moved to the test's; the token's label as
// rendered) on one SoftHSM2 token and one PostgreSQL. The CA is made once
// with meshctl in the first pod's data directory; the other two start
// with empty ones and take the CA from the database. All three sign
// (openssl verifies what they issue against the root), and an
// intermediate prepared and activated with meshctl becomes the one each
// signs with, none restarted.
func TestPKCS11ReplicasValuesProcess(t *testing.T) {
	openssltest.Bin(t)
	args, env := meshdContainer(t, filepath.Join("ci", "pkcs11-values.yaml"))
	flags := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		flags[k] = v
	}
	tok := hsmtest.New(t, flags["--pkcs11-token"], ca.CloseTokens)
	pinFile := tok.PINFile(t)
	pg := pgtest.Start(t)
	dsn := pg.Schema(t)
	meshd := buildMeshd(t)
	meshctl := buildCommand(t, "meshctl")

	// The operator, in the first pod (kubectl exec meshd-0 -- meshctl …).
	data0 := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(data0, 0o700); err != nil {
		t.Fatal(err)
	}
	hsm := tok.Flags(pinFile)
	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(meshctl, append([]string{"--data-dir", data0}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "DATABASE_URL=" + dsn, "SOFTHSM2_CONF=" + tok.Conf}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ctl(append([]string{"ca", "init"}, hsm...)...)
	ctl(append([]string{"ca", "issue-intermediate"}, hsm...)...)
	ctl(append([]string{"ca", "issue-node", "meshd", "DNS:localhost", "IP:127.0.0.1"}, hsm...)...)
	ctl(append([]string{"ca", "issue-node", "ct120"}, hsm...)...)
	cfg0 := ca.Config{RootDir: filepath.Join(data0, "root"), Dir: filepath.Join(data0, "ca")}
	rootPath := cfg0.RootCertPath()
	root := readPEMCert(t, rootPath)
	first := readPEMCert(t, filepath.Join(cfg0.Dir, "intermediate", "int.crt"))

	// meshd's serving certificate (the Secret meshd-serving-cert).
	tlsDir := t.TempDir()
	for from, to := range map[string]string{cfg0.IssuedCertPath("meshd.mesh"): "tls.crt", cfg0.IssuedKeyPath("meshd.mesh"): "tls.key"} {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, to), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	setup := podSetup{dsn: dsn, tlsDir: tlsDir,
		paths: map[string]string{"--pkcs11-module": tok.Module, "--pkcs11-pin-file": pinFile},
		env:   []string{"SOFTHSM2_CONF=" + tok.Conf}}
	var pods []*pod
	for i, name := range []string{"meshd-0", "meshd-1", "meshd-2"} {
		s := setup
		if i == 0 {
			s.data = data0
		}
		pods = append(pods, startPodWith(t, meshd, name, args, env, s))
	}
	for _, p := range pods[1:] {
		// The store vouched for the root it wrote; no key reached a disk.
		if got := readPEMCert(t, filepath.Join(p.data, "ca", "intermediate", "root.crt")); !got.Equal(root) {
			t.Errorf("%s's CA directory has the root %q, want the CA's", p.name, got.Subject)
		}
		filepath.WalkDir(p.data, func(path string, d os.DirEntry, err error) error {
			if err == nil && strings.Contains(path, "intermediate") && filepath.Ext(path) == ".key" {
				t.Errorf("%s: a CA key file %s", p.name, path)
			}
			return err
		})
	}

	nodeCert, err := tls.LoadX509KeyPair(cfg0.IssuedCertPath("ct120.mesh"), cfg0.IssuedKeyPath("ct120.mesh"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	node := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{nodeCert}, ServerName: "localhost"}}}

	// signedBy asks p for an agent's certificate and checks, with
	// openssl, that it chains to the root through in.
	signedBy := func(p *pod, agent string, in *x509.Certificate) error {
		is, err := agentCert(t, node, p, agent)
		if err != nil {
			return err
		}
		if len(is.chain) == 0 || !is.chain[0].Equal(in) {
			return fmt.Errorf("%s's certificate from %s is signed by %x, want %q", agent, p.name, is.cert.AuthorityKeyId, in.Subject)
		}
		dir := t.TempDir()
		leaf, chain := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "chain.pem")
		if err := os.WriteFile(leaf, pemfile.EncodeCerts(is.cert), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(chain, pemfile.EncodeCerts(in), 0o600); err != nil {
			return err
		}
		if out, err := openssltest.Verify(t, rootPath, []string{chain}, leaf, "-purpose", "sslclient"); err != nil {
			return fmt.Errorf("openssl verify of %s's certificate from %s: %v\n%s", agent, p.name, err, out)
		}
		return nil
	}

	t.Run("EveryReplicaSigns", func(t *testing.T) {
		for i, p := range pods {
			if err := signedBy(p, fmt.Sprintf("a%d", i), first); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("RotationWithoutRestart", func(t *testing.T) {
		ctl(append([]string{"ca", "rotate-intermediate", "prepare"}, hsm...)...)
		ctl(append([]string{"ca", "rotate-intermediate", "activate"}, hsm...)...)
		next := readPEMCert(t, filepath.Join(cfg0.Dir, "intermediate", "int.crt"))
		if next.Equal(first) {
			t.Fatal("activate left the first intermediate active")
		}
		for i, p := range pods {
			eventually.NoError(t, p.name+" signs with the new intermediate", func() error {
				p.alive(t)
				return signedBy(p, fmt.Sprintf("r%d", i), next)
			})
		}
	})
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := pemfile.ReadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
