package meshd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/kubetest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// secretFiles are a Secret's files for intermediate in under root.
func secretFiles(t *testing.T, in, root *pkitest.CA) map[string][]byte {
	t.Helper()
	return map[string][]byte{secretCertFile: in.PEM(), secretKeyFile: pkitest.KeyPEM(t, in.Key), secretRootFile: root.PEM()}
}

// TestParseCASecret: a Secret that cannot be the mesh's intermediate is
// refused with ErrCASecret and a message naming what is wrong.
func TestParseCASecret(t *testing.T) {
	now := time.Now()
	root := pkitest.NewRoot(t, "root")
	other := pkitest.NewRoot(t, "other root")
	in := root.Intermediate(t, "intermediate")
	good := secretFiles(t, in, root)
	with := func(name string, data []byte) map[string][]byte {
		f := map[string][]byte{}
		for k, v := range good {
			f[k] = v
		}
		f[name] = data
		return f
	}
	otherKey := pkitest.KeyPEM(t, root.Intermediate(t, "x").Key)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"good", good, ""},
		{"chain after the intermediate", with(secretCertFile, append(pkitest.CertPEM(in.Cert), pkitest.CertPEM(root.Cert)...)), ""},
		{"key of another certificate", with(secretKeyFile, otherKey), "is not the key of tls.crt"},
		{"another root", with(secretRootFile, pkitest.CertPEM(other.Cert)), "does not chain to ca.crt"},
		{"ca.crt an intermediate", with(secretRootFile, pkitest.CertPEM(in.Cert)), "not a self-signed CA"},
		{"ca.crt two certificates", with(secretRootFile, append(pkitest.CertPEM(root.Cert), pkitest.CertPEM(other.Cert)...)), "holds 2 certificates"},
		{"a leaf", secretFiles(t, &pkitest.CA{Cert: root.Leaf(t, "leaf", pkitest.Key(leafKey)), Key: leafKey}, root), "not a CA certificate"},
		{"the root itself", secretFiles(t, root, root), "the root itself"},
		{"not yet valid", secretFiles(t, root.Intermediate(t, "future", pkitest.NotYetValid()), root), "not now"},
		{"garbage certificate", with(secretCertFile, []byte("not PEM")), "tls.crt"},
		{"garbage key", with(secretKeyFile, []byte("not PEM")), "tls.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			kubetest.MountSecret(t, dir, tc.files)
			certPEM, keyPEM, rootPEM, _, err := readSecretFiles(dir)
			if err != nil {
				t.Fatal(err)
			}
			s, err := parseCASecret(dir, certPEM, keyPEM, rootPEM, now)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if !s.cert.Equal(in.Cert) || !s.root.Equal(root.Cert) {
					t.Errorf("parsed %q under %q", s.cert.Subject, s.root.Subject)
				}
				return
			}
			if !errors.Is(err, ErrCASecret) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want ErrCASecret about %q", err, tc.want)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		dir := t.TempDir()
		f := with(secretRootFile, nil)
		delete(f, secretRootFile)
		kubetest.MountSecret(t, dir, f)
		if _, _, _, _, err := readSecretFiles(dir); !errors.Is(err, ErrCASecret) || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), secretRootFile) {
			t.Errorf("got %v; want ErrCASecret naming ca.crt", err)
		}
	})
	t.Run("key others may read", func(t *testing.T) {
		dir := t.TempDir()
		for name, data := range good {
			os.WriteFile(filepath.Join(dir, name), data, 0o644)
		}
		if _, _, _, _, err := readSecretFiles(dir); !errors.Is(err, ErrCASecret) || !strings.Contains(err.Error(), "defaultMode 0400") {
			t.Errorf("got %v; want ErrCASecret about the key's mode", err)
		}
		// The kubelet's fsGroup adds the group's read bit: allowed.
		os.Chmod(filepath.Join(dir, secretKeyFile), 0o440)
		if _, _, _, _, err := readSecretFiles(dir); err != nil {
			t.Errorf("a 0440 key (fsGroup): %v", err)
		}
	})
}

// adopter records what a watcher adopted; failing makes it refuse.
type adopter struct {
	mu      sync.Mutex
	adopted []*x509.Certificate
	failing bool
}

func (a *adopter) adopt(_ context.Context, s *caSecret) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failing {
		return errors.New("the store is away")
	}
	a.adopted = append(a.adopted, s.cert)
	return nil
}

func (a *adopter) last() (*x509.Certificate, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.adopted) == 0 {
		return nil, 0
	}
	return a.adopted[len(a.adopted)-1], len(a.adopted)
}

func (a *adopter) fail(f bool) {
	a.mu.Lock()
	a.failing = f
	a.mu.Unlock()
}

