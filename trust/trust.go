// Package trust decides whether a peer's certificate chain is trusted, and
// by whom.
//
// A Backend knows a set of trust anchors: the mesh CA itself (LocalCA), a
// set of CAs each tied to a partner "entity" name (Anchors), CA files in a
// directory (package trust/filestore). A Chain tries its backends in order, first match wins,
// and caches each verdict per leaf fingerprint until a revocation or a
// change of anchors invalidates it. A RevocationSet holds the revoked
// serials and entities every backend consults.
package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
)

// Errors callers branch on. Every verification error wraps one of these
// and is a *VerifyError carrying a short machine-readable reason.
var (
	// ErrUnknownAuthority reports a chain that no anchor of a backend
	// signed. A Chain moves on to its next backend; it is final only when
	// no backend knows the chain.
	ErrUnknownAuthority = errors.New("trust: certificate signed by an unknown authority")
	// ErrUntrusted reports a chain that a backend knows but refuses:
	// expired, not yet valid, not for client authentication at some level,
	// a CA as a leaf. A chain holding a key below the floor is refused
	// with it by whichever backend sees it first.
	ErrUntrusted = errors.New("trust: certificate not trusted")
	// ErrRevoked reports a revoked certificate or entity.
	ErrRevoked = errors.New("trust: certificate revoked")
	// ErrNoCertificate reports a caller that presented no certificate.
	ErrNoCertificate = errors.New("trust: client certificate required")
)

// Reasons a certificate is refused, as reported by VerifyError.Reason and
// used as a metric label.
const (
	ReasonNoCertificate = "no_certificate"
	ReasonUnknownCA     = "unknown_ca"
	ReasonExpired       = "expired"
	ReasonNotYetValid   = "not_yet_valid"
	ReasonNotClient     = "not_client_cert"
	ReasonWeakKey       = "weak_key"
	ReasonCAAsLeaf      = "ca_as_leaf"
	ReasonBadChain      = "bad_chain"
	ReasonBadIdentity   = "bad_identity"
	ReasonRevoked       = "revoked"
	ReasonEntityRevoked = "entity_revoked"
	// ReasonStaleTrust refuses a chain a backend's anchors would admit,
	// but which it could not keep current for longer than its bound (the
	// spire backend when the Workload API stops answering): what vouched
	// for the chain may have been revoked since.
	ReasonStaleTrust = "stale_trust"
)

// ErrUnknownTrustDomain is an unknown authority a backend can say more
// about: the leaf's SPIFFE ID names a trust domain it holds no bundle for
// (not meshd's own, not a federated one listed). It wraps
// ErrUnknownAuthority, so a Chain tries its next backend; when none admits
// the chain, the Chain's refusal is this one rather than its generic
// unknown_ca, which would lose why.
var ErrUnknownTrustDomain = fmt.Errorf("%w: trust domain not trusted", ErrUnknownAuthority)

// VerifyError is why a chain was refused.
type VerifyError struct {
	// Reason is one of the Reason constants.
	Reason string
	// Detail is a sentence for the caller and the log.
	Detail string
	err    error
}

func (e *VerifyError) Error() string { return e.Detail }

// Unwrap returns the sentinel error the refusal wraps.
func (e *VerifyError) Unwrap() error { return e.err }

// NewVerifyError returns a refusal for a Backend outside this package to
// return: reason is one of the Reason constants, sentinel the error it
// wraps (ErrUnknownAuthority lets a Chain try its next backend).
func NewVerifyError(sentinel error, reason, detail string) *VerifyError {
	return &VerifyError{Reason: reason, Detail: detail, err: sentinel}
}

func refuse(sentinel error, reason, format string, args ...any) *VerifyError {
	return &VerifyError{Reason: reason, Detail: fmt.Sprintf(format, args...), err: sentinel}
}

// Reason returns the refusal reason of err, or "error" for an error that is
// not a VerifyError.
func Reason(err error) string {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return "error"
}

