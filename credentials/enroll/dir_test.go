package enroll_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/pemfile"
)

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestDirWriteLoad(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	key, b := enrolled(t, s, c)
	akey, ab := opusCert(t, c, b.TLSCertificate(key))

	dir := enroll.Dir(filepath.Join(t.TempDir(), "etc", "meshtrust"))
	if dir.HasNode() {
		t.Fatal("empty dir has a node")
	}
	if err := dir.WriteNode(key, b); err != nil {
		t.Fatal(err)
	}
	if err := dir.WriteAgent("opus", akey, ab); err != nil {
		t.Fatal(err)
	}
	if err := dir.WriteServer(s.URL); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{
		string(dir):                          0o700,
		dir.Path("agents"):                   0o700,
		dir.Path("node.key"):                 0o600,
		dir.Path("node.crt"):                 0o644,
		dir.Path("ca.crt"):                   0o644,
		dir.AgentKeyPath("opus"):             0o600,
		dir.AgentCertPath("opus"):            0o644,
		filepath.Dir(string(dir)):            0o700, // created parents too
		filepath.Join(string(dir), "server"): 0o644,
	} {
		if got := mode(t, p); got != want {
			t.Errorf("%s: mode %04o, want %04o", p, got, want)
		}
	}
	if !dir.HasNode() || !dir.HasAgent("opus") || dir.HasAgent("scout") {
		t.Error("HasNode/HasAgent disagree with the files")
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(string(dir))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left behind %s", e.Name())
		}
	}

	n, err := dir.Load()
	if err != nil {
		t.Fatal(err)
	}
	if n.ID != "ct112" || n.Certificate.Leaf.SerialNumber.Cmp(b.Certificate.SerialNumber) != 0 {
		t.Errorf("loaded node %s serial %x", n.ID, n.Certificate.Leaf.SerialNumber)
	}
	if len(n.Certificate.Certificate) != 2 {
		t.Errorf("node.crt holds %d certificates, want leaf + intermediate", len(n.Certificate.Certificate))
	}
	if len(n.Chain) != 2 || !n.Chain[1].Equal(s.Root) {
		t.Errorf("ca.crt = %v", n.Chain)
	}
	if len(n.Agents) != 1 || n.Agents[0].ID != "opus" || n.Agents[0].Certificate.Leaf.Subject.CommonName != "opus@ct112" {
		t.Errorf("agents = %+v", n.Agents)
	}
	if _, err := n.Certificate.Leaf.Verify(x509Opts(n.Roots(), n.Chain)); err != nil {
		t.Errorf("node certificate does not verify against the loaded roots: %v", err)
	}
	if got, err := dir.Server(); err != nil || got != s.URL {
		t.Errorf("server = %q, %v", got, err)
	}
}

func TestDirRefuses(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	key, b := enrolled(t, s, c)

	t.Run("key readable by others", func(t *testing.T) {
		dir := enroll.Dir(t.TempDir())
		if err := dir.WriteNode(key, b); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir.Path("node.key"), 0o644)
		if _, err := dir.Load(); !errors.Is(err, pemfile.ErrPermissions) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("Load = %v, want ErrPermissions saying chmod 600", err)
		}
	})
	t.Run("certificate of another key", func(t *testing.T) {
		dir := enroll.Dir(t.TempDir())
		if err := dir.WriteNode(key, b); err != nil {
			t.Fatal(err)
		}
		other, _ := pemfile.MarshalKey(pkitest.NewKey(t))
		os.WriteFile(dir.Path("node.key"), other, 0o600)
		if _, err := dir.Load(); err == nil || !strings.Contains(err.Error(), "is not the certificate of") {
			t.Errorf("Load = %v, want a key mismatch", err)
		}
	})
	t.Run("write refuses a certificate of another key", func(t *testing.T) {
		dir := enroll.Dir(t.TempDir())
		if err := dir.WriteNode(pkitest.NewKey(t), b); err == nil {
			t.Error("wrote a certificate beside a key it is not for")
		}
		if dir.HasNode() {
			t.Error("a refused write left files")
		}
	})
	t.Run("directory writable by others", func(t *testing.T) {
		dir := enroll.Dir(t.TempDir())
		os.Chmod(string(dir), 0o777)
		if err := dir.WriteNode(key, b); !errors.Is(err, pemfile.ErrPermissions) || !strings.Contains(err.Error(), "chmod 700") {
			t.Errorf("WriteNode = %v, want ErrPermissions saying chmod 700", err)
		}
	})
	t.Run("not enrolled", func(t *testing.T) {
		dir := enroll.Dir(t.TempDir())
		if _, err := dir.Load(); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "meshctl enroll") {
			t.Errorf("Load = %v, want fs.ErrNotExist and advice to enroll", err)
		}
	})
	t.Run("agent id", func(t *testing.T) {
		dir := enroll.Dir(t.TempDir())
		if err := dir.WriteAgent("../evil", key, b); err == nil {
			t.Error("wrote an agent named ../evil")
		}
	})
}
