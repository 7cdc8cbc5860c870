package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/hsmtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestPKCS11Image assembles the cgo variant from meshd and meshctl built
// with cgo, unpacks its layer into a directory and adds what a pod would
// mount: Debian's SoftHSM2 module with the libraries it needs, its
// configuration and a token. `meshctl ca init` with the PKCS#11 flags,
// run inside it with chroot (nothing of the host's libraries reachable),
// makes the root key on the token: this process then finds it there and
// signs an intermediate with it.
//
// chroot needs root (CI runs as root): without it the test skips, unless
// MESHTRUST_REQUIRE_SOFTHSM is set, as CI sets it; then it fails.
func TestPKCS11Image(t *testing.T) {
	util := hsmtest.Util(t)
	if os.Geteuid() != 0 {
		if os.Getenv(hsmtest.RequireEnv) != "" {
			t.Fatalf("the image's PKCS#11 test runs meshctl with chroot, which needs root, and %s is set", hsmtest.RequireEnv)
		}
		t.Skip("the image's PKCS#11 test runs meshctl with chroot, which needs root")
	}
	// Built with cgo as scripts/image.sh builds the variant's binaries
	// (which also trims paths: left out here, it would rebuild every
	// dependency the other tests' builds cached).
	meshd, meshctl := goBuild(t, "meshd", "../../cmd/meshd", "1"), goBuild(t, "meshctl", "../../cmd/meshctl", "1")
	libs, err := SharedLibs(meshd, meshctl)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(libs, func(l string) bool { return strings.Contains(filepath.Base(l), "ld-linux") }) {
		t.Fatalf("shared libraries %v: no dynamic loader", libs)
	}
	layout := filepath.Join(t.TempDir(), "image")
	if _, err := Write(layout, Options{Meshd: meshd, Meshctl: meshctl, Tag: "test-pkcs11", Arch: "amd64", Libs: libs}); err != nil {
		t.Fatal(err)
	}
	// Without its libraries, a cgo build is refused.
	if _, err := Write(filepath.Join(t.TempDir(), "bad"), Options{Meshd: meshd, Meshctl: meshctl, Tag: "x", Arch: "amd64"}); err == nil || !strings.Contains(err.Error(), "-cgo") {
		t.Errorf("a cgo build assembled without its libraries: %v; want an error naming -cgo", err)
	}

	// The container's root filesystem: the layer, unpacked.
	root := t.TempDir()
	_, headers, files := readLayout(t, layout)
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range headers {
			if !yield(n) {
				return
			}
		}
	})
	for _, name := range names {
		h, p := headers[name], filepath.Join(root, name)
		if h.Typeflag == '5' {
			if err := os.MkdirAll(p, os.FileMode(h.Mode).Perm()); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, files[name], os.FileMode(h.Mode).Perm()); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range libs {
		if _, ok := headers[strings.TrimPrefix(l, "/")]; !ok {
			t.Errorf("the layer lacks %s", l)
		}
	}

	// What the pod mounts: the module and its libraries (the ones the
	// image lacks), its configuration, a token and the PIN.
	modLibs, err := SharedLibs(hsmtest.Module)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range append(modLibs, hsmtest.Module) {
		dst := filepath.Join(root, l)
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		data, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tok := &hsmtest.Token{Module: hsmtest.Module, Label: "meshtrust-ca", PIN: "pin-8f3a61", SOPIN: "so-2c9d04",
		Conf: filepath.Join(t.TempDir(), "softhsm2.conf"), Dir: filepath.Join(root, "softhsm", "tokens")}
	if err := os.MkdirAll(tok.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := func(dir string) []byte {
		return []byte("directories.tokendir = " + dir + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n")
	}
	if err := os.WriteFile(tok.Conf, conf(tok.Dir), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "softhsm", "softhsm2.conf"), conf("/softhsm/tokens"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok.InitToken(t, util, tok.Label)
	if err := os.WriteFile(filepath.Join(root, "pin"), []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(root, "var", "lib", "meshtrust", "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/local/bin/meshctl", "--data-dir", "/var/lib/meshtrust/data", "ca", "init",
		"--pkcs11-module", hsmtest.Module, "--pkcs11-token", tok.Label, "--pkcs11-pin-file", "/pin")
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin", "HOME=/home/nonroot", "SOFTHSM2_CONF=/softhsm/softhsm2.conf"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshctl ca init with PKCS#11 in the image: %v\n%s", err, &out)
	}
	rootDir := filepath.Join(data, "root")
	if _, err := os.Stat(filepath.Join(rootDir, "ca.key")); err == nil {
		t.Fatal("ca init wrote a root key file; want the key on the token")
	}
	if _, err := os.Stat(filepath.Join(rootDir, "ca.pkcs11")); err != nil {
		t.Fatalf("ca init wrote no reference to the key on the token: %v\n%s", err, &out)
	}

	// The key is on the token: this process finds it through the
	// reference and signs an intermediate with it.
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	t.Cleanup(ca.CloseTokens)
	cfg := ca.Config{RootDir: rootDir, Dir: filepath.Join(t.TempDir(), "ca"),
		PKCS11: ca.PKCS11{Module: hsmtest.Module, Token: tok.Label, PIN: tok.PIN}}
	if err := os.Mkdir(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(t.Context(), cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	in, err := ca.IssueIntermediate(t.Context(), cfg, st)
	if err != nil {
		t.Fatalf("an intermediate signed by the root key meshctl made in the image: %v", err)
	}
	rootCert, err := pemfile.ReadCert(filepath.Join(rootDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.CheckSignatureFrom(rootCert); err != nil {
		t.Fatalf("the intermediate is not signed by the root meshctl made in the image: %v", err)
	}
}