// Peer is a caller whose certificate chain a backend verified.
type Peer struct {
	// Leaf is the caller's certificate.
	Leaf *x509.Certificate
	// Fingerprint is the lowercase hex SHA-256 of Leaf.
	Fingerprint string
	// Serial is Leaf's serial in lowercase hex.
	Serial string
	// IssuerKeyID is the lowercase hex key id of Leaf's issuer.
	IssuerKeyID string
	// Backend names the backend that admitted the chain.
	Backend string
	// Entity is the partner entity whose CA signed the chain; "" for the
	// mesh's own CAs.
	Entity string
	// Identity is the mesh identity the certificate's names spell; zero
	// when they are not one (a partner's own naming). Only when MeshCA is
	// set did the mesh CA vouch for it: any other CA can write
	// "opus@ct111" into a certificate. The registry binds such a name to
	// the source of its first claim; meshauth trusts it from the mesh CA
	// alone.
	Identity identity.Identity
	// MeshCA reports that the mesh CA itself (a LocalCA) admitted the
	// chain: the one source that vouches for mesh identities (opus@ct111,
	// ct111.mesh). A backend merely named "localca" (MCP Mesh's trust-dir
	// CA) does not set it.
	MeshCA bool
	// SPIFFEID is the SPIFFE ID the source vouched for: the mesh CA's for
	// an identity of its own trust domain, a SPIFFE bundle's (spire) for an
	// ID of that bundle's trust domain. Zero when the source vouches for
	// none (a CA of the trust dir, a partner entity's CA), whatever URI SAN
	// the certificate carries.
	SPIFFEID spiffeid.ID

	// expires is the earliest NotAfter in the verified chain, anchor
	// included: past it a cached admission must be verified again. Zero
	// when the backend did not say.
	expires time.Time
}

// Name returns the certificate's common name, or for a certificate
// without one (an X.509-SVID whose only identity is its SPIFFE ID) its one
// spiffe:// URI SAN; "" for a certificate that has neither.
func (p *Peer) Name() string {
	if cn := p.Leaf.Subject.CommonName; cn != "" {
		return cn
	}
	if id, err := identity.CertSPIFFEID(p.Leaf); err == nil {
		return id.String()
	}
	return ""
}

// Backend verifies chains against one source of trust anchors.
type Backend interface {
	// Name is the backend's name in MCP_MESH_TRUST_BACKEND.
	Name() string
	// Verify verifies chain (leaf first, then any intermediates the peer
	// presented) at time now. It returns an error wrapping
	// ErrUnknownAuthority when none of its anchors signed the chain.
	Verify(ctx context.Context, chain []*x509.Certificate, now time.Time) (*Peer, error)
}

// Fingerprint returns the lowercase hex SHA-256 of a certificate's DER:
// the name every part of meshtrust gives one certificate (Peer, the CA's
// records, entity listings, enrollment's root pin).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// newPeer fills the fields of a Peer derived from the leaf.
func newPeer(backend string, leaf *x509.Certificate) *Peer {
	return &Peer{
		Leaf:        leaf,
		Fingerprint: Fingerprint(leaf),
		Serial:      leaf.SerialNumber.Text(16),
		IssuerKeyID: hex.EncodeToString(leaf.AuthorityKeyId),
		Backend:     backend,
	}
}

// VerifyInWindow verifies leaf to roots through intermediates for any key
// usage, at now moved into the leaf's validity window: a chain that is
// sound but out of date still comes back, so the caller can report an
// expired or not-yet-valid certificate as such rather than as untrusted.
// The caller checks the window and the key usage itself.
func VerifyInWindow(leaf *x509.Certificate, roots *x509.CertPool, intermediates []*x509.Certificate, now time.Time) ([][]*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	at := now
	switch {
	case now.Before(leaf.NotBefore):
		at = leaf.NotBefore
	case now.After(leaf.NotAfter):
		at = leaf.NotAfter
	}
	return leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
}

