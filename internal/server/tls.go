package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// TLSMode says how the agent port treats client certificates.
type TLSMode string

// The TLS modes of MCP_MESH_TLS_MODE.
const (
	// TLSOff serves plain HTTP: no identities, no binding. For local
	// experiments only; meshd warns loudly.
	TLSOff TLSMode = "off"
	// TLSAuto verifies a client certificate when one is presented; callers
	// without one may read /health and nothing else.
	TLSAuto TLSMode = "auto"
	// TLSStrict requires a verified client certificate on every route.
	TLSStrict TLSMode = "strict"
)

// ParseTLSMode parses a TLS mode. Unlike MCP Mesh, an unknown value is an
// error rather than a silent fallback to auto.
func ParseTLSMode(s string) (TLSMode, error) {
	switch m := TLSMode(s); m {
	case TLSOff, TLSAuto, TLSStrict:
		return m, nil
	}
	return "", fmt.Errorf("unknown TLS mode %q (MCP_MESH_TLS_MODE / --tls-mode must be off, auto or strict, lowercase)", s)
}

// certReloader serves a certificate and key from files and picks up new
// files without a restart: at most once a second it compares the files'
// size and modification time, and reloads when they change. Connections
// already open keep the certificate they were made with.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string
	lastCheck time.Time
}

func newCertReloader(certFile, keyFile string, log *slog.Logger, now func() time.Time) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log, now: now}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) fileStamp() (string, error) {
	var stamp string
	for _, p := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		stamp += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return stamp, nil
}

// load reads the files; the caller holds r.mu or has not shared r yet.
func (r *certReloader) load() error {
	stamp, err := r.fileStamp()
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("server certificate %s / key %s: %w", r.certFile, r.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return err
		}
	}
	r.cert, r.stamp = &cert, stamp
	return nil
}

// current returns the certificate, reloading it if its files changed.
func (r *certReloader) current() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.lastCheck) < time.Second {
		return r.cert
	}
	r.lastCheck = now
	stamp, err := r.fileStamp()
	if err != nil || stamp == r.stamp {
		return r.cert
	}
	old := r.cert
	if err := r.load(); err != nil {
		// A half-written pair (cert renamed in, key not yet) is retried on
		// the next check; until then the old certificate keeps serving.
		r.log.Warn("server certificate changed but does not load yet; keeping the current one", "err", err)
		r.cert = old
		return old
	}
	r.log.Info("server certificate reloaded", "subject", r.cert.Leaf.Subject.CommonName, "not_after", r.cert.Leaf.NotAfter)
	return r.cert
}

func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.current(), nil
}

// agentTLSConfig is the agent port's TLS configuration. Client
// certificates are requested, not verified by crypto/tls: the server
// verifies them against the trust chain per request (cached), so a refusal
// is a 403 with a reason and a revocation applies to open connections.
// crypto/tls still checks that the client holds the certificate's key.
func agentTLSConfig(certs *certReloader) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: certs.GetCertificate,
		ClientAuth:     tls.RequestClientCert,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}

var errNoServerCert = errors.New("no server certificate")

// rawConn returns the TCP connection under a TLS one, so closing it does
// not wait on a close_notify the peer may never read.
func rawConn(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}
