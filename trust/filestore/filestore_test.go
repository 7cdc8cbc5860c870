package filestore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/filestore"
)

func open(t *testing.T, dir string, opts ...filestore.Option) (*filestore.Backend, *logtest.Buffer) {
	t.Helper()
	logs := &logtest.Buffer{}
	log := logs.Logger()
	s, err := filestore.New(t.Context(), dir, append([]filestore.Option{filestore.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, logs
}

// write replaces path atomically: a temporary file in the same directory,
// renamed into place, as kubelet and cert-manager do.
func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}

// admits reports nil when s admits leaf as a peer of entity.
func admits(t *testing.T, b trust.Backend, leaf *x509.Certificate, entity string) func() error {
	return func() error {
		p, err := b.Verify(t.Context(), []*x509.Certificate{leaf}, time.Now())
		if err != nil {
			return err
		}
		if p.Backend != "filestore" || p.Entity != entity {
			return fmt.Errorf("admitted by backend %q as entity %q, want %q %q", p.Backend, p.Entity, "filestore", entity)
		}
		return nil
	}
}

// refuses reports nil when s does not know leaf's authority.
func refuses(t *testing.T, b trust.Backend, leaf *x509.Certificate) func() error {
	return func() error {
		p, err := b.Verify(t.Context(), []*x509.Certificate{leaf}, time.Now())
		if errors.Is(err, trust.ErrUnknownAuthority) {
			return nil
		}
		if err == nil {
			return fmt.Errorf("admitted as entity %q", p.Entity)
		}
		return fmt.Errorf("refused for another reason: %v", err)
	}
}

func TestNewNeedsADirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	write(t, file, []byte("x"))
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "does not exist"},
		{file, "is not a directory"},
	} {
		s, err := filestore.New(t.Context(), tc.path)
		if err == nil {
			s.Close()
			t.Fatalf("New(%s) succeeded", tc.path)
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "MCP_MESH_TRUST_DIR") || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("New(%s) = %v; want it to say %q, name the path and MCP_MESH_TRUST_DIR", tc.path, err, tc.want)
		}
	}
}

func TestInitialLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	own := pkitest.NewRoot(t, "mesh root")
	p1, p2a, p2b := pkitest.NewRoot(t, "partner root"), pkitest.NewRoot(t, "acme old"), pkitest.NewRoot(t, "acme new")
	write(t, filepath.Join(dir, "mesh.pem"), own.PEM())
	write(t, filepath.Join(dir, "garbage.pem"), []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"))
	write(t, filepath.Join(dir, "empty.pem"), nil)
	write(t, filepath.Join(dir, "leaf.pem"), pkitest.CertPEM(own.Leaf(t, "stray leaf")))
	write(t, filepath.Join(dir, "notes.txt"), []byte("not a pem file"))
	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), p1.PEM())
	// A bundle with text around the blocks, as `openssl x509 -text` writes.
	write(t, filepath.Join(dir, "entities", "acme.pem"), slices.Concat([]byte("subject=CN = acme old\n"), p2a.PEM(), []byte("\n# next\n"), p2b.PEM()))
	write(t, filepath.Join(dir, "entities", "Bad_Name.pem"), pkitest.NewRoot(t, "bad name").PEM())
	if err := os.Mkdir(filepath.Join(dir, "entities", "nested.pem"), 0o755); err != nil {
		t.Fatal(err)
	}

	s, logs := open(t, dir)

	if got, want := s.Entities(), []string{"acme", "partner-corp"}; !slices.Equal(got, want) {
		t.Errorf("Entities = %q, want %q", got, want)
	}
	if got := s.Certificates(""); len(got) != 1 || !got[0].Equal(own.Cert) {
		t.Errorf("mesh CAs = %d certificates, want the mesh root alone", len(got))
	}
	if got := s.Certificates("acme"); len(got) != 2 {
		t.Errorf("acme bundle gave %d CAs, want 2", len(got))
	}
	for _, tc := range []struct {
		leaf   *x509.Certificate
		entity string
	}{
		{own.Leaf(t, "opus@ct111"), ""},
		{p1.Leaf(t, "scout"), "partner-corp"},
		{p2a.Leaf(t, "scout"), "acme"},
		{p2b.Leaf(t, "scout"), "acme"},
	} {
		if err := admits(t, s, tc.leaf, tc.entity)(); err != nil {
			t.Errorf("leaf of entity %q: %v", tc.entity, err)
		}
	}
	if s.Name() != "filestore" {
		t.Errorf("Name = %q", s.Name())
	}

	out := logs.String()
	for _, want := range []string{
		"garbage.pem", "does not parse",
		"empty.pem", "no PEM data",
		"leaf.pem", "not a CA certificate",
		"Bad_Name.pem", "not a valid entity id",
		"nested.pem", "not a regular file",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "notes.txt") {
		t.Errorf("log mentions a file that is not *.pem:\n%s", out)
	}
}

