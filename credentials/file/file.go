// Package file is the file credential provider: a credentials.Source that
// reads a certificate, its private key and a CA bundle from PEM files,
// and reloads them when they change. It is MCP Mesh's default provider
// (MCP_MESH_TLS_CERT, MCP_MESH_TLS_KEY, MCP_MESH_TLS_CA) and works with
// anything that writes PEM files: cert-manager, static certificates,
// Materialize.
//
// The directories of the files are watched (fsnotify), not the files:
// Kubernetes updates a mounted secret by writing a new hidden directory
// and swapping the ..data symlink to it, which changes no watched file
// and removes the old targets. Every change in a directory schedules one
// reload after a short debounce, so the events of one update, or a
// certificate and key written one after the other, are read as one. A
// path that is a symlink into another directory is followed only through
// changes in its own directory (a swapped link, as Kubernetes does), and
// removing a watched directory itself ends the watch.
//
// A reload that cannot read a file, or finds a certificate that is not
// its key's, keeps the last good credentials in use and logs a warning
// (never the files' contents); the next change tries again.
package file

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Option configures a Source.
type Option func(*config)

type config struct {
	log      *slog.Logger
	debounce time.Duration
	clock    credentials.Clock
}

// WithLogger receives reloads and the reasons a reload kept the last good
// credentials; the default discards them. No file's contents are logged.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// withDebounce sets how long after the first change in a directory the
// files are read again; the default is 100 ms. Tests shorten it.
func withDebounce(d time.Duration) Option { return func(c *config) { c.debounce = d } }

// withClock sets the clock the debounce waits on; the default is the
// system clock. Tests move a manual one.
func withClock(clk credentials.Clock) Option { return func(c *config) { c.clock = clk } }

// Source is a credentials.Source over PEM files, reloaded when they
// change. Its Bundles are nil: it knows nothing of SPIFFE. Current
// returns the last good credentials read from the files, and Changed is
// closed when a reload changes them or when the source is closed.
type Source struct {
	credentials.View // the holder's: Current and Changed

	certPath, keyPath, caPath string
	cfg                       config
	holder                    credentials.Holder
	watcher                   *fsnotify.Watcher
	stop                      context.CancelFunc
	done                      chan struct{}
}

var _ credentials.Source = (*Source)(nil)

// New returns a Source over the certificate chain at certPath (the leaf
// first, then its intermediates), its private key at keyPath, and the CA
// bundle at caPath, the roots peers are verified against ("" for none).
// The files are read before New returns, and followed until ctx ends or
// Close is called.
//
// New fails when one of certPath and keyPath is given without the other,
// when a file is missing, unreadable or holds no PEM of its kind, when
// the key file can be read by other users (pemfile.ErrPermissions), and
// when the certificate is not the key's.
func New(ctx context.Context, certPath, keyPath, caPath string, opts ...Option) (*Source, error) {
	cfg := config{log: slog.New(slog.DiscardHandler), debounce: 100 * time.Millisecond, clock: retry.SystemClock()}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case certPath == "" && keyPath == "":
		return nil, errors.New("file: no certificate and key files given")
	case keyPath == "":
		return nil, fmt.Errorf("file: certificate %s given without its key file; give both", certPath)
	case certPath == "":
		return nil, fmt.Errorf("file: key %s given without its certificate file; give both", keyPath)
	}
	s := &Source{certPath: certPath, keyPath: keyPath, caPath: caPath, cfg: cfg, done: make(chan struct{})}
	s.View = s.holder.View()
	s.cfg.log = cfg.log.With("provider", "file", "cert", certPath)

	// Watch first, so that a change made while the files are read for
	// the first time is not missed.
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("file: watch for changes: %w", err)
	}
	for _, dir := range s.dirs() {
		if err := w.Add(dir); err != nil {
			w.Close()
			return nil, fmt.Errorf("file: watch %s for changes: %w", dir, err)
		}
	}
	s.watcher = w
	cert, err := loadPair(certPath, keyPath)
	if err == nil {
		var roots []*x509.Certificate
		if roots, err = s.loadRoots(); err == nil {
			err = s.holder.Set(&credentials.Credentials{Certificate: cert, Roots: roots})
		}
	}
	if err != nil {
		w.Close()
		return nil, err
	}
	s.warnExpired(cert.Leaf)
	ctx, s.stop = context.WithCancel(ctx)
	go s.run(ctx)
	return s, nil
}

