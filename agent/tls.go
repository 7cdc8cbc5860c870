package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/watch"
)

// Revocations is what ServerTLS and ClientTLS check a peer against once
// its chain has verified: a *watch.Watcher that follows meshd's
// revocation feed (NewWatcher makes one). It refuses a peer whose
// certificate, identity, key or entity was revoked.
type Revocations interface {
	VerifyPeerCertificate(rawCerts [][]byte, verifiedChains [][]*x509.Certificate) error
}

// ServerTLS returns the tls.Config of an agent's server for calls from
// other agents: it presents src's current certificate, requires a client
// certificate that chains to src's current roots (the mesh's trust), is
// not in revoked, and that every one of authorize allows (none: any such
// peer). Rotations of src apply from the next handshake on. A nil revoked
// refuses every peer: an agent that cannot check revocations fails
// closed.
//
// The certificate src presents must allow server authentication. The
// mesh CA's agent certificates (<agent>@<node>) are for clients only: an
// agent on an enrolled node serves with its node's certificate (an
// enroll.Renewer is that Source); Vault certificates and SPIRE SVIDs do
// both.
//
// Peers are checked at each handshake. A connection open when its peer is
// revoked stays open until it closes: bound them (http.Server's
// IdleTimeout) where that matters.
func ServerTLS(src credentials.Source, revoked Revocations, authorize ...credentials.Authorizer) *tls.Config {
	return credentials.ServerConfig(src, peerAuthorizer(revoked, authorize))
}

// ClientTLS returns the tls.Config of an agent's calls to other agents:
// it presents src's current certificate and accepts a server whose chain
// ends at src's current roots, that is not in revoked, and that every one
// of authorize allows (none: any such peer). The server's host name is
// not checked (credentials.ClientConfig says why): pass an Authorizer
// such as credentials.AuthorizeIdentity("geo@ct111") to call one agent
// only. A nil revoked refuses every server.
func ClientTLS(src credentials.Source, revoked Revocations, authorize ...credentials.Authorizer) *tls.Config {
	return credentials.ClientConfig(src, peerAuthorizer(revoked, authorize))
}

func peerAuthorizer(revoked Revocations, authorize []credentials.Authorizer) credentials.Authorizer {
	notRevoked := func(leaf *x509.Certificate, chains [][]*x509.Certificate) error {
		if revoked == nil {
			return fmt.Errorf("%w: no revocation set to check the peer against (give a *watch.Watcher)", trust.ErrUntrusted)
		}
		return revoked.VerifyPeerCertificate([][]byte{leaf.Raw}, chains)
	}
	return credentials.AuthorizeAllOf(append([]credentials.Authorizer{notRevoked}, authorize...)...)
}

// NewWatcher returns a watch.Watcher of meshd's revocation feed for
// ServerTLS and ClientTLS, authenticated with src: cfg.Server is meshd's
// agent port (required); cfg.Roots, when nil, are src's current roots
// and operator roots (credentials.Credentials.OperatorRoots), which
// meshd's certificate and CRLs must chain to; and
// cfg.GetClientCertificate, when nil, presents src's current certificate,
// which meshd requires of the stream in TLS mode strict. The roots are
// taken once: a Watcher keeps the pool it was made with. Once meshd
// revokes that certificate it refuses the stream too, and the Watcher
// falls back to polling the CRL. Run the Watcher in a goroutine:
//
//	w, err := agent.NewWatcher(src, watch.Config{Server: registryURL})
//	...
//	go w.Run(ctx)
//	srv := &http.Server{TLSConfig: agent.ServerTLS(src, w)}
func NewWatcher(src credentials.Source, cfg watch.Config) (*watch.Watcher, error) {
	if src == nil {
		return nil, errors.New("agent: NewWatcher: no credentials Source")
	}
	if cfg.Roots == nil {
		c, err := src.Current()
		if err != nil {
			return nil, fmt.Errorf("agent: NewWatcher: %w", err)
		}
		// The operator's added CAs (MCP_MESH_TLS_CA) are what verify a
		// meshd on a mesh-CA certificate when the provider's own roots
		// are another CA's (SPIRE's, Vault's).
		roots := append(slices.Clone(c.Roots), c.OperatorRoots...)
		if len(roots) == 0 {
			return nil, errors.New("agent: NewWatcher: the credentials have no roots to verify meshd with; set MCP_MESH_TLS_CA or watch.Config.Roots")
		}
		cfg.Roots = x509.NewCertPool()
		for _, r := range roots {
			cfg.Roots.AddCert(r)
		}
	}
	if cfg.GetClientCertificate == nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := src.Current()
			if err != nil {
				return nil, fmt.Errorf("agent: no certificate to present to meshd: %w", err)
			}
			return &c.Certificate, nil
		}
	}
	if cfg.OnTaint == nil {
		// A Source that renews through meshd (the enroll provider's)
		// renews soon, with jitter, the certificates a tainted
		// intermediate issued.
		if t, ok := src.(Tainter); ok {
			cfg.OnTaint = func(e meshapi.TaintEvent) { t.Tainted(e.IssuerKeyID) }
		}
	}
	return watch.New(&trust.RevocationSet{}, cfg)
}