func TestHotAddAndRemoveEntity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() // no entities/ yet: the Backend must start watching it when it appears
	s, _ := open(t, dir)
	pca := pkitest.NewRoot(t, "partner root")
	leaf := pca.Leaf(t, "scout")
	if err := refuses(t, s, leaf)(); err != nil {
		t.Fatal(err)
	}

	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), pca.PEM())
	eventually.NoError(t, "admit after the entity file appears", admits(t, s, leaf, "partner-corp"))

	// A second entity in the directory that appeared after the start.
	other := pkitest.NewRoot(t, "other root")
	write(t, filepath.Join(dir, "entities", "other.pem"), other.PEM())
	eventually.NoError(t, "admit the second entity", admits(t, s, other.Leaf(t, "x"), "other"))

	if err := os.Remove(filepath.Join(dir, "entities", "partner-corp.pem")); err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, "refuse after the entity file is deleted", refuses(t, s, leaf))
	if got, want := s.Entities(), []string{"other"}; !slices.Equal(got, want) {
		t.Errorf("Entities = %q, want %q", got, want)
	}
}

func TestHotAddMeshCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir)
	own := pkitest.NewRoot(t, "mesh root 2")
	write(t, filepath.Join(dir, "mesh-2.pem"), own.PEM())
	eventually.NoError(t, "admit a leaf of the new mesh CA", admits(t, s, own.Leaf(t, "opus@ct111"), ""))
}

func TestReplaceByRename(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old, next := pkitest.NewRoot(t, "partner old"), pkitest.NewRoot(t, "partner new")
	path := filepath.Join(dir, "entities", "partner-corp.pem")
	write(t, path, old.PEM())
	s, _ := open(t, dir)
	oldLeaf, nextLeaf := old.Leaf(t, "scout"), next.Leaf(t, "scout")
	if err := admits(t, s, oldLeaf, "partner-corp")(); err != nil {
		t.Fatal(err)
	}

	write(t, path, next.PEM())
	eventually.NoError(t, "admit a leaf of the new CA", admits(t, s, nextLeaf, "partner-corp"))
	eventually.NoError(t, "refuse a leaf of the replaced CA", refuses(t, s, oldLeaf))
}

