package credentials_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/pemfile"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// requireFiles checks the files hold c, with private modes.
func requireFiles(t *testing.T, f *credentials.Files, c *credentials.Credentials) {
	t.Helper()
	if m := mode(t, f.Dir); !m.IsDir() || m.Perm() != 0o700 {
		t.Errorf("%s has mode %v, want a 0700 directory", f.Dir, m)
	}
	for _, p := range []string{f.CertFile, f.KeyFile, f.CAFile} {
		if filepath.Dir(p) != f.Dir {
			t.Errorf("%s is outside %s", p, f.Dir)
		}
		if m := mode(t, p); !m.IsRegular() || m.Perm() != 0o600 {
			t.Errorf("%s has mode %v, want a 0600 file", p, m)
		}
	}
	data, err := os.ReadFile(f.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := pemfile.ParseCerts(data)
	if err != nil || len(chain) != len(c.Certificate.Certificate) {
		t.Fatalf("%s: %d certificates (%v), want the chain of %d", f.CertFile, len(chain), err, len(c.Certificate.Certificate))
	}
	for i := range chain {
		if !bytes.Equal(chain[i].Raw, c.Certificate.Certificate[i]) {
			t.Errorf("%s: certificate %d is not the source's", f.CertFile, i)
		}
	}
	key, err := pemfile.ReadKey(f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.Certificate.Leaf.PublicKey) {
		t.Errorf("%s is not the key of the certificate", f.KeyFile)
	}
	ca, err := os.ReadFile(f.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca, pemfile.EncodeCerts(append(slices.Clone(c.Roots), c.OperatorRoots...)...)) {
		t.Errorf("%s does not hold the roots, then the operator's", f.CAFile)
	}
}

func requireGone(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s is still there (%v)", dir, err)
	}
}

func TestMaterialize(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	inter := root.Intermediate(t, "inter")
	first := creds(t, inter, "opus@ct1", root)
	h := mustHolder(t, first)
	base := t.TempDir()
	var logs bytes.Buffer // written by Materialize's goroutine, read once it is done
	f, err := credentials.Materialize(t.Context(), h, "opus", credentials.MaterializeIn(base), credentials.MaterializeLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("meshtrust-opus-%d-", os.Getpid()); filepath.Dir(f.Dir) != base || !strings.HasPrefix(filepath.Base(f.Dir), want) {
		t.Errorf("directory %s, want %s/%s*", f.Dir, base, want)
	}
	requireFiles(t, f, first)

	// The environment names the files; it carries no PEM.
	env := strings.Join(f.Env(), "\n")
	for _, want := range []string{"MCP_MESH_TLS_CERT=" + f.CertFile, "MCP_MESH_TLS_KEY=" + f.KeyFile, "MCP_MESH_TLS_CA=" + f.CAFile} {
		if !strings.Contains(env, want) {
			t.Errorf("Env() lacks %s", want)
		}
	}
	if strings.Contains(env, "-----BEGIN") {
		t.Error("Env() carries PEM")
	}

	// A rotation (new key, new roots, the operator's added CA) is
	// written out.
	rotated := creds(t, root, "opus@ct1", root, pkitest.NewRoot(t, "root 2"))
	rotated.OperatorRoots = []*x509.Certificate{pkitest.NewRoot(t, "operator's CA").Root}
	rewritten := f.Rewritten()
	set(t, h, rotated)
	select {
	case <-rewritten:
	case <-time.After(wait):
		t.Fatal("the files were not rewritten after the change")
	}
	requireFiles(t, f, rotated)

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, f.Dir)
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if !strings.Contains(logs.String(), "wrote credential files") {
		t.Errorf("the rewrites were not logged:\n%s", logs.String())
	}
	for _, leak := range []string{"-----BEGIN", "PRIVATE KEY"} {
		if strings.Contains(logs.String(), leak) {
			t.Errorf("the log holds %q", leak)
		}
	}
}

// TestMaterializeRemoved: the directory goes when ctx ends or the source
// is closed, not only at Close.
func TestMaterializeRemoved(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	for _, end := range []string{"ctx", "source closed"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			h := mustHolder(t, creds(t, root, "opus@ct1", root))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			f, err := credentials.Materialize(ctx, h, "opus", credentials.MaterializeIn(t.TempDir()))
			if err != nil {
				t.Fatal(err)
			}
			if end == "ctx" {
				cancel()
			} else {
				h.Close()
			}
			select {
			case <-f.Done():
			case <-time.After(wait):
				t.Fatal("the files were not removed")
			}
			requireGone(t, f.Dir)
		})
	}
}

func TestMaterializeRefuses(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	base := t.TempDir()
	good := mustHolder(t, creds(t, root, "opus@ct1", root))
	for _, tc := range []struct {
		name  string
		src   credentials.Source
		agent string
		msg   string
	}{
		{"a path in the agent id", good, "../opus", "agent id"},
		{"an empty agent id", good, "", "agent id"},
		{"no credentials yet", &credentials.Holder{}, "opus", "no credentials yet"},
		{"base missing", good, "opus", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			if tc.name == "base missing" {
				in = filepath.Join(base, "absent")
			}
			_, err := credentials.Materialize(t.Context(), tc.src, tc.agent, credentials.MaterializeIn(in))
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Materialize = %v, want an error saying %q", err, tc.msg)
			}
		})
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Errorf("refused calls left %d entries in %s", len(entries), base)
	}
}

// TestMaterializeTmpfs: by default the files go to /dev/shm, so the key
// never reaches a disk.
func TestMaterializeTmpfs(t *testing.T) {
	t.Parallel()
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		t.Skip("no /dev/shm here")
	}
	root := pkitest.NewRoot(t, "root")
	f, err := credentials.Materialize(t.Context(), mustHolder(t, creds(t, root, "opus@ct1", root)), "opus")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !strings.HasPrefix(f.Dir, "/dev/shm/meshtrust-opus-") {
		t.Errorf("directory %s, want one in /dev/shm", f.Dir)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, f.Dir)
}

const childEnv = "MESHTRUST_TEST_MATERIALIZE_CHILD"

// TestMaterializeSIGTERM runs the documented shutdown in a child process
// (this test binary again) and sends it SIGTERM: the directory is gone
// when the child has exited.
func TestMaterializeSIGTERM(t *testing.T) {
	if base := os.Getenv(childEnv); base != "" {
		materializeChild(t, base)
		return
	}
	t.Parallel()
	base := t.TempDir()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestMaterializeSIGTERM$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+base)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dirs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "dir="); ok {
				dirs <- d
			}
		}
		close(dirs)
	}()
	var dir string
	select {
	case dir = <-dirs:
	case <-time.After(3 * wait):
		t.Fatal("the child did not report its directory")
	}
	if dir == "" {
		t.Fatalf("the child exited early: %v", cmd.Wait())
	}
	if m := mode(t, filepath.Join(dir, "key.pem")); m.Perm() != 0o600 {
		t.Errorf("the child's key has mode %v", m)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range dirs { // drain until the child closes stdout
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	requireGone(t, dir)
}

// materializeChild is the child's side: the shutdown Materialize
// documents.
func materializeChild(t *testing.T, base string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := pkitest.NewRoot(t, "root")
	f, err := credentials.Materialize(ctx, mustHolder(t, creds(t, root, "opus@ct1", root)), "opus", credentials.MaterializeIn(base))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("dir=%s\n", f.Dir)
	<-ctx.Done()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
