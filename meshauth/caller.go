package meshauth

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/trust"
)

// Caller is a verified caller: who presented the request's client
// certificate, or, on the opt-in legacy path, the shared-secret bearer.
type Caller struct {
	// Name is the caller's principal: its mesh identity's common name
	// ("opus@ct111", "ct111.mesh") or, for a certificate that is not a
	// mesh identity, its CN. LegacyName on the legacy bearer path.
	Name string
	// Identity is the mesh identity the certificate carries; zero when
	// its names are not a mesh identity (a partner's own naming, a bare
	// SPIFFE SVID).
	Identity identity.Identity
	// Entity is the partner entity whose CA signed the certificate; ""
	// for the mesh's own CAs.
	Entity string
	// SPIFFEID is the certificate's SPIFFE ID ("spiffe://td/path"), and
	// TrustDomain its trust domain; both "" without one.
	SPIFFEID, TrustDomain string
	// Fingerprint is the lowercase hex SHA-256 of the certificate.
	Fingerprint string
	// Peer is what the trust chain verified; nil on the legacy path.
	Peer *trust.Peer
	// Session is the certificate-bound session the request's token names;
	// nil when the request carried none.
	Session *Session
	// Legacy marks a caller admitted by the legacy bearer path.
	Legacy bool
	// Anonymous marks a caller without a certificate, admitted to the
	// Authorizer by Config.Anonymous.
	Anonymous bool
}

// LegacyName is the Name of a caller admitted by the legacy bearer path,
// and the principal a policy names to allow it.
const LegacyName = "legacy:bearer"

// Session is a session token's verified claims.
type Session struct {
	// ID is the session id.
	ID string
	// Expires is the token's expiry.
	Expires time.Time
	// KeyID is the id of the key that signed the token.
	KeyID string
}

// Certificate returns the caller's certificate, nil on the legacy path.
func (c *Caller) Certificate() *x509.Certificate {
	if c.Peer == nil {
		return nil
	}
	return c.Peer.Leaf
}

// AgentID returns the one agent id this caller's certificate may speak
// for: the <agent-id> of a mesh agent identity <agent-id>@<node-id>, or,
// for a certificate that is not a mesh identity, its common name if that
// is a valid id. Node and external-user certificates speak for no agent.
func (c *Caller) AgentID() (string, error) {
	return AgentID(c.Peer)
}

// AgentID returns the agent id a verified peer may speak for; see
// Caller.AgentID.
func AgentID(p *trust.Peer) (string, error) {
	if p == nil {
		return "", fmt.Errorf("no verified certificate: only a certificate can speak for an agent")
	}
	switch p.Identity.Kind {
	case identity.KindAgent:
		return p.Identity.Name, nil
	case identity.KindNode, identity.KindExternal:
		return "", fmt.Errorf("%q is a %s certificate and cannot speak for an agent", p.Name(), p.Identity.Kind)
	}
	cn := p.Leaf.Subject.CommonName
	if err := identity.ValidateID(cn); err != nil {
		return "", fmt.Errorf("certificate CN %q does not name an agent: %w", cn, err)
	}
	return cn, nil
}

// CallerOf derives the Caller of a peer a trust.Chain verified.
func CallerOf(p *trust.Peer) *Caller {
	c := &Caller{Name: p.Name(), Identity: p.Identity, Entity: p.Entity, Fingerprint: p.Fingerprint, Peer: p}
	if !p.Identity.IsZero() {
		c.Name = p.Identity.CommonName()
	}
	if id, err := x509svid.IDFromCert(p.Leaf); err == nil {
		c.SPIFFEID, c.TrustDomain = id.String(), id.TrustDomain().Name()
	}
	return c
}

type callerKey struct{}

// FromContext returns the verified caller of a request that passed the
// middleware.
func FromContext(ctx context.Context) (*Caller, bool) {
	v, ok := ctx.Value(callerKey{}).(verified)
	return v.caller, ok && v.caller != nil
}

// WithCaller returns a copy of ctx that carries c, for handlers tested
// without the middleware and for services that verify by other means.
func WithCaller(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, verified{caller: c})
}