// FromEnv returns a Source over the files the seed's variables name:
// MCP_MESH_TLS_CERT, MCP_MESH_TLS_KEY and MCP_MESH_TLS_CA (optional). It
// fails, naming the variable, when only one of the first two is set. It
// does not read MCP_MESH_TLS_PROVIDER: choosing the provider is the
// caller's.
func FromEnv(ctx context.Context, opts ...Option) (*Source, error) {
	cert, key := os.Getenv(credentials.EnvCert), os.Getenv(credentials.EnvKey)
	switch {
	case cert == "" && key == "":
		return nil, fmt.Errorf("file: set %s and %s to the certificate and key files", credentials.EnvCert, credentials.EnvKey)
	case key == "":
		return nil, fmt.Errorf("file: %s is set but %s is not; set both", credentials.EnvCert, credentials.EnvKey)
	case cert == "":
		return nil, fmt.Errorf("file: %s is set but %s is not; set both", credentials.EnvKey, credentials.EnvCert)
	}
	return New(ctx, cert, key, os.Getenv(credentials.EnvCA), opts...)
}

// Close stops watching the files. It is idempotent.
func (s *Source) Close() error {
	s.stop()
	<-s.done
	return nil
}

// dirs returns the directories to watch: those that hold the paths as
// given, where a symlink swap happens.
func (s *Source) dirs() []string {
	var dirs []string
	for _, p := range []string{s.certPath, s.keyPath, s.caPath} {
		if p == "" {
			continue
		}
		if d := filepath.Dir(p); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// run reloads after each burst of changes until ctx ends.
func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	defer s.holder.Close()
	defer s.watcher.Close()
	var due <-chan time.Time // non-nil while a reload is scheduled
	schedule := func() {
		if due == nil {
			due = s.cfg.clock.After(s.cfg.debounce)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			schedule()
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			// An overflow loses events: read the files again to be sure.
			s.cfg.log.Warn("watching the credential files", "err", err)
			schedule()
		case <-due:
			due = nil
			s.reload()
		}
	}
}

// reload reads the files again and publishes what changed. The pair and
// the CA bundle are kept apart: a bad one does not hold back the other.
func (s *Source) reload() {
	cur, err := s.holder.Current()
	if err != nil {
		return
	}
	next := *cur
	changed := false
	if cert, err := loadPair(s.certPath, s.keyPath); err != nil {
		s.cfg.log.Warn("cannot load the new certificate and key; the last good pair stays in use", "err", err, "serial", serial(cur.Certificate.Leaf))
	} else if !sameChain(cert.Certificate, cur.Certificate.Certificate) {
		next.Certificate = cert
		changed = true
		s.warnExpired(cert.Leaf)
	}
	if roots, err := s.loadRoots(); err != nil {
		s.cfg.log.Warn("cannot load the new CA bundle; the last good one stays in use", "err", err, "ca", s.caPath)
	} else if !sameCerts(roots, cur.Roots) {
		next.Roots = roots
		changed = true
	}
	if !changed {
		return
	}
	if err := s.holder.Set(&next); err != nil {
		s.cfg.log.Warn("cannot use the reloaded credentials", "err", err)
		return
	}
	leaf := next.Certificate.Leaf
	s.cfg.log.Info("reloaded credentials", "subject", leaf.Subject.CommonName, "serial", serial(leaf), "not_after", leaf.NotAfter, "roots", len(next.Roots))
}

func (s *Source) warnExpired(leaf *x509.Certificate) {
	if now := s.cfg.clock.Now(); now.After(leaf.NotAfter) {
		s.cfg.log.Warn("the certificate has expired; peers will refuse it until it is replaced", "subject", leaf.Subject.CommonName, "serial", serial(leaf), "not_after", leaf.NotAfter)
	}
}

// loadPair reads the certificate chain and its key.
func loadPair(certPath, keyPath string) (tls.Certificate, error) {
	data, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("file: read certificate: %w", err)
	}
	chain, err := pemfile.ParseCerts(data)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("file: %s: %w", certPath, err)
	}
	key, err := pemfile.ReadKey(keyPath)
	if errors.Is(err, pemfile.ErrPermissions) {
		// The usual cause is a Kubernetes secret volume, where chmod does
		// not help.
		return tls.Certificate{}, fmt.Errorf("file: %w (for a Kubernetes secret volume, set its defaultMode to 0400)", err)
	}
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("file: read key: %w", err)
	}
	cert, err := credentials.NewTLSCertificate(chain, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("file: %s and %s do not match, replace both together: %w", certPath, keyPath, err)
	}
	return cert, nil
}

// loadRoots reads the CA bundle, if there is one.
func (s *Source) loadRoots() ([]*x509.Certificate, error) {
	if s.caPath == "" {
		return nil, nil
	}
	data, err := os.ReadFile(s.caPath)
	if err != nil {
		return nil, fmt.Errorf("file: read CA bundle: %w", err)
	}
	roots, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("file: CA bundle %s: %w", s.caPath, err)
	}
	return roots, nil
}

func sameChain(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func serial(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }
