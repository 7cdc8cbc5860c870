package credentials

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Errors a handshake refused by ServerConfig or ClientConfig wraps, for
// callers that count or branch on them.
var (
	// ErrUntrusted: the peer's chain does not verify against the
	// source's current roots (or its trust domain's bundle).
	ErrUntrusted = errors.New("credentials: peer certificate not trusted")
	// ErrUnauthorized: the chain verified, but the Authorizer refused
	// the peer (or there is none). It wraps the Authorizer's error.
	ErrUnauthorized = errors.New("credentials: peer not authorized")
)

// An Authorizer decides whether a peer whose chain has verified may
// connect. leaf is the peer's certificate and chains the verified chains,
// each from leaf to one of the source's roots. It returns nil to allow
// the peer, else why not: the handshake fails with that error, wrapped
// in ErrUnauthorized.
//
// Authorizers are small values meant to be combined (AuthorizeAllOf)
// rather than one function with many branches. The vocabulary follows
// go-spiffe's tlsconfig and is meshauth's too: AuthorizeAny,
// AuthorizeIdentity, AuthorizeMemberOf, AuthorizeAllOf, AdaptMatcher.
type Authorizer func(leaf *x509.Certificate, chains [][]*x509.Certificate) error

// AuthorizeAny allows every peer whose chain verifies.
func AuthorizeAny() Authorizer {
	return func(*x509.Certificate, [][]*x509.Certificate) error { return nil }
}

// AuthorizeIdentity allows a peer named one of names: a mesh identity
// ("ct111.mesh", "opus@ct111") or another CN ("registry.mcp-mesh.local").
// The source's roots vouch for the name, and all of them alike: a source
// whose roots include another CA than the mesh's lets that CA vouch too
// (meshauth.AuthorizeIdentity tells the trust sources apart).
func AuthorizeIdentity(names ...string) Authorizer {
	allowed := slices.Clone(names)
	return func(leaf *x509.Certificate, _ [][]*x509.Certificate) error {
		// Compared: the leaf's subject common name, exactly.
		if slices.Contains(allowed, leaf.Subject.CommonName) {
			return nil
		}
		return fmt.Errorf("common name %q is not one of %q", leaf.Subject.CommonName, allowed)
	}
}

// AuthorizeMemberOf allows a peer whose SPIFFE ID is in trust domain td:
// what a service that admits every workload of one SPIRE deployment
// passes.
// With SPIFFE bundles (Credentials.Bundles) only td's own bundle vouches
// for the ID; otherwise the source's roots do.
func AuthorizeMemberOf(td spiffeid.TrustDomain) Authorizer {
	return AdaptMatcher(spiffeid.MatchMemberOf(td))
}

// AdaptMatcher allows a peer whose leaf has a SPIFFE ID (exactly one
// spiffe:// URI SAN) that match accepts, such as spiffeid.MatchID(id) or
// spiffeid.MatchOneOf(ids...): what a service that admits named SPIFFE
// workloads only passes.
func AdaptMatcher(match spiffeid.Matcher) Authorizer {
	return func(leaf *x509.Certificate, _ [][]*x509.Certificate) error {
		// Compared: the SPIFFE ID as spiffeid.ID parses the URI SAN.
		id, err := x509svid.IDFromCert(leaf)
		if err != nil {
			return fmt.Errorf("no SPIFFE ID: %w", err)
		}
		if err := match(id); err != nil {
			return fmt.Errorf("SPIFFE ID %s: %w", id, err)
		}
		return nil
	}
}

// AuthorizeAllOf allows a peer that every one of authorizers allows; the
// first refusal decides. With none, it allows every peer.
func AuthorizeAllOf(authorizers ...Authorizer) Authorizer {
	all := slices.Clone(authorizers)
	return func(leaf *x509.Certificate, chains [][]*x509.Certificate) error {
		for _, a := range all {
			if err := a(leaf, chains); err != nil {
				return err
			}
		}
		return nil
	}
}

// ServerConfig returns a tls.Config for a server that presents src's
// current certificate and requires clients to present one that chains to
// src's current roots (Roots and OperatorRoots; a SPIFFE ID of a trust
// domain in Bundles to that bundle only) and that authorize allows (nil refuses every
// client). Rotations of the certificate and of the roots apply from the
// next handshake on: nothing is copied into the config.
//
// The client's chain is checked in VerifyConnection, with ClientAuth set
// to tls.RequireAnyClientCert, rather than by crypto/tls against
// ClientCAs: ClientCAs is a pool fixed in the config, and verifying in the
// callback lets every handshake use the roots Current returns at that
// moment. VerifyConnection runs on resumed sessions too, so a session
// does not outlive a change of roots. The server does not send the list
// of acceptable CAs in its certificate request.
//
// The caller may set more fields (NextProtos, timeouts) on the result,
// but must keep ClientAuth, GetCertificate and VerifyConnection.
func ServerConfig(src Source, authorize Authorizer) *tls.Config {
	v := &verifier{src: src, usage: x509.ExtKeyUsageClientAuth, authorize: authorize}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return v.certificate()
		},
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: v.verify,
	}
}

