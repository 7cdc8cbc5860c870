// Package bundleendpoint serves the mesh CA's trust bundle as a SPIFFE
// bundle endpoint (the SPIFFE Federation specification), so that a SPIRE
// deployment, or any SPIFFE implementation, federates with the mesh the
// way it federates with another SPIRE: it fetches the mesh trust domain's
// X.509 authorities from GET / and verifies the mesh's certificates
// against them.
//
// The endpoint is unauthenticated by design (the bundle is a public
// document): it asks for no client certificate, answers GET / alone with a
// small document built once per change of the authorities, and bounds
// what a caller can make it spend (open connections, header size, read,
// write and idle timeouts; HTTP/1.1 only).
package bundleendpoint

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/retry"
)

// Profile is how a consumer authenticates the endpoint (the SPIFFE
// Federation specification's endpoint profiles).
type Profile string

// The endpoint profiles.
const (
	// ProfileSPIFFE serves an X.509-SVID of the mesh trust domain, which
	// the consumer verifies against the mesh bundle it already holds
	// (bootstrapped once with the mesh CA's root): the endpoint's
	// certificate is issued by the mesh CA and renewed by the endpoint.
	ProfileSPIFFE Profile = "https_spiffe"
	// ProfileWeb serves an operator-given certificate that the consumer
	// verifies against web PKI roots, reloaded when its files change.
	ProfileWeb Profile = "https_web"
)

// ParseProfile parses a profile name.
func ParseProfile(s string) (Profile, error) {
	switch p := Profile(s); p {
	case ProfileSPIFFE, ProfileWeb:
		return p, nil
	}
	return "", fmt.Errorf("bundle endpoint profile %q: want https_spiffe or https_web", s)
}

// Defaults of Config.
const (
	// DefaultRefreshHint is the spiffe_refresh_hint of the document: how
	// often consumers are asked to fetch it again (SPIRE 1.13.3 polls
	// several times per hint).
	DefaultRefreshHint = 5 * time.Minute
)

// The endpoint's fixed bounds: the request is a bodyless GET, the answer
// a few kilobytes, and a consumer polls a few times per refresh hint.
const (
	maxConns       = 64 // open connections; the next waits in the backlog
	headerTimeout  = 5 * time.Second
	readTimeout    = 10 * time.Second
	writeTimeout   = 10 * time.Second
	idleTimeout    = 30 * time.Second
	maxHeaderBytes = 8 << 10
)

// Config configures the endpoint. Addr is required; zero values of the
// rest select the defaults.
type Config struct {
	// Addr is the listen address, such as 127.0.0.1:8443.
	Addr string
	// Profile is the endpoint profile; default ProfileSPIFFE.
	Profile Profile
	// CertFile and KeyFile are the https_web profile's certificate chain
	// and key, reloaded when they change; the https_spiffe profile
	// refuses them.
	CertFile, KeyFile string
	// RefreshHint is the document's spiffe_refresh_hint; default
	// DefaultRefreshHint, at least one second.
	RefreshHint time.Duration
	// Logger receives the endpoint's log lines; default none.
	Logger *slog.Logger
	// Clock tells the time and times the SVID's renewal; default the
	// system's.
	Clock retry.Clock
}

// Authority is the mesh CA as the endpoint reads it: the trust domain and
// authorities it publishes, and the signing of the https_spiffe profile's
// X.509-SVID. *ca.CA is one.
type Authority interface {
	TrustDomain() spiffeid.TrustDomain
	Root() *x509.Certificate
	Intermediates() []*x509.Certificate
	ActiveIntermediate() *x509.Certificate
	Config() ca.Config
	Sign(ctx context.Context, req ca.Request, opts ...ca.SignOption) (*ca.Issued, error)
}

var _ Authority = (*ca.CA)(nil)

