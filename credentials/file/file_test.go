package file_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// wait bounds every wait for something that should happen at once.
const wait = 10 * time.Second

// pki is a throwaway mesh CA (enrolltest's) that issues leaves as the
// PEM files a provider would read.
type pki struct {
	srv  *enrolltest.Server
	cert *x509.Certificate // the root
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	return &pki{srv: s, cert: s.Root}
}

// pair is a leaf's certificate chain and key PEM.
type pair struct {
	leaf          *x509.Certificate
	certPEM, key  []byte
	keyB64Excerpt string // a piece of the key's base64 body, to look for in logs
}

func (p *pki) issue(t *testing.T, cn string) pair {
	t.Helper()
	c := p.srv.Issue(t, cn)
	keyPEM, err := pemfile.MarshalKey(c.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	block, _ := pem.Decode(keyPEM)
	return pair{leaf: c.Leaf, certPEM: chain, key: keyPEM, keyB64Excerpt: base64.StdEncoding.EncodeToString(block.Bytes)[20:40]}
}

func write(t *testing.T, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := pemfile.WriteAtomic(path, data, perm); err != nil {
		t.Fatal(err)
	}
}

// files writes p and the CA bundle into dir as tls.crt, tls.key, ca.crt.
func files(t *testing.T, dir string, p pair, ca ...*pki) (cert, key, caPath string) {
	t.Helper()
	cert, key, caPath = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	write(t, cert, p.certPEM, 0o644)
	write(t, key, p.key, 0o600)
	var bundle []byte
	for _, c := range ca {
		bundle = append(bundle, pemfile.EncodeCerts(c.cert)...)
	}
	write(t, caPath, bundle, 0o644)
	return cert, key, caPath
}

// logLines is a log that hands each line to the test as it is written.
type logLines struct {
	mu    sync.Mutex
	all   bytes.Buffer
	lines chan string
}

func newLog() (*logLines, *slog.Logger) {
	l := &logLines{lines: make(chan string, 100)}
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.all.Write(p)
	l.mu.Unlock()
	select {
	case l.lines <- string(p):
	default:
	}
	return len(p), nil
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

func (l *logLines) await(t *testing.T, msg string) string {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case line := <-l.lines:
			if strings.Contains(line, msg) {
				return line
			}
		case <-deadline:
			t.Fatalf("no log line saying %q in:\n%s", msg, l)
		}
	}
}