// A file that stops parsing (written in place and read half-written, or
// damaged) keeps the CAs of its last good version, with one warning per
// bad version and no change notification; the next good version replaces
// them, and deleting the file removes them.
func TestDamagedFileKeepsItsLastGoodVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, file, entity string
	}{
		{name: "entity file", file: filepath.Join("entities", "acme.pem"), entity: "acme"},
		{name: "mesh CA file", file: "mesh.pem", entity: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, tc.file)
			a1, a2 := pkitest.NewRoot(t, "acme root"), pkitest.NewRoot(t, "acme issuing")
			good := slices.Concat(a1.PEM(), a2.PEM())
			other := pkitest.NewRoot(t, "other root")
			write(t, filepath.Join(dir, "entities", "other.pem"), other.PEM())
			write(t, path, good)
			// The watcher waits an hour: each step below is one Reload.
			s, logs := open(t, dir, filestore.WithDebounce(time.Hour))
			changes := 0
			s.OnChange(func() { changes++ })
			reload := func() {
				t.Helper()
				if err := s.Reload(); err != nil {
					t.Fatal(err)
				}
			}
			holds := func(step string, want ...*pkitest.CA) {
				t.Helper()
				got := s.Certificates(tc.entity)
				if len(got) != len(want) {
					t.Fatalf("%s: %d CAs for %q, want %d", step, len(got), tc.entity, len(want))
				}
				for i, ca := range want {
					if !got[i].Equal(ca.Cert) {
						t.Errorf("%s: CA %d is %q, want %q", step, i, got[i].Subject.CommonName, ca.Cert.Subject.CommonName)
					}
					if err := admits(t, s, ca.Leaf(t, "scout"), tc.entity)(); err != nil {
						t.Errorf("%s: leaf of %q: %v", step, ca.Cert.Subject.CommonName, err)
					}
				}
				if err := admits(t, s, other.Leaf(t, "scout"), "other")(); err != nil {
					t.Errorf("%s: the other entity: %v", step, err)
				}
			}
			warnings := func() int {
				n := 0
				for _, line := range strings.Split(logs.String(), "\n") {
					if strings.Contains(line, "level=WARN") && strings.Contains(line, "keeping its last good version") && strings.Contains(line, path) {
						n++
					}
				}
				return n
			}
			holds("loaded", a1, a2)

			// Written in place, read half-written: cut in its second block.
			if err := os.WriteFile(path, good[:len(a1.PEM())+100], 0o644); err != nil {
				t.Fatal(err)
			}
			reload()
			reload()
			holds("half-written", a1, a2)
			if n := warnings(); n != 1 {
				t.Errorf("%d warnings after two reloads of one bad version, want 1:\n%s", n, logs)
			}
			if !strings.Contains(logs.String(), "block 2 is incomplete or damaged") {
				t.Errorf("the warning does not say what is wrong:\n%s", logs)
			}

			// Another bad version: garbage.
			if err := os.WriteFile(path, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			reload()
			holds("garbage", a1, a2)
			if n := warnings(); n != 2 {
				t.Errorf("%d warnings after a second bad version, want 2:\n%s", n, logs)
			}
			if changes != 0 {
				t.Errorf("%d change notifications while the file was bad, want none", changes)
			}

			// Fixed, with another CA: it replaces the last good version.
			b := pkitest.NewRoot(t, "acme next root")
			if err := os.WriteFile(path, b.PEM(), 0o644); err != nil {
				t.Fatal(err)
			}
			reload()
			holds("fixed", b)
			if err := refuses(t, s, a1.Leaf(t, "scout"))(); err != nil {
				t.Errorf("leaf of the replaced CA: %v", err)
			}
			if changes != 1 {
				t.Errorf("%d change notifications after the fix, want 1", changes)
			}

			// Bad again, then deleted: a deletion is a removal.
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			reload()
			holds("emptied", b)
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			reload()
			holds("deleted")
			if err := refuses(t, s, b.Leaf(t, "scout"))(); err != nil {
				t.Errorf("after the file was deleted: %v", err)
			}
			if changes != 2 {
				t.Errorf("%d change notifications after the deletion, want 2", changes)
			}
		})
	}
}

// The same, as the watcher sees it: a file rewritten in place.
func TestDamagedFileKeepsItsCAsWhileWatched(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "entities", "acme.pem")
	old, next := pkitest.NewRoot(t, "acme root"), pkitest.NewRoot(t, "acme next root")
	write(t, path, old.PEM())
	s, logs := open(t, dir)
	oldLeaf := old.Leaf(t, "scout")
	if err := os.WriteFile(path, old.PEM()[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, "warn about the damaged file", func() error {
		if !strings.Contains(logs.String(), "keeping its last good version") {
			return errors.New("no warning yet")
		}
		return nil
	})
	if err := admits(t, s, oldLeaf, "acme")(); err != nil {
		t.Errorf("while the file is damaged: %v", err)
	}
	write(t, path, next.PEM())
	eventually.NoError(t, "admit a leaf of the fixed file", admits(t, s, next.Leaf(t, "scout"), "acme"))
	eventually.NoError(t, "refuse a leaf of the version it replaced", refuses(t, s, oldLeaf))
}