// ClientConfig returns a tls.Config for a client that presents src's
// current certificate when asked and accepts a server whose chain ends at
// src's current roots and that authorize allows (nil refuses every
// server). Rotations apply from the next handshake on.
//
// crypto/tls's own verification is turned off (InsecureSkipVerify) and
// done in VerifyConnection instead, for the same reason as in
// ServerConfig: RootCAs would fix the roots in the config. The server's
// host name is therefore not checked: in the mesh a peer is who its
// certificate says, and the Authorizer says which peer is the right one
// (AuthorizeIdentity("ct111.mesh"), AuthorizeMemberOf(td)).
func ClientConfig(src Source, authorize Authorizer) *tls.Config {
	v := &verifier{src: src, usage: x509.ExtKeyUsageServerAuth, authorize: authorize}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return v.certificate()
		},
		InsecureSkipVerify: true, // verified in VerifyConnection against the live roots
		VerifyConnection:   v.verify,
	}
}

// verifier verifies peers against a Source's current roots.
type verifier struct {
	src       Source
	usage     x509.ExtKeyUsage
	authorize Authorizer
	// pools caches the pools of the last credentials seen: a Source
	// returns the same *Credentials until they change.
	pools atomic.Pointer[pools]
}

type pools struct {
	creds    *Credentials
	roots    *x509.CertPool // Roots and OperatorRoots; nil: none
	operator *x509.CertPool // OperatorRoots alone; nil: none
	bundles  map[spiffeid.TrustDomain]*x509.CertPool
}

func (v *verifier) certificate() (*tls.Certificate, error) {
	c, err := v.src.Current()
	if err != nil {
		return nil, fmt.Errorf("credentials: no certificate to present: %w", err)
	}
	return &c.Certificate, nil
}

func (v *verifier) poolsFor(c *Credentials) *pools {
	if p := v.pools.Load(); p != nil && p.creds == c {
		return p
	}
	p := &pools{creds: c, roots: pool(append(slices.Clone(c.Roots), c.OperatorRoots...)), operator: pool(c.OperatorRoots)}
	if c.Bundles != nil {
		p.bundles = make(map[spiffeid.TrustDomain]*x509.CertPool, len(c.Bundles))
		for td, certs := range c.Bundles {
			p.bundles[td] = pool(certs)
		}
	}
	v.pools.Store(p)
	return p
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	if len(certs) == 0 {
		return nil
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func (v *verifier) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: the peer presented no certificate", ErrUntrusted)
	}
	leaf := cs.PeerCertificates[0]
	c, err := v.src.Current()
	if err != nil {
		return fmt.Errorf("credentials: cannot verify peer %s: %w", describe(leaf), err)
	}
	p := v.poolsFor(c)
	roots := p.roots
	if p.bundles != nil {
		// A SPIFFE ID names its trust domain: only that domain's bundle
		// may vouch for it, not another domain's CA among the roots. The
		// operator's added CAs may vouch for an ID of a trust domain that
		// has no bundle, and for a leaf without a SPIFFE ID (with the
		// roots); never for a trust domain a bundle speaks for. Compared:
		// the trust domain of the ID as spiffeid parses the leaf's one
		// URI SAN, by its canonical name (the map's key).
		id, err := x509svid.IDFromCert(leaf)
		switch {
		case err == nil:
			if roots = p.bundles[id.TrustDomain()]; roots == nil {
				if roots = p.operator; roots == nil {
					return fmt.Errorf("%w: %s: no bundle for trust domain %q", ErrUntrusted, describe(leaf), id.TrustDomain())
				}
			}
		case hasSPIFFEURI(leaf):
			// A SPIFFE URI that does not parse as the leaf's one ID
			// (malformed, or beside other URIs): no bundle can vouch for
			// it, and no other anchor may.
			return fmt.Errorf("%w: %s: its SPIFFE ID: %w", ErrUntrusted, describe(leaf), err)
		}
	}
	if roots == nil {
		return fmt.Errorf("%w: %s: the credentials have no roots to verify peers against", ErrUntrusted, describe(leaf))
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{v.usage}})
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUntrusted, describe(leaf), err)
	}
	if v.authorize == nil {
		return fmt.Errorf("%w: %s: no Authorizer configured", ErrUnauthorized, describe(leaf))
	}
	if err := v.authorize(leaf, chains); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnauthorized, describe(leaf), err)
	}
	return nil
}

// hasSPIFFEURI reports whether one of c's URI SANs has the spiffe scheme
// (url.Parse lowercases a scheme).
func hasSPIFFEURI(c *x509.Certificate) bool {
	return slices.ContainsFunc(c.URIs, func(u *url.URL) bool { return u.Scheme == "spiffe" })
}

// describe names a certificate in an error: its common name, or its
// first URI SAN when it has none, and its serial.
func describe(c *x509.Certificate) string {
	name := c.Subject.CommonName
	if name == "" && len(c.URIs) > 0 {
		name = c.URIs[0].String()
	}
	return fmt.Sprintf("%q (serial %x)", name, c.SerialNumber)
}