func newSource(t *testing.T, cert, key, ca string, opts ...file.Option) *file.Source {
	t.Helper()
	s, err := file.New(t.Context(), cert, key, ca, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// awaitLeaf waits on Changed until Current presents want.
func awaitLeaf(t *testing.T, s credentials.Source, want *x509.Certificate) {
	t.Helper()
	deadline := time.After(wait)
	for {
		ch := s.Changed()
		if sourcetest.Current(t, s).Certificate.Leaf.Equal(want) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("the source still presents serial %x, want %x", sourcetest.Current(t, s).Certificate.Leaf.SerialNumber, want.SerialNumber)
		}
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	ca, other := newPKI(t), newPKI(t)
	p := ca.issue(t, "opus@ct1")
	cert, key, caPath := files(t, t.TempDir(), p, ca, other)
	s := newSource(t, cert, key, caPath)
	c := sourcetest.Current(t, s)
	if !c.Certificate.Leaf.Equal(p.leaf) || c.Certificate.PrivateKey == nil {
		t.Error("the source does not present the file's certificate with its key")
	}
	if len(c.Roots) != 2 || !c.Roots[0].Equal(ca.cert) || !c.Roots[1].Equal(other.cert) {
		t.Errorf("Roots: %d certificates, want the two of the bundle", len(c.Roots))
	}
	if c.Bundles != nil {
		t.Error("a file source has SPIFFE bundles")
	}

	// Without a CA bundle there are no roots.
	if c := sourcetest.Current(t, newSource(t, cert, key, "")); c.Roots != nil {
		t.Errorf("Roots without a CA file: %d", len(c.Roots))
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Current(); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("Current after Close = %v, want ErrClosed", err)
	}
	select {
	case <-s.Changed():
	default:
		t.Error("Changed is not closed after Close")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	ca := newPKI(t)
	dir := t.TempDir()
	cert, key, caPath := files(t, dir, ca.issue(t, "opus@ct1"), ca)
	otherKey := filepath.Join(dir, "other.key")
	write(t, otherKey, ca.issue(t, "scout@ct1").key, 0o600)
	looseKey := filepath.Join(dir, "loose.key")
	write(t, looseKey, must(os.ReadFile(key)), 0o644)
	noCerts := filepath.Join(dir, "empty.crt")
	write(t, noCerts, []byte("no PEM here\n"), 0o644)
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name            string
		cert, key, ca   string
		wantErr         error
		wantMsg         []string
		notWantInErrMsg string
	}{
		{"certificate without key", cert, "", caPath, nil, []string{cert, "without its key file"}, ""},
		{"key without certificate", "", key, caPath, nil, []string{key, "without its certificate file"}, ""},
		{"neither", "", "", caPath, nil, []string{"no certificate and key"}, ""},
		{"certificate missing", missing, key, caPath, os.ErrNotExist, []string{missing}, ""},
		{"key missing", cert, missing, caPath, pemfile.ErrMissing, []string{missing}, ""},
		{"key others can read", cert, looseKey, caPath, pemfile.ErrPermissions, []string{looseKey, "defaultMode to 0400"}, ""},
		{"certificate and key do not match", cert, otherKey, caPath, nil, []string{"do not match", cert, otherKey}, "PRIVATE KEY"},
		{"certificate file without certificates", noCerts, key, caPath, nil, []string{noCerts, "no CERTIFICATE"}, ""},
		{"CA bundle missing", cert, key, missing, os.ErrNotExist, []string{"CA bundle", missing}, ""},
		{"CA bundle unreadable (a directory)", cert, key, dir, nil, []string{"CA bundle", dir}, ""},
		{"CA bundle without certificates", cert, key, noCerts, nil, []string{"CA bundle", noCerts}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := file.New(t.Context(), tc.cert, tc.key, tc.ca)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("New = %v, want %v", err, tc.wantErr)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("New = %q, want it to say %q", err, m)
				}
			}
			if tc.notWantInErrMsg != "" && strings.Contains(err.Error(), tc.notWantInErrMsg) {
				t.Errorf("New = %q says %q", err, tc.notWantInErrMsg)
			}
		})
	}
}

// TestFromEnv sets the process's environment, so it runs alone.
func TestFromEnv(t *testing.T) {
	ca := newPKI(t)
	p := ca.issue(t, "opus@ct1")
	cert, key, caPath := files(t, t.TempDir(), p, ca)
	for _, tc := range []struct {
		name          string
		cert, key, ca string
		wantMsg       string // "": success
	}{
		{"all three", cert, key, caPath, ""},
		{"no CA", cert, key, "", ""},
		{"certificate only", cert, "", caPath, "MCP_MESH_TLS_CERT is set but MCP_MESH_TLS_KEY is not"},
		{"key only", "", key, caPath, "MCP_MESH_TLS_KEY is set but MCP_MESH_TLS_CERT is not"},
		{"none", "", "", "", "set MCP_MESH_TLS_CERT and MCP_MESH_TLS_KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MCP_MESH_TLS_CERT", tc.cert)
			t.Setenv("MCP_MESH_TLS_KEY", tc.key)
			t.Setenv("MCP_MESH_TLS_CA", tc.ca)
			s, err := file.FromEnv(t.Context())
			if tc.wantMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("FromEnv = %v, want an error saying %q", err, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c := sourcetest.Current(t, s)
			if !c.Certificate.Leaf.Equal(p.leaf) || (tc.ca != "") != (len(c.Roots) == 1) {
				t.Errorf("FromEnv read another certificate or bundle (%d roots)", len(c.Roots))
			}
		})
	}
}

