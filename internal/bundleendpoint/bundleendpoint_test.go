package bundleendpoint_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/bundleendpoint"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/ca/catest"
	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// mesh is a mesh CA for a test, opened over its store.
type mesh struct {
	cfg  ca.Config
	st   *sqlstore.Store
	auth *ca.CA
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	cfg, st, auth := catest.New(t, t.TempDir(), time.Now())
	t.Cleanup(func() { st.Close() })
	return &mesh{cfg: cfg, st: st, auth: auth}
}

// endpointID is the SPIFFE ID the https_spiffe profile serves.
func (m *mesh) endpointID(t *testing.T) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromSegments(m.auth.TrustDomain(), "node", bundleendpoint.Node)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// rootBundle is what a consumer is bootstrapped with: the mesh root.
func (m *mesh) rootBundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(m.auth.TrustDomain(), []*x509.Certificate{m.auth.Root()})
}

func start(t *testing.T, cfg bundleendpoint.Config, auth bundleendpoint.Authority) *bundleendpoint.Server {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	ctx := context.Background()
	s, err := bundleendpoint.New(ctx, cfg, auth)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return s
}

// fetch fetches the bundle as a SPIFFE consumer does under https_spiffe:
// the endpoint must present the SVID of id, verified against bootstrap.
func fetch(t *testing.T, m *mesh, s *bundleendpoint.Server, bootstrap *x509bundle.Bundle) *spiffebundle.Bundle {
	t.Helper()
	b, err := federation.FetchBundle(context.Background(), m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithSPIFFEAuth(bootstrap, m.endpointID(t)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sequence(t *testing.T, b *spiffebundle.Bundle) uint64 {
	t.Helper()
	seq, ok := b.SequenceNumber()
	if !ok {
		t.Fatal("the document has no spiffe_sequence")
	}
	return seq
}

// TestSPIFFEProfile: a consumer bootstrapped with the mesh root fetches
// the bundle over https_spiffe; the endpoint presents the SVID of
// spiffe://<td>/node/meshd issued by the mesh CA and asks for no client
// certificate; the document is the root and the live intermediate, with
// the refresh hint configured and a sequence number.
func TestSPIFFEProfile(t *testing.T) {
	m := newMesh(t)
	s := start(t, bundleendpoint.Config{RefreshHint: 90 * time.Second}, m.auth)
	b := fetch(t, m, s, m.rootBundle())
	if b.TrustDomain() != m.auth.TrustDomain() {
		t.Errorf("trust domain %s, want %s", b.TrustDomain(), m.auth.TrustDomain())
	}
	got := b.X509Authorities()
	if len(got) != 2 || !got[0].Equal(m.auth.Root()) || !got[1].Equal(m.auth.ActiveIntermediate()) {
		t.Errorf("authorities %v, want the root and the active intermediate", subjects(got))
	}
	if hint, ok := b.RefreshHint(); !ok || hint != 90*time.Second {
		t.Errorf("refresh hint %v (%v), want 90s", hint, ok)
	}
	sequence(t, b)

	asked := false
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{
		InsecureSkipVerify: true, // checked below against the mesh root
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked = true
			return &tls.Certificate{}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The client has read the server's whole first flight, where a
	// certificate request would be, by the end of the handshake.
	conn.Close()
	if asked {
		t.Error("the endpoint asked for a client certificate")
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != m.endpointID(t).String() {
		t.Errorf("the endpoint presents URIs %v, want [%s]", leaf.URIs, m.endpointID(t))
	}
	if leaf.NotAfter.Sub(leaf.NotBefore) > 25*time.Hour {
		t.Errorf("the endpoint's SVID lives %s, want at most a day", leaf.NotAfter.Sub(leaf.NotBefore))
	}
}

// TestConsumerRefusesAnotherID: a consumer that authorizes another ID
// than the endpoint's, or holds another trust domain's root, refuses it.
func TestConsumerRefusesAnotherID(t *testing.T) {
	m := newMesh(t)
	s := start(t, bundleendpoint.Config{}, m.auth)
	other, _ := spiffeid.FromSegments(m.auth.TrustDomain(), "node", "other")
	if _, err := federation.FetchBundle(context.Background(), m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithSPIFFEAuth(m.rootBundle(), other)); err == nil {
		t.Error("a consumer authorizing another SPIFFE ID fetched the bundle")
	}
	stranger := x509bundle.FromX509Authorities(m.auth.TrustDomain(), []*x509.Certificate{pkitest.NewRoot(t, "stranger").Cert})
	if _, err := federation.FetchBundle(context.Background(), m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithSPIFFEAuth(stranger, m.endpointID(t))); err == nil {
		t.Error("a consumer holding another root fetched the bundle")
	}
}

// TestRoutes: GET / alone answers; another path is 404, another method
// 405, and neither changes what GET / answers.
func TestRoutes(t *testing.T) {
	m := newMesh(t)
	s := start(t, bundleendpoint.Config{}, m.auth)
	before := get(t, s, "/")
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/", http.StatusOK},
		{http.MethodGet, "/bundle", http.StatusNotFound},
		{http.MethodGet, "//", http.StatusNotFound},
		{http.MethodGet, "/.well-known/spiffe-bundle", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
		{http.MethodPut, "/", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/", http.StatusMethodNotAllowed},
		{http.MethodHead, "/", http.StatusMethodNotAllowed},
	} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, strings.NewReader("{}")))
		if rec.Code != tt.want {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, rec.Code, tt.want)
		}
		if tt.want == http.StatusOK && rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: Content-Type %q", tt.method, tt.path, rec.Header().Get("Content-Type"))
		}
		if tt.want == http.StatusMethodNotAllowed && rec.Header().Get("Allow") != http.MethodGet {
			t.Errorf("%s %s: Allow %q, want GET", tt.method, tt.path, rec.Header().Get("Allow"))
		}
	}
	if after := get(t, s, "/"); after != before {
		t.Errorf("the document changed after refused requests:\n%s\n%s", before, after)
	}
}

func get(t *testing.T, s *bundleendpoint.Server, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	return rec.Body.String()
}

func parse(t *testing.T, m *mesh, doc string) *spiffebundle.Bundle {
	t.Helper()
	b, err := spiffebundle.Parse(m.auth.TrustDomain(), []byte(doc))
	if err != nil {
		t.Fatalf("the document does not parse as a SPIFFE bundle: %v\n%s", err, doc)
	}
	return b
}

// TestRotation: preparing an intermediate adds it to the document and
// grows the sequence; activating it moves no certificate in or out, so
// the document stays byte for byte; a reload that reads the same files
// keeps it too.
func TestRotation(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	s := start(t, bundleendpoint.Config{}, m.auth)
	first := parse(t, m, get(t, s, "/"))
	if err := m.auth.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if again := parse(t, m, get(t, s, "/")); !again.Equal(first) {
		t.Errorf("a reload of the same CA changed the document")
	}
	prepared, err := ca.PrepareIntermediate(ctx, m.cfg, m.st)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.auth.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	doc := get(t, s, "/")
	second := parse(t, m, doc)
	if !second.HasX509Authority(prepared) || !second.HasX509Authority(m.auth.Root()) || len(second.X509Authorities()) != 3 {
		t.Errorf("after prepare: authorities %v, want the root, the active and the prepared intermediate", subjects(second.X509Authorities()))
	}
	if sequence(t, second) <= sequence(t, first) {
		t.Errorf("sequence %d after prepare, was %d: want it to grow", sequence(t, second), sequence(t, first))
	}
	if _, err := ca.ActivateIntermediate(ctx, m.cfg, m.st); err != nil {
		t.Fatal(err)
	}
	if err := m.auth.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if after := get(t, s, "/"); after != doc {
		t.Errorf("activation changed the document:\n%s\n%s", doc, after)
	}
	// The endpoint's SVID, from the intermediate now retired, still
	// verifies against what a consumer fetched.
	fetch(t, m, s, second.X509Bundle())
}

// TestRenewal: the SVID is renewed at two thirds of its life, for a new
// key, and the endpoint presents the new one.
func TestRenewal(t *testing.T) {
	m := newMesh(t)
	clock := clocktest.New(time.Now())
	s := start(t, bundleendpoint.Config{Clock: clock}, m.auth)
	first := presented(t, s)
	wait := clock.NextWait(t, eventually.Bound)
	if life := first.NotAfter.Sub(clock.Now()); wait < life*2/3-time.Minute || wait > life*2/3+time.Minute {
		t.Errorf("renewal in %s, want two thirds of the SVID's %s", wait, life)
	}
	clock.Advance(wait)
	eventually.True(t, "the endpoint presents a renewed SVID", func() bool {
		return presented(t, s).SerialNumber.Cmp(first.SerialNumber) != 0
	})
	second := presented(t, s)
	if second.Equal(first) || string(second.RawSubjectPublicKeyInfo) == string(first.RawSubjectPublicKeyInfo) {
		t.Error("the renewed SVID has the old key")
	}
	fetch(t, m, s, m.rootBundle())
}

// presented is the leaf the endpoint presents in a handshake.
func presented(t *testing.T, s *bundleendpoint.Server) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true}) // only the leaf is read
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestWebProfile: under https_web the endpoint serves the operator's
// certificate, which a client verifies against its web PKI roots (here a
// custom root), and serves a replaced one without a restart.
func TestWebProfile(t *testing.T) {
	m := newMesh(t)
	web := pkitest.NewRoot(t, "web root")
	dir := t.TempDir()
	certFile := filepath.Join(dir, "cert.pem")
	keyFile := filepath.Join(dir, "key.pem")
	issue := func(cn string) *x509.Certificate {
		c := web.Issue(t, cn, pkitest.Localhost())
		if err := os.WriteFile(keyFile+".new", pkitest.KeyPEM(t, c.PrivateKey.(crypto.Signer)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile+".new", pkitest.CertPEM(c.Leaf), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Rename(keyFile+".new", keyFile)
		os.Rename(certFile+".new", certFile)
		return c.Leaf
	}
	first := issue("bundle.example")
	s := start(t, bundleendpoint.Config{Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: keyFile}, m.auth)
	roots := x509.NewCertPool()
	roots.AddCert(web.Cert)
	b, err := federation.FetchBundle(context.Background(), m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithWebPKIRoots(roots))
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(m.auth.Root()) {
		t.Error("the https_web document lacks the mesh root")
	}
	if !presented(t, s).Equal(first) {
		t.Error("the endpoint does not present the operator's certificate")
	}
	// A client without the custom root refuses the endpoint.
	if _, err := federation.FetchBundle(context.Background(), m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithWebPKIRoots(x509.NewCertPool())); err == nil {
		t.Error("a client without the web root fetched the bundle")
	}
	second := issue("bundle2.example")
	eventually.True(t, "the endpoint presents the replaced certificate", func() bool { return presented(t, s).Equal(second) })
}

// TestConfigErrors: a configuration that cannot serve is refused with
// a message that says what to do.
func TestConfigErrors(t *testing.T) {
	m := newMesh(t)
	for _, tt := range []struct {
		name string
		cfg  bundleendpoint.Config
		auth bundleendpoint.Authority
		want string
	}{
		{"no address", bundleendpoint.Config{}, m.auth, "no listen address"},
		{"no CA", bundleendpoint.Config{Addr: "127.0.0.1:0"}, nil, "no mesh CA"},
		{"bad profile", bundleendpoint.Config{Addr: "127.0.0.1:0", Profile: "http"}, m.auth, "want https_spiffe or https_web"},
		{"web without files", bundleendpoint.Config{Addr: "127.0.0.1:0", Profile: bundleendpoint.ProfileWeb}, m.auth, "needs a certificate and key file"},
		{"spiffe with files", bundleendpoint.Config{Addr: "127.0.0.1:0", CertFile: "c", KeyFile: "k"}, m.auth, "for the https_web profile"},
		{"short hint", bundleendpoint.Config{Addr: "127.0.0.1:0", RefreshHint: time.Millisecond}, m.auth, "at least 1s"},
		{"missing files", bundleendpoint.Config{Addr: "127.0.0.1:0", Profile: bundleendpoint.ProfileWeb, CertFile: "/nonexistent/c", KeyFile: "/nonexistent/k"}, m.auth, "/nonexistent"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := bundleendpoint.New(context.Background(), tt.cfg, tt.auth)
			if err == nil {
				s.Shutdown(context.Background())
				t.Fatal("New accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to say %q", err, tt.want)
			}
		})
	}
}

// TestConcurrentRotation (-race): readers of the document while the CA
// rotates its intermediate each get a document that parses, with a
// sequence that never goes back.
func TestConcurrentRotation(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	s := start(t, bundleendpoint.Config{}, m.auth)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for n := 0; ; n++ {
				select {
				case <-stop:
					if n == 0 {
						errs <- "a reader read nothing"
					}
					return
				default:
				}
				rec := httptest.NewRecorder()
				s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
				b, err := spiffebundle.Parse(m.auth.TrustDomain(), rec.Body.Bytes())
				if err != nil {
					errs <- err.Error()
					return
				}
				seq, _ := b.SequenceNumber()
				if seq < last {
					errs <- "the sequence went back"
					return
				}
				last = seq
			}
		}()
	}
	for range 3 {
		if _, err := ca.PrepareIntermediate(ctx, m.cfg, m.st); err != nil {
			t.Fatal(err)
		}
		if err := m.auth.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := ca.ActivateIntermediate(ctx, m.cfg, m.st); err != nil {
			t.Fatal(err)
		}
		if err := m.auth.Reload(ctx); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := len(parse(t, m, get(t, s, "/")).X509Authorities()); n != 5 {
		t.Errorf("%d authorities after three rotations, want the root and four live intermediates", n)
	}
}