// Server is a running bundle endpoint.
//
// Lock order: mu guards the document cache alone and is never held
// across a call to the Authority's Sign (only svid's renewal signs).
type Server struct {
	cfg  Config
	auth Authority
	log  *slog.Logger

	maxConns int                // open connections at most
	certs    credentials.Source // the serving certificate
	svid     *svid              // nil unless ProfileSPIFFE

	mu  sync.Mutex
	doc document // the last document built

	srv    *http.Server
	ln     net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// document is the bundle document as last built, and what it was built
// from: the Authority's certificates by pointer, so that an unchanged CA
// costs a request a few comparisons, and by value, so that a CA reload
// that read the same files keeps the sequence number.
type document struct {
	root          *x509.Certificate
	intermediates []*x509.Certificate
	authorities   []*x509.Certificate
	until         time.Time // the first expiry among authorities
	seq           uint64
	data          []byte
}

// New checks cfg, builds the first document and gets the serving
// certificate: for https_spiffe it has auth sign the endpoint's
// X.509-SVID, for https_web it reads the files. It does not listen yet;
// Start does.
func New(ctx context.Context, cfg Config, auth Authority) (*Server, error) {
	if cfg.Addr == "" {
		return nil, errors.New("bundle endpoint: no listen address")
	}
	if auth == nil {
		return nil, errors.New("bundle endpoint: it publishes the mesh CA's bundle, and this meshd has no mesh CA (create one with meshctl ca init, or start meshd with --dev)")
	}
	cfg.Profile = cmp.Or(cfg.Profile, ProfileSPIFFE)
	if _, err := ParseProfile(string(cfg.Profile)); err != nil {
		return nil, err
	}
	cfg.RefreshHint = cmp.Or(cfg.RefreshHint, DefaultRefreshHint)
	if cfg.RefreshHint < time.Second {
		return nil, fmt.Errorf("bundle endpoint: refresh hint %s: want at least 1s (the document states it in seconds)", cfg.RefreshHint)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = retry.SystemClock()
	}
	s := &Server{cfg: cfg, auth: auth, maxConns: maxConns, log: cfg.Logger.With("listener", "bundle-endpoint", "profile", string(cfg.Profile))}
	if _, err := s.document(); err != nil {
		return nil, err
	}
	switch cfg.Profile {
	case ProfileSPIFFE:
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			return nil, errors.New("bundle endpoint: a certificate file is for the https_web profile; https_spiffe serves an X.509-SVID the mesh CA issues")
		}
		s.svid = newSVID(auth, cfg.Clock, s.log)
		if err := s.svid.renew(ctx); err != nil {
			return nil, err
		}
		s.certs = &s.svid.holder
	case ProfileWeb:
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, errors.New("bundle endpoint: the https_web profile needs a certificate and key file, of a name the consumers' web PKI roots vouch for")
		}
		src, err := file.New(ctx, cfg.CertFile, cfg.KeyFile, "", file.WithLogger(s.log))
		if err != nil {
			return nil, fmt.Errorf("bundle endpoint: %w", err)
		}
		s.certs = src
	}
	return s, nil
}

// Start listens on cfg.Addr and serves until Shutdown, renewing the
// https_spiffe profile's SVID in the background.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("bundle endpoint: %w", err)
	}
	s.ln = ln
	tcfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The document is public: no client certificate is asked for, so
		// none is parsed or verified.
		ClientAuth: tls.NoClientCert,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			// A CA change is noticed here too, not only by a GET: a
			// consumer that already holds a new root's bundle cannot get
			// that far until the SVID is re-issued under it. Unchanged,
			// it costs a few pointer comparisons.
			_, _ = s.document()
			c, err := s.certs.Current()
			if err != nil {
				return nil, err
			}
			return &c.Certificate, nil
		},
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// An empty, non-nil map turns HTTP/2 off: one protocol to bound.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(tls.NewListener(limitListener(ln, s.maxConns), tcfg)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("bundle endpoint stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	if s.svid != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.svid.run(ctx) }()
	}
	args := []any{"addr", ln.Addr().String(), "trust_domain", s.auth.TrustDomain().String()}
	if s.svid != nil {
		id, _ := spiffeID(s.auth.TrustDomain())
		args = append(args, "endpoint_spiffe_id", id.String())
	}
	s.log.Info("serving the mesh bundle as a SPIFFE bundle endpoint", args...)
	return nil
}