// secretVolume lays files out as the kubelet mounts a Kubernetes secret
// (and so cert-manager's certificates): the files live in a timestamped
// hidden directory, ..data is a symlink to it, and each name is a
// symlink through ..data. An update writes a new hidden directory, swaps
// ..data to it with a rename, and removes the old one.
type secretVolume struct {
	dir string
	gen int
	cur string
}

func (v *secretVolume) publish(t *testing.T, files map[string][]byte) {
	t.Helper()
	v.gen++
	ts := fmt.Sprintf("..2026_%02d_01_12_00_00.%d", v.gen, 1000+v.gen)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		perm := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") {
			perm = 0o600
		}
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), data, perm); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if v.cur != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, v.cur)); err != nil {
			t.Fatal(err)
		}
	}
	v.cur = ts
}

func secretFiles(p pair, ca ...*pki) map[string][]byte {
	var bundle []byte
	for _, c := range ca {
		bundle = append(bundle, pemfile.EncodeCerts(c.cert)...)
	}
	return map[string][]byte{"tls.crt": p.certPEM, "tls.key": p.key, "ca.crt": bundle}
}

// TestReloadSecretVolume: cert-manager's update, a ..data symlink swap,
// is picked up, certificate, key and CA bundle together.
func TestReloadSecretVolume(t *testing.T) {
	t.Parallel()
	ca, ca2 := newPKI(t), newPKI(t)
	v := &secretVolume{dir: t.TempDir()}
	first := ca.issue(t, "opus@ct1")
	v.publish(t, secretFiles(first, ca))
	logs, log := newLog()
	s := newSource(t, filepath.Join(v.dir, "tls.crt"), filepath.Join(v.dir, "tls.key"), filepath.Join(v.dir, "ca.crt"),
		file.WithDebounce(10*time.Millisecond), file.WithLogger(log))
	if !sourcetest.Current(t, s).Certificate.Leaf.Equal(first.leaf) {
		t.Fatal("the first secret is not presented")
	}

	for i := range 3 {
		next := ca2.issue(t, fmt.Sprintf("opus%d@ct1", i))
		ch := s.Changed()
		v.publish(t, secretFiles(next, ca, ca2))
		select {
		case <-ch:
		case <-time.After(wait):
			t.Fatalf("swap %d: Changed was not closed", i)
		}
		awaitLeaf(t, s, next.leaf)
		c := sourcetest.Current(t, s)
		if len(c.Roots) != 2 || !c.Roots[1].Equal(ca2.cert) {
			t.Errorf("swap %d: the new CA bundle is not in use (%d roots)", i, len(c.Roots))
		}
		if _, err := os.Stat(filepath.Join(v.dir, "..data", "tls.crt")); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a symlink swap produced warnings:\n%s", logs)
	}
}

// TestReloadInPlace: files replaced one after the other are reloaded.
func TestReloadInPlace(t *testing.T) {
	t.Parallel()
	ca := newPKI(t)
	dir := t.TempDir()
	cert, key, caPath := files(t, dir, ca.issue(t, "opus@ct1"), ca)
	s := newSource(t, cert, key, caPath, file.WithDebounce(10*time.Millisecond))
	next := ca.issue(t, "opus@ct1")
	write(t, key, next.key, 0o600)
	write(t, cert, next.certPEM, 0o644)
	awaitLeaf(t, s, next.leaf)
}