func subjects(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

// TestRootChange: an intermediate under a new root (a new mesh root)
// makes the document the new root and that intermediate, with a larger
// sequence; the endpoint keeps the SVID a consumer holding the old root
// verifies, so that consumer fetches the new bundle; once the new
// intermediate is active the SVID is re-issued under it, and a consumer
// holding only the new bundle verifies the endpoint.
func TestRootChange(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	s := start(t, bundleendpoint.Config{}, m.auth)
	old := fetch(t, m, s, m.rootBundle())
	oldSVID := presented(t, s)
	next := m.cfg
	next.RootDir = filepath.Join(t.TempDir(), "root2")
	newRoot, err := ca.Init(ctx, next, m.st)
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := ca.PrepareIntermediate(ctx, next, m.st)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.auth.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	// The consumer still holds the old root.
	changed := fetch(t, m, s, old.X509Bundle())
	if got := changed.X509Authorities(); len(got) != 2 || !got[0].Equal(newRoot) || !got[1].Equal(prepared) {
		t.Fatalf("after a new root: authorities %v, want the new root and its intermediate", subjects(got))
	}
	if sequence(t, changed) <= sequence(t, old) {
		t.Errorf("sequence %d after a new root, was %d", sequence(t, changed), sequence(t, old))
	}
	if !presented(t, s).Equal(oldSVID) {
		t.Error("the SVID was replaced before an intermediate of the new root was active")
	}
	if _, err := ca.ActivateIntermediate(ctx, next, m.st); err != nil {
		t.Fatal(err)
	}
	if err := m.auth.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, "a consumer holding only the new bundle verifies the endpoint", func() error {
		_, err := federation.FetchBundle(ctx, m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithSPIFFEAuth(changed.X509Bundle(), m.endpointID(t)))
		return err
	})
}

// TestConnectionBound: callers that open connections and send nothing
// hold at most the bound; the next caller is served only once one of
// them closes, and then is.
func TestConnectionBound(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	s, err := bundleendpoint.New(ctx, bundleendpoint.Config{Addr: "127.0.0.1:0"}, m.auth)
	if err != nil {
		t.Fatal(err)
	}
	bundleendpoint.SetMaxConns(s, 2)
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	done := make(chan error, 1)
	go func() {
		_, err := federation.FetchBundle(ctx, m.auth.TrustDomain(), "https://"+s.Addr(), federation.WithSPIFFEAuth(m.rootBundle(), m.endpointID(t)))
		done <- err
	}()
	// Not a latency: only that nothing answers while both slots are held.
	select {
	case err := <-done:
		t.Fatalf("a third caller was served while two idle connections held the bound (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	idle[0].Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the third caller, once a slot was free: %v", err)
		}
	case <-time.After(eventually.Bound):
		t.Fatal("the third caller was not served after a slot was freed")
	}
}
