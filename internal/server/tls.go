package server

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/credentials"
)

// TLSMode says how the agent port treats client certificates.
type TLSMode string

// The TLS modes of MCP_MESH_TLS_MODE.
const (
	// TLSOff serves plain HTTP: no identities, no binding. For local
	// experiments only; meshd warns loudly.
	TLSOff TLSMode = "off"
	// TLSAuto verifies a client certificate when one is presented and, as
	// MCP Mesh does, admits callers without one to the agent routes, for
	// migrating to strict: they may act only for agent ids no certificate
	// has claimed, never provide for an authenticated agent's dependencies,
	// and are listed as unauthenticated, counted and logged.
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

// serverCert returns the GetCertificate of a tls.Config that serves the
// current certificate of src: a rotation applies to the next handshake,
// and connections already open keep the certificate they were made with.
func serverCert(src credentials.Source) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := src.Current()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errNoServerCert, err)
		}
		return &c.Certificate, nil
	}
}

// agentTLSConfig is the agent port's TLS configuration. Client
// certificates are requested, not verified by crypto/tls: the server
// verifies them against the trust chain per request (cached), so a refusal
// is a 403 with a reason and a revocation applies to open connections.
// crypto/tls still checks that the client holds the certificate's key.
func agentTLSConfig(certs credentials.Source) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: serverCert(certs),
		ClientAuth:     tls.RequestClientCert,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}

var errNoServerCert = errors.New("no server certificate")