// A file that never parsed is skipped, and warned about once per version.
func TestDamagedNewFileIsSkipped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "entities", "acme.pem")
	write(t, path, []byte("-----BEGIN CERTIFICATE-----\nAAAA"))
	s, logs := open(t, dir, filestore.WithDebounce(time.Hour))
	for range 2 {
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Entities(); len(got) != 0 {
		t.Errorf("Entities = %q, want none", got)
	}
	if n := strings.Count(logs.String(), "skipping trust file"); n != 1 {
		t.Errorf("%d warnings for one bad version, want 1:\n%s", n, logs)
	}
}

func TestEntityIsTheFileName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The partner's CA calls itself acme-corp; it is registered as partner-corp.
	ca := pkitest.NewRoot(t, "acme-corp", pkitest.Subject("acme-corp", "acme-corp"))
	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), ca.PEM())
	s, _ := open(t, dir)
	if err := admits(t, s, ca.Leaf(t, "scout", pkitest.Subject("acme-corp", "acme-corp")), "partner-corp")(); err != nil {
		t.Fatal(err)
	}
	if got := s.Entities(); !slices.Equal(got, []string{"partner-corp"}) {
		t.Errorf("Entities = %q, want [partner-corp]", got)
	}
}

// One CA must speak for one entity: a copy of it under a second name is
// skipped, the mesh's own directory first, then entities by name.
func TestDuplicateCAIsLoadedOnce(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	shared, entityOnly := pkitest.NewRoot(t, "shared"), pkitest.NewRoot(t, "entity only")
	write(t, filepath.Join(dir, "mesh.pem"), shared.PEM())
	write(t, filepath.Join(dir, "entities", "alpha.pem"), slices.Concat(shared.PEM(), entityOnly.PEM()))
	write(t, filepath.Join(dir, "entities", "beta.pem"), shared.PEM())
	s, logs := open(t, dir)
	if err := admits(t, s, shared.Leaf(t, "x"), "")(); err != nil {
		t.Error(err)
	}
	if err := admits(t, s, entityOnly.Leaf(t, "x"), "alpha")(); err != nil {
		t.Error(err)
	}
	if got := s.Entities(); !slices.Equal(got, []string{"alpha"}) {
		t.Errorf("Entities = %q, want [alpha] (beta holds nothing new)", got)
	}
	if !strings.Contains(logs.String(), "already loaded from another file") {
		t.Errorf("no warning about the duplicate:\n%s", logs)
	}
}

// A Chain over the store must learn of a reload at once: its clock never
// moves, so a refusal it cached would otherwise stand forever.
func TestChainInvalidatedOnReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir)
	frozen := time.Now()
	c := trust.NewChain(nil, []trust.Backend{s}, trust.WithClock(func() time.Time { return frozen }))
	pca := pkitest.NewRoot(t, "partner root")
	leaf := pca.Leaf(t, "scout")
	if _, err := c.Verify(t.Context(), []*x509.Certificate{leaf}); !errors.Is(err, trust.ErrUnknownAuthority) {
		t.Fatalf("before the entity file: %v, want ErrUnknownAuthority", err)
	}
	if _, err := c.Verify(t.Context(), []*x509.Certificate{leaf}); !errors.Is(err, trust.ErrUnknownAuthority) {
		t.Fatalf("cached: %v", err)
	}
	if hits, _ := c.CacheStats(); hits != 1 {
		t.Fatalf("the refusal was not cached (%d hits): the test would prove nothing", hits)
	}
	gen := c.Generation()

	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), pca.PEM())
	eventually.NoError(t, "the chain admits after the reload", func() error {
		p, err := c.Verify(t.Context(), []*x509.Certificate{leaf})
		if err != nil {
			return err
		}
		if p.Backend != "filestore" || p.Entity != "partner-corp" {
			return fmt.Errorf("admitted by %q as %q", p.Backend, p.Entity)
		}
		return nil
	})
	if c.Generation() == gen {
		t.Error("Generation did not move")
	}
}

func TestReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The watcher waits an hour: only Reload can pick the change up in time.
	s, _ := open(t, dir, filestore.WithDebounce(time.Hour))
	changes := make(chan struct{}, 10)
	s.OnChange(func() { changes <- struct{}{} })
	pca := pkitest.NewRoot(t, "partner root")
	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), pca.PEM())
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := admits(t, s, pca.Leaf(t, "scout"), "partner-corp")(); err != nil {
		t.Fatal(err)
	}
	// Reloading what is already loaded changes nothing and tells no one.
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := len(changes); n != 1 {
		t.Errorf("%d change notifications, want 1", n)
	}

	// A directory that disappears keeps the CAs loaded before.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Reload of a removed dir = %v, want an error saying it does not exist", err)
	}
	if err := admits(t, s, pca.Leaf(t, "scout"), "partner-corp")(); err != nil {
		t.Errorf("after the dir vanished: %v", err)
	}
}

// Kubernetes mounts a ConfigMap or Secret as symlinks into a timestamped
// directory and swaps a "..data" symlink to update every file at once.
func TestKubernetesVolumeSwap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1, v2 := pkitest.NewRoot(t, "partner v1"), pkitest.NewRoot(t, "partner v2")
	own := pkitest.NewRoot(t, "mesh root")
	publish := func(version string, partner *pkitest.CA) {
		write(t, filepath.Join(dir, version, "mesh.pem"), own.PEM())
		write(t, filepath.Join(dir, version, "entities", "partner-corp.pem"), partner.PEM())
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish("..v1", v1)
	for _, name := range []string{"mesh.pem", "entities"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := open(t, dir)
	if err := admits(t, s, v1.Leaf(t, "scout"), "partner-corp")(); err != nil {
		t.Fatal(err)
	}

	publish("..v2", v2)
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, "admit a leaf of v2", admits(t, s, v2.Leaf(t, "scout"), "partner-corp"))
	eventually.NoError(t, "refuse a leaf of v1", refuses(t, s, v1.Leaf(t, "scout")))
	if err := admits(t, s, own.Leaf(t, "opus@ct111"), "")(); err != nil {
		t.Errorf("mesh CA after the swap: %v", err)
	}
}

// A private key put in the trust directory by mistake is skipped, and its
// bytes never reach a log line.
func TestPrivateKeyNeverLogged(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	ca := pkitest.NewRoot(t, "partner root")
	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), slices.Concat(ca.PEM(), keyPEM))
	write(t, filepath.Join(dir, "key.pem"), keyPEM)
	// A key in a block whose type is itself garbage.
	write(t, filepath.Join(dir, "odd.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY " + strings.Repeat("X", 100), Bytes: der}))

	s, logs := open(t, dir)
	if err := admits(t, s, ca.Leaf(t, "scout"), "partner-corp")(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("no warning about the private key:\n%s", out)
	}
	b64 := base64.StdEncoding.EncodeToString(der)
	for i := 0; i+16 <= len(b64); i += 16 {
		if strings.Contains(out, b64[i:i+16]) {
			t.Fatalf("the private key reached the log:\n%s", out)
		}
	}
	if strings.Contains(out, fmt.Sprintf("%x", der[len(der)-16:])) {
		t.Fatalf("the private key reached the log in hex:\n%s", out)
	}
}

func TestCloseStopsWatching(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	s, err := filestore.New(ctx, t.TempDir(), filestore.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	cancel() // the watcher stops with its context; Close still returns
	done := make(chan error, 2)
	go func() { done <- s.Close(); done <- s.Close() }()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return")
		}
	}
	// Reload still works on the loaded set after Close.
	if err := s.Reload(); err != nil {
		t.Errorf("Reload after Close: %v", err)
	}
}