// verifyChain verifies chain against roots as a client certificate and
// classifies a refusal. Anchors are checked before the validity window, so
// an expired certificate of a foreign CA is reported as unknown, letting
// the next backend try. Keys are checked before anything else: no anchor
// could make a chain with a key below the floor acceptable, so whichever
// backend sees it first refuses it, and no signature is checked with a key
// a caller chose to be expensive (crypto/tls refuses oversized RSA keys
// the same way, before it verifies).
func verifyChain(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) ([][]*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, refuse(ErrNoCertificate, ReasonNoCertificate, "client certificate required")
	}
	leaf := chain[0]
	for _, c := range chain {
		if err := checkKey(leaf, c); err != nil {
			return nil, err
		}
	}
	// Any usage here, so that every path comes back and clientPath can
	// say which certificate restricts the usage of a refused one.
	chains, err := VerifyInWindow(leaf, roots, chain[1:], now)
	if err != nil {
		var ua x509.UnknownAuthorityError
		if errors.As(err, &ua) {
			return nil, refuse(ErrUnknownAuthority, ReasonUnknownCA, "certificate %q is signed by an unknown authority", DisplayName(leaf))
		}
		return nil, refuse(ErrUntrusted, ReasonBadChain, "certificate %q: %v", DisplayName(leaf), err)
	}
	if leaf.IsCA {
		return nil, refuse(ErrUntrusted, ReasonCAAsLeaf, "certificate %q is a CA certificate and cannot identify a client", DisplayName(leaf))
	}
	if chains, err = clientPaths(chains); err != nil {
		return nil, err
	}
	if now.Before(leaf.NotBefore) {
		return nil, refuse(ErrUntrusted, ReasonNotYetValid, "certificate %q is not valid before %s", DisplayName(leaf), leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return nil, refuse(ErrUntrusted, ReasonExpired, "certificate %q expired at %s", DisplayName(leaf), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return chains, nil
}

// clientPaths keeps the verified paths that every certificate allows for
// client authentication and whose anchor's key is strong enough, in their
// order: the paths crypto/x509 returns for ExtKeyUsageClientAuth, less the
// weak anchors. When none is left it returns why the first was refused.
func clientPaths(chains [][]*x509.Certificate) ([][]*x509.Certificate, error) {
	var ok [][]*x509.Certificate
	var first error
	for _, path := range chains {
		err := clientPath(path)
		if err == nil {
			ok = append(ok, path)
		} else if first == nil {
			first = err
		}
	}
	if len(ok) == 0 {
		return nil, first
	}
	return ok, nil
}

// clientPath checks one verified path, leaf first, from its anchor down:
// the anchor's key (the presented certificates' were checked before), then
// each certificate's extended key usage. A certificate without the
// extension, or with anyExtendedKeyUsage, allows every usage.
func clientPath(path []*x509.Certificate) error {
	leaf := path[0]
	if err := checkKey(leaf, path[len(path)-1]); err != nil {
		return err
	}
	for i := len(path) - 1; i >= 0; i-- {
		c := path[i]
		var problem string
		switch {
		case emptyExtKeyUsage(c):
			problem = "has an empty extended key usage extension (RFC 5280 requires at least one purpose)"
		case !clientUsage(c):
			problem = "restricts extended key usage to purposes other than clientAuth"
		default:
			continue
		}
		if c == leaf {
			return refuse(ErrUntrusted, ReasonNotClient, "certificate %q is not valid for client authentication: it %s", DisplayName(leaf), problem)
		}
		return refuse(ErrUntrusted, ReasonNotClient, "certificate %q is not valid for client authentication: CA %q of its chain %s", DisplayName(leaf), c.Subject.String(), problem)
	}
	return nil
}

// checkKey refuses c, a certificate of leaf's chain, when its key is not
// one meshd would sign for: RSA of 2048 to 16384 bits (the ceiling bounds
// what checking a signature costs), ECDSA on P-256, P-384 or P-521, or
// Ed25519.
func checkKey(leaf, c *x509.Certificate) error {
	var problem string
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		switch n := k.N.BitLen(); {
		case n < minRSABits:
			problem = fmt.Sprintf("an RSA key of %d bits, fewer than the %d required", n, minRSABits)
		case n > maxRSABits:
			problem = fmt.Sprintf("an RSA key of %d bits, more than the %d accepted", n, maxRSABits)
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			problem = fmt.Sprintf("an ECDSA key on curve %s (P-256, P-384 or P-521 required)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		problem = fmt.Sprintf("a %s key (ECDSA, Ed25519 or RSA of at least %d bits required)", c.PublicKeyAlgorithm, minRSABits)
	}
	if problem == "" {
		return nil
	}
	if c == leaf {
		return refuse(ErrUntrusted, ReasonWeakKey, "certificate %q has %s", DisplayName(leaf), problem)
	}
	return refuse(ErrUntrusted, ReasonWeakKey, "certificate %q: %q of its chain has %s", DisplayName(leaf), c.Subject.String(), problem)
}

// The RSA key sizes checkKey accepts.
const (
	minRSABits = 2048
	maxRSABits = 16384
)

// chainExpiry returns the earliest NotAfter of a verified chain.
func chainExpiry(chain []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range chain {
		if t.IsZero() || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// clientUsage reports whether c's extended key usage allows clientAuth.
func clientUsage(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true // no EKU extension: any usage, as RFC 5280 says
	}
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

var oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}

// emptyExtKeyUsage reports whether c has an extended key usage extension
// that lists no purpose, which crypto/x509 parses as no extension at all.
func emptyExtKeyUsage(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) != 0 || len(c.UnknownExtKeyUsage) != 0 {
		return false
	}
	for _, e := range c.Extensions {
		if e.Id.Equal(oidExtKeyUsage) {
			return true
		}
	}
	return false
}

// looseIdentity reads a mesh identity from a certificate's CN without
// requiring a SPIFFE SAN, for CAs that are not the mesh CA.
func looseIdentity(c *x509.Certificate) identity.Identity {
	cn := c.Subject.CommonName
	if !strings.Contains(cn, "@") && !strings.HasSuffix(cn, identity.NodeSuffix) {
		return identity.Identity{}
	}
	id, err := identity.Parse(cn)
	if err != nil {
		return identity.Identity{}
	}
	return id
}
