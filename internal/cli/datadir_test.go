package cli_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// TestDataDirImpliesCA: with --data-dir D and no --ca-dir or --root-dir,
// every ca command works on D/ca and D/root, where meshd keeps the CA,
// and never looks in ~/.meshtrust; --ca-dir and MESHTRUST_CA_DIR still win.
func TestDataDirImpliesCA(t *testing.T) {
	noAdminEnv(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("MESHTRUST_ROOT_DIR", "")
	t.Setenv("MESHTRUST_CA_DIR", "")
	data := t.TempDir()
	ctl := func(args ...string) result {
		t.Helper()
		return execute(t, append(args, "--data-dir", data)...)
	}
	mustCtl := func(args ...string) result {
		t.Helper()
		r := ctl(args...)
		if r.code != 0 {
			t.Fatalf("meshctl --data-dir D %s: exit %d\n%s", strings.Join(args, " "), r.code, r.output())
		}
		return r
	}
	mustCtl("ca", "init")
	mustCtl("ca", "issue-intermediate")
	for _, p := range []string{filepath.Join(data, "root", "ca.crt"), filepath.Join(data, "ca", "intermediate", "state.json")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the CA is not in the data dir: %v", err)
		}
	}
	caDir := filepath.Join(data, "ca")
	issued := func(cn string) string { return filepath.Join(caDir, "issued", cn+".crt") }
	mustCtl("ca", "issue-node", "ct1")
	mustCtl("ca", "issue-agent", "opus", "ct1")
	mustCtl("ca", "issue-client", "alice")
	csr := newEnv(t).writeCSR("ct2.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct2.mesh"}})
	mustCtl("ca", "sign", csr, "--profile", "node")
	requireContains(t, "ca verify", mustCtl("ca", "verify", issued("opus@ct1")).stdout, "OK: opus@ct1 is valid")
	requireContains(t, "ca list", mustCtl("ca", "list").stdout, "ct1.mesh", "opus@ct1", "alice@external", "ct2.mesh")
	mustCtl("ca", "crl")
	mustCtl("ca", "audit")
	requireContains(t, "ca audit --verify", mustCtl("ca", "audit", "--verify").stdout, "audit log intact", "checkpoints verified")
	mustCtl("ca", "rotate-intermediate", "prepare")
	mustCtl("ca", "rotate-intermediate", "activate")
	if _, err := os.Stat(filepath.Join(home, ".meshtrust")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("meshctl --data-dir touched ~/.meshtrust: %v", err)
	}

	// The explicit directories win, as they do for meshd.
	other := t.TempDir()
	r := ctl("ca", "list", "--ca-dir", other)
	requireRefused(t, "--data-dir with --ca-dir", r, "no intermediate in "+other)
	t.Setenv("MESHTRUST_CA_DIR", other)
	requireRefused(t, "--data-dir with MESHTRUST_CA_DIR", ctl("ca", "list"), "no intermediate in "+other)
	t.Setenv("MESHTRUST_CA_DIR", "")

	// A data dir without a CA says where meshctl looked and why, and does
	// not talk the operator into a second CA.
	empty := t.TempDir()
	r = execute(t, "ca", "issue-agent", "opus", "ct1", "--data-dir", empty)
	requireRefused(t, "a data dir without a CA", r, filepath.Join(empty, "ca"), "--data-dir "+empty, "--ca-dir")
	if strings.Contains(r.stderr, "ca init") {
		t.Errorf("a data dir without a CA advises creating one:\n%s", r.stderr)
	}
}