// startWatcher runs a watcher of dir whose mesh root is root, until the
// test ends.
func startWatcher(t *testing.T, dir string, root *pkitest.CA, a *adopter, resync time.Duration) *caSecretWatcher {
	w := &caSecretWatcher{dir: dir, resync: resync, debounce: 10 * time.Millisecond, now: time.Now,
		log: slog.New(slog.DiscardHandler), root: func() *x509.Certificate { return root.Cert }, adopt: a.adopt}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// TestCASecretWatcher: each new version of the Secret, written as the
// kubelet writes it, is adopted; a bad one (key of another certificate,
// another root) is refused once, keeps the current intermediate and
// degrades meshd until a good one comes; a failed adoption is retried.
func TestCASecretWatcher(t *testing.T) {
	root := pkitest.NewRoot(t, "root")
	in1 := root.Intermediate(t, "intermediate 1")
	in2 := root.Intermediate(t, "intermediate 2")
	in3 := root.Intermediate(t, "intermediate 3")
	dir := filepath.Join(t.TempDir(), "ca")
	kubetest.MountSecret(t, dir, secretFiles(t, in1, root))
	a := &adopter{}
	// A resync far away: every change below is seen through fsnotify.
	w := startWatcher(t, dir, root, a, time.Hour)
	adopted := func(want *x509.Certificate, n int) func() bool {
		return func() bool { c, got := a.last(); return got == n && c.Equal(want) }
	}
	eventually.True(t, "the first version adopted", adopted(in1.Cert, 1))

	kubetest.MountSecret(t, dir, secretFiles(t, in2, root))
	eventually.True(t, "the second version adopted", adopted(in2.Cert, 2))
	if d := w.degradation(); d != nil {
		t.Errorf("degraded after good versions: %v", d)
	}

	bad := secretFiles(t, in3, root)
	bad[secretKeyFile] = secretFiles(t, in1, root)[secretKeyFile]
	kubetest.MountSecret(t, dir, bad)
	eventually.True(t, "the bad version reported", func() bool { return len(w.degradation()) == 1 })
	if d := w.degradation()[0]; d.Reason != ReasonCASecretUnusable || !strings.Contains(d.Component, dir) {
		t.Errorf("degradation %+v; want %s naming %s", d, ReasonCASecretUnusable, dir)
	}
	if n := w.rejections.Load(); n != 1 {
		t.Errorf("%d rejections, want 1", n)
	}

	otherRoot := pkitest.NewRoot(t, "another root")
	kubetest.MountSecret(t, dir, secretFiles(t, otherRoot.Intermediate(t, "foreign"), otherRoot))
	eventually.True(t, "the foreign root refused", func() bool { return w.rejections.Load() == 2 })
	if c, n := a.last(); n != 2 || !c.Equal(in2.Cert) {
		t.Errorf("after the bad versions the adopter has %d, last %q; want 2, intermediate 2", n, c.Subject)
	}

	kubetest.MountSecret(t, dir, secretFiles(t, in3, root))
	eventually.True(t, "the good version adopted", adopted(in3.Cert, 3))
	eventually.True(t, "no longer degraded", func() bool { return w.degradation() == nil })
}

// TestCASecretWatcherRetries: an adoption that failed (the store away) is
// tried again at the next resync, without a change of the Secret.
func TestCASecretWatcherRetries(t *testing.T) {
	root := pkitest.NewRoot(t, "root")
	in := root.Intermediate(t, "intermediate")
	dir := filepath.Join(t.TempDir(), "ca")
	kubetest.MountSecret(t, dir, secretFiles(t, in, root))
	a := &adopter{failing: true}
	w := startWatcher(t, dir, root, a, 20*time.Millisecond)
	eventually.True(t, "degraded while adoption fails", func() bool { return len(w.degradation()) == 1 })
	a.fail(false)
	eventually.True(t, "adopted at a resync", func() bool { c, n := a.last(); return n == 1 && c.Equal(in.Cert) })
	eventually.True(t, "no longer degraded", func() bool { return w.degradation() == nil })
}

// TestCASecretWatcherStress: /health's readers and the watcher's writes
// of its degradation and counters race over many versions, good and bad,
// for the race detector; each good version is adopted and every bad one
// counted once.
func TestCASecretWatcherStress(t *testing.T) {
	root := pkitest.NewRoot(t, "root")
	dir := filepath.Join(t.TempDir(), "ca")
	first := root.Intermediate(t, "intermediate 0")
	kubetest.MountSecret(t, dir, secretFiles(t, first, root))
	a := &adopter{}
	w := startWatcher(t, dir, root, a, time.Hour)
	eventually.True(t, "the first version adopted", func() bool { _, n := a.last(); return n == 1 })

	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, d := range w.degradation() {
					if d.Reason != ReasonCASecretUnusable {
						t.Errorf("degradation %+v", d)
					}
				}
				w.rejections.Load()
			}
		}()
	}
	const versions = 20
	for i := 1; i <= versions; i++ {
		in := root.Intermediate(t, "intermediate")
		f := secretFiles(t, in, root)
		if i%2 == 0 {
			f[secretKeyFile] = secretFiles(t, first, root)[secretKeyFile]
			kubetest.MountSecret(t, dir, f)
			eventually.True(t, "a bad version counted", func() bool { return w.rejections.Load() == int64(i/2) })
			continue
		}
		kubetest.MountSecret(t, dir, f)
		eventually.True(t, "a good version adopted", func() bool { c, _ := a.last(); return c.Equal(in.Cert) })
	}
	close(stop)
	readers.Wait()
	if _, n := a.last(); n != 1+versions/2 {
		t.Errorf("%d versions adopted, want %d", n, 1+versions/2)
	}
}
