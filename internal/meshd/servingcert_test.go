package meshd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/ca/catest"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// servingMesh is a mesh CA with meshd's serving certificate issued into
// its directory, as meshd --dev leaves it.
type servingMesh struct {
	cfg  ca.Config
	st   *sqlstore.Store
	auth *ca.CA
	// cert and key are the CA's issued/meshd.{crt,key}.
	cert, key string
}

func newServingMesh(t *testing.T) *servingMesh {
	t.Helper()
	cfg, st, auth := catest.New(t, t.TempDir(), time.Now())
	t.Cleanup(func() { st.Close() })
	if _, err := auth.Sign(t.Context(), ca.NodeRequest("meshd", "localhost", "IP:127.0.0.1"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	return &servingMesh{cfg: cfg, st: st, auth: auth, cert: cfg.IssuedCertPath("meshd.mesh"), key: cfg.IssuedKeyPath("meshd.mesh")}
}

func (m *servingMesh) config(certFile, keyFile string) Config {
	return Config{Config: server.Config{TLSMode: server.TLSStrict, CertFile: certFile, KeyFile: keyFile, Logger: slog.New(slog.DiscardHandler), Now: time.Now}}
}

// rotate prepares and activates a new intermediate and taints the old
// one, as `meshctl ca rotate-intermediate prepare`, `activate` and
// `taint` do, and returns both key ids.
func (m *servingMesh) rotate(t *testing.T) (old, next string) {
	t.Helper()
	ctx := t.Context()
	old = hex.EncodeToString(m.auth.ActiveIntermediate().SubjectKeyId)
	if _, err := ca.PrepareIntermediate(ctx, m.cfg, m.st); err != nil {
		t.Fatal(err)
	}
	in, err := ca.ActivateIntermediate(ctx, m.cfg, m.st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.TaintIntermediate(ctx, m.cfg, m.st, old); err != nil {
		t.Fatal(err)
	}
	return old, hex.EncodeToString(in.SubjectKeyId)
}

func issuerOf(t *testing.T, certFile string) string {
	t.Helper()
	leaf, err := pemfile.ReadCert(certFile)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(leaf.AuthorityKeyId)
}

// TestOwnServingCertOnlyItsOwn: meshd renews the agent port's certificate
// only when its CA issued it into its own directory and recorded it;
// never files an operator brought, copies elsewhere, a look-alike the CA
// did not issue, or with TLS off.
func TestOwnServingCertOnlyItsOwn(t *testing.T) {
	m := newServingMesh(t)
	elsewhere := t.TempDir()
	copyTo := func(src, name string) string {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		return pkitest.WriteFile(t, elsewhere, name, data)
	}
	otherCert, otherKey := copyTo(m.cert, "meshd.crt"), copyTo(m.key, "meshd.key")

	// A certificate of another CA, for the same name, at another CA
	// directory's issued/ paths of that name.
	impostor := newServingMesh(t)
	root := pkitest.NewRoot(t, "other root")
	fake := root.Issue(t, "meshd.mesh", pkitest.Localhost())
	if err := os.WriteFile(impostor.cert, pkitest.CertPEM(fake.Leaf), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := m.auth.Sign(t.Context(), ca.AgentRequest("opus", "n1"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	agentCert, agentKey := m.cfg.IssuedCertPath("opus@n1"), m.cfg.IssuedKeyPath("opus@n1")

	for _, tc := range []struct {
		name string
		cfg  Config
		auth *ca.CA
		st   *sqlstore.Store
		want bool
	}{
		{"its own", m.config(m.cert, m.key), m.auth, m.st, true},
		{"its own, by a relative path", m.config(relTo(t, m.cert), relTo(t, m.key)), m.auth, m.st, true},
		{"a copy elsewhere", m.config(otherCert, otherKey), m.auth, m.st, false},
		{"the key elsewhere", m.config(m.cert, otherKey), m.auth, m.st, false},
		{"not recorded by this CA", m.config(impostor.cert, impostor.key), impostor.auth, impostor.st, false},
		{"an agent's", m.config(agentCert, agentKey), m.auth, m.st, false},
		{"no CA", m.config(m.cert, m.key), nil, m.st, false},
		{"TLS off", Config{Config: server.Config{TLSMode: server.TLSOff, CertFile: m.cert, KeyFile: m.key}}, m.auth, m.st, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ownServingCert(t.Context(), tc.cfg, tc.st, tc.auth)
			if err != nil {
				t.Fatal(err)
			}
			if got := s != nil; got != tc.want {
				t.Errorf("renewed: %v, want %v", got, tc.want)
			}
		})
	}
}

// relTo is p relative to the working directory.
func relTo(t *testing.T, p string) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, p)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

// TestServingCertFollowsTaint runs meshd on its own CA's certificate:
// after prepare, activate and taint, a new TLS handshake to the agent port
// sees a certificate of the new intermediate, the same key, without a
// restart, and the old intermediate has no leaf in use, so it revokes
// without force. Many pokes at once re-issue it once.
func TestServingCertFollowsTaint(t *testing.T) {
	m := newServingMesh(t)
	ctx := t.Context()
	cfg := m.config(m.cert, m.key)
	cfg.Listen, cfg.AdminSocket = "127.0.0.1:0", filepath.Join(t.TempDir(), "admin.sock")
	cfg.Backends, cfg.RevocationPoll = []string{BackendLocalCA}, 20*time.Millisecond
	srv, err := New(ctx, cfg, m.st, m.auth)
	if err != nil {
		t.Fatal(err)
	}
	if srv.serving == nil {
		t.Fatal("meshd does not renew the certificate its CA issued it")
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	roots := x509.NewCertPool()
	roots.AddCert(m.auth.Root())
	served := func() (*x509.Certificate, error) {
		conn, err := tls.Dial("tcp", srv.AgentAddr(), &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0], nil
	}
	first, err := served()
	if err != nil {
		t.Fatal(err)
	}
	old, next := m.rotate(t)
	if got := hex.EncodeToString(first.AuthorityKeyId); got != old {
		t.Fatalf("meshd served a certificate of %s before the rotation, want %s", got, old)
	}
	// Pokes from many goroutines besides the taint's own: the loop takes
	// them as one look, and a certificate already renewed is not due.
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(srv.serving.poke)
	}
	wg.Wait()
	var now *x509.Certificate
	eventually.NoError(t, "a new handshake sees meshd's certificate from the new intermediate", func() error {
		c, err := served()
		if err != nil {
			return err
		}
		if got := hex.EncodeToString(c.AuthorityKeyId); got != next {
			return fmt.Errorf("served by %s, want %s", got, next)
		}
		now = c
		return nil
	})
	if !bytes.Equal(now.RawSubjectPublicKeyInfo, first.RawSubjectPublicKeyInfo) {
		t.Error("the re-issued certificate has another key")
	}
	if !slices.Equal(now.DNSNames, first.DNSNames) || len(now.IPAddresses) != len(first.IPAddresses) {
		t.Errorf("SANs changed: %v %v, were %v %v", now.DNSNames, now.IPAddresses, first.DNSNames, first.IPAddresses)
	}
	certs, err := m.st.CertsByName(ctx, "meshd.mesh")
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 {
		t.Errorf("%d certificates of meshd.mesh, want the first and one re-issue", len(certs))
	}
	status, err := m.auth.IntermediateStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range status {
		if s.KeyID == old && s.LiveCerts != 0 {
			t.Errorf("the tainted intermediate still has %d leaves in use", s.LiveCerts)
		}
	}
	if _, err := ca.RevokeIntermediate(ctx, m.cfg, m.st, old, false); err != nil {
		t.Fatalf("revoke without force: %v", err)
	}
}

// TestServingCertRetries: a failed re-issue keeps the certificate file as
// it was and is tried again, with backoff, until it succeeds.
func TestServingCertRetries(t *testing.T) {
	m := newServingMesh(t)
	s, err := ownServingCert(t.Context(), m.config(m.cert, m.key), m.st, m.auth)
	if err != nil || s == nil {
		t.Fatalf("ownServingCert: %v, %v", s, err)
	}
	s.retryMin, s.retryMax = time.Millisecond, 10*time.Millisecond
	var calls atomic.Int32
	unchanged := atomic.Bool{}
	unchanged.Store(true)
	before, err := os.ReadFile(m.cert)
	if err != nil {
		t.Fatal(err)
	}
	sign := s.sign
	s.sign = func(ctx context.Context, req ca.Request, opts ...ca.SignOption) (*ca.Issued, error) {
		if calls.Add(1) <= 3 {
			// Each failure leaves the file as it was.
			if now, err := os.ReadFile(m.cert); err != nil || !bytes.Equal(now, before) {
				unchanged.Store(false)
			}
			return nil, errors.New("the store is unreachable")
		}
		return sign(ctx, req, opts...)
	}
	old, next := m.rotate(t)
	if err := m.auth.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually.NoError(t, "the certificate is re-issued after the failures", func() error {
		if got := issuerOf(t, m.cert); got != next {
			return fmt.Errorf("issued by %s (old %s)", got, old)
		}
		return nil
	})
	if n := calls.Load(); n != 4 {
		t.Errorf("%d signings, want 3 failed and 1 that succeeded", n)
	}
	if !unchanged.Load() {
		t.Error("a failed re-issue changed the certificate file")
	}
}