// Addr returns the bound address, once started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops serving, lets in-flight requests finish until ctx ends,
// and stops the SVID's renewal or the certificate files' watch.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	if s.srv != nil {
		if err = s.srv.Shutdown(ctx); err != nil {
			s.srv.Close() // ctx ended first: cut what is still open
		}
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.certs != nil {
		err = errors.Join(err, s.certs.Close())
	}
	return err
}

// ServeHTTP answers GET / with the bundle document; every other path is
// 404, every other method on / is 405.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "the bundle endpoint answers GET / only", http.StatusMethodNotAllowed)
		return
	}
	data, err := s.document()
	if err != nil {
		s.log.Error("cannot build the bundle document", "err", err)
		http.Error(w, "the bundle is not available", http.StatusServiceUnavailable)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(data)
}

// document returns the bundle document, built again only when the CA's
// authorities changed (a rotation, a reload with a new root) or one of
// them expired.
//
// The authorities are the mesh CA's published bundle (its bundle.pem):
// the root and every live intermediate that the root signed and that has
// not expired. The root is the anchor; the intermediates are there, as
// in bundle.pem, so that a peer presenting its leaf alone still verifies,
// and so that a prepared intermediate reaches consumers before any leaf
// depends on it. An activation, which moves no certificate in or out,
// leaves the document and its sequence number as they were.
func (s *Server) document() ([]byte, error) {
	root, inter := s.auth.Root(), s.auth.Intermediates()
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	d := &s.doc
	if d.data != nil && root == d.root && samePointers(inter, d.intermediates) && now.Before(d.until) {
		return d.data, nil
	}
	auths := authorities(root, inter, now)
	if s.svid != nil {
		// The CA reloaded: its active intermediate may now be one whose
		// SVID verifies where the current one no longer does.
		s.svid.check(auths)
	}
	if d.data != nil && sameCerts(auths, d.authorities) {
		d.root, d.intermediates, d.until = root, inter, firstExpiry(auths)
		return d.data, nil
	}
	td := s.auth.TrustDomain()
	// The sequence grows with every change this process sees; it starts
	// at the newest authority's NotBefore in Unix seconds, so a restarted
	// meshd, or another replica, numbers the same authorities alike and a
	// newly prepared intermediate always numbers higher.
	seq := d.seq + 1
	for _, a := range auths {
		seq = max(seq, uint64(max(a.NotBefore.Unix(), 0)))
	}
	b := spiffebundle.FromX509Authorities(td, auths)
	b.SetRefreshHint(s.cfg.RefreshHint)
	b.SetSequenceNumber(seq)
	data, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("marshal the bundle of %s: %w", td, err)
	}
	*d = document{root: root, intermediates: inter, authorities: auths, until: firstExpiry(auths), seq: seq, data: data}
	s.log.Info("the mesh bundle changed", "trust_domain", td.String(), "sequence", seq, "authorities", len(auths))
	return data, nil
}

// authorities returns root and the intermediates root signed that are
// valid at now, the root first and the intermediates oldest first, so
// that replicas order the same certificates alike.
func authorities(root *x509.Certificate, inter []*x509.Certificate, now time.Time) []*x509.Certificate {
	out := []*x509.Certificate{root}
	var live []*x509.Certificate
	for _, c := range inter {
		if c.CheckSignatureFrom(root) != nil || now.After(c.NotAfter) || now.Before(c.NotBefore) {
			continue
		}
		live = append(live, c)
	}
	slices.SortFunc(live, func(a, b *x509.Certificate) int {
		return cmp.Or(a.NotBefore.Compare(b.NotBefore), bytes.Compare(a.Raw, b.Raw))
	})
	return append(out, live...)
}

func firstExpiry(certs []*x509.Certificate) time.Time {
	t := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

func samePointers(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for _, c := range a {
		if !slices.Contains(b, c) {
			return false
		}
	}
	return true
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// limitListener accepts at most n connections at once; the next waits in
// the kernel's backlog until one closes.
func limitListener(ln net.Listener, n int) net.Listener {
	return &limited{Listener: ln, sem: make(chan struct{}, n), closed: make(chan struct{})}
}

type limited struct {
	net.Listener
	sem       chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *limited) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limited) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