// TestReloadKeepsLastGood: a certificate that is not its key's, a key
// that does not parse, or a damaged CA bundle leave the last good
// credentials in use and are logged, without the files' contents.
func TestReloadKeepsLastGood(t *testing.T) {
	t.Parallel()
	ca := newPKI(t)
	dir := t.TempDir()
	good := ca.issue(t, "opus@ct1")
	cert, key, caPath := files(t, dir, good, ca)
	logs, log := newLog()
	s := newSource(t, cert, key, caPath, file.WithDebounce(10*time.Millisecond), file.WithLogger(log))
	before := sourcetest.Current(t, s)
	ch := s.Changed()

	// A new key beside the old certificate.
	stray := ca.issue(t, "opus@ct1")
	write(t, key, stray.key, 0o600)
	line := logs.await(t, "the last good pair stays in use")
	if !strings.Contains(line, "do not match") {
		t.Errorf("the warning does not say the pair does not match: %s", line)
	}
	// A key file that does not parse, with a secret-looking body.
	const marker = "c2VjcmV0LWtleS1tYXRlcmlhbA"
	write(t, key, []byte("-----BEGIN PRIVATE KEY-----\n"+marker+"\n-----END PRIVATE KEY-----\n"), 0o600)
	logs.await(t, "the last good pair stays in use")
	// A damaged CA bundle.
	write(t, caPath, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o644)
	logs.await(t, "the last good one stays in use")

	if c := sourcetest.Current(t, s); c != before {
		t.Error("a bad reload replaced the credentials")
	}
	select {
	case <-ch:
		t.Error("a bad reload closed Changed")
	default:
	}

	// Fixed files are taken up again.
	next := ca.issue(t, "opus@ct1")
	write(t, key, next.key, 0o600)
	write(t, cert, next.certPEM, 0o644)
	write(t, caPath, pemfile.EncodeCerts(ca.cert), 0o644)
	awaitLeaf(t, s, next.leaf)

	out := logs.String()
	for _, leak := range []string{"-----BEGIN", "PRIVATE KEY-----", marker, stray.keyB64Excerpt, good.keyB64Excerpt, next.keyB64Excerpt} {
		if strings.Contains(out, leak) {
			t.Errorf("the log holds %q:\n%s", leak, out)
		}
	}
}

// stepClock is a Clock whose After channels fire only when the test says.
type stepClock struct{ afters chan chan time.Time }

func (c *stepClock) Now() time.Time { return time.Now() }

func (c *stepClock) After(time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.afters <- ch
	return ch
}

// TestDebounce: a certificate and key written one after the other within
// the debounce are read once, as a pair: no mismatch is reported in
// between.
func TestDebounce(t *testing.T) {
	t.Parallel()
	ca := newPKI(t)
	dir := t.TempDir()
	cert, key, caPath := files(t, dir, ca.issue(t, "opus@ct1"), ca)
	clk := &stepClock{afters: make(chan chan time.Time, 100)}
	logs, log := newLog()
	s := newSource(t, cert, key, caPath, file.WithClock(clk), file.WithLogger(log))
	ch := s.Changed()
	next := ca.issue(t, "opus@ct1")
	if err := os.WriteFile(cert, next.certPEM, 0o644); err != nil { // not atomic: several events
		t.Fatal(err)
	}
	if err := os.WriteFile(key, next.key, 0o600); err != nil {
		t.Fatal(err)
	}
	var fire chan time.Time
	select {
	case fire = <-clk.afters:
	case <-time.After(wait):
		t.Fatal("the writes scheduled no reload")
	}
	fire <- time.Now()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatal("no reload after the debounce")
	}
	if !sourcetest.Current(t, s).Certificate.Leaf.Equal(next.leaf) {
		t.Error("the reload did not take the new pair")
	}
	if strings.Contains(logs.String(), "do not match") {
		t.Errorf("the half-written pair was read:\n%s", logs)
	}
}

// TestContextEnds: the source closes when New's ctx ends.
func TestContextEnds(t *testing.T) {
	t.Parallel()
	ca := newPKI(t)
	cert, key, caPath := files(t, t.TempDir(), ca.issue(t, "opus@ct1"), ca)
	ctx, cancel := context.WithCancel(t.Context())
	s, err := file.New(ctx, cert, key, caPath)
	if err != nil {
		t.Fatal(err)
	}
	ch := s.Changed()
	cancel()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatal("Changed was not closed when ctx ended")
	}
	if _, err := s.Current(); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("Current = %v, want ErrClosed", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
