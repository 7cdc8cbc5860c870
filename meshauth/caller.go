package meshauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/trust"
)

// Caller is a verified caller: who presented the request's client
// certificate, or, on the opt-in legacy path, the shared-secret bearer.
//
// Each name a Caller bears is one its trust source may vouch for (see
// docs/identity-binding.md, "meshauth"): Identity only from the mesh CA,
// SPIFFEID only from the mesh CA (its own trust domain) or from the
// bundle of the ID's own trust domain, Entity from the CA registered
// under that name. A certificate any other CA signed keeps its CN in Name,
// but a policy matches that name only as its source allows (Policy).
type Caller struct {
	// Name is the caller's principal: its mesh identity's common name
	// ("opus@ct111", "ct111.mesh") or, for a certificate that is not a
	// mesh identity, its CN. LegacyName on the legacy bearer path.
	Name string
	// Identity is the mesh identity the mesh CA vouched for; zero for a
	// certificate of any other source, whatever its CN says.
	Identity identity.Identity
	// Entity is the partner entity whose CA signed the certificate; ""
	// for the mesh's own CAs.
	Entity string
	// Source is the trust backend that admitted the certificate
	// ("localca", "filestore", "entities", "spire", ...); "" on the legacy
	// and anonymous paths.
	Source string
	// MeshCA reports that the mesh CA admitted the certificate: the only
	// source whose names satisfy a principal naming a mesh identity, a
	// node or an identity glob.
	MeshCA bool
	// SPIFFEID is the SPIFFE ID ("spiffe://td/path") the caller's source
	// vouched for; "" without one, and for a certificate whose URI SAN no
	// source vouched for (one a partner's CA wrote).
	SPIFFEID string
	// TrustDomain is SPIFFEID's trust domain; zero when SPIFFEID is "".
	TrustDomain spiffeid.TrustDomain
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

// bareName returns the name a policy's plain principals (an identity, a
// CN, a glob of them) may match for c, and false when none may:
//   - a mesh CA certificate bears its mesh identity (opus@ct111,
//     ct111.mesh): compared as identity.Identity.CommonName;
//   - a certificate of the mesh's own other CAs (entity "": the trust
//     dir, MCP Mesh's --tls-auto CA) bears its CN, compared exactly, when
//     that CN is not shaped like a mesh identity (weather-agent,
//     weather-agent.mcp-mesh.local), since only the mesh CA vouches for
//     those;
//   - a partner entity's certificate, and one a SPIFFE bundle vouched for,
//     bear no plain name: only entity:, source: and spiffe:// principals
//     name them.
func (c *Caller) bareName() (string, bool) {
	switch {
	case c.Legacy || c.Anonymous:
		return "", false
	case c.MeshCA:
		return c.Name, c.Name != ""
	case c.Entity != "" || c.SPIFFEID != "" || c.Name == "" || strings.HasPrefix(c.Name, "spiffe://"):
		// A Name spiffe://... is a URI SAN no source vouched for.
		return "", false
	}
	return c.Name, !identityShaped(c.Name)
}

// identityShaped reports whether name is spelled like a mesh identity or
// a glob of them: it holds an '@' or ends with ".mesh". Only the mesh CA
// vouches for such names.
func identityShaped(name string) bool {
	return strings.Contains(name, "@") || strings.HasSuffix(name, identity.NodeSuffix)
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

// AgentID returns the one agent id this caller's certificate may speak
// for: the <agent-id> of a mesh agent identity <agent-id>@<node-id>, or,
// for a certificate that is not a mesh identity, its common name if that
// is a valid id. Node and external-user certificates speak for no agent.
//
// Only as the caller's source vouches: a mesh identity's <agent-id> on a
// certificate of the mesh CA alone, a plain CN on one of the mesh's own
// other CAs (entity ""). A partner entity's certificate, or one a SPIFFE
// bundle vouched for, speaks for no agent here, whatever its CN: which ids
// a partner may claim is its namespace in meshd's registry, which
// meshauth does not hold (AgentID, the registry's CN form, applies no
// source rule).
func (c *Caller) AgentID() (string, error) {
	id, err := AgentID(c.Peer)
	if err != nil {
		return "", err
	}
	if !c.MeshCA {
		if c.Entity != "" {
			return "", fmt.Errorf("%q is a certificate of entity %q, whose agent ids meshd's registry binds by the entity's namespace; here it speaks for no agent (allow it by an entity:%s rule)", c.Name, c.Entity, c.Entity)
		}
		if identityShaped(c.Peer.Leaf.Subject.CommonName) {
			return "", fmt.Errorf("%q is a mesh identity's name on a certificate of trust source %q; only the mesh CA vouches for one, so it speaks for no agent", c.Peer.Leaf.Subject.CommonName, c.Source)
		}
	}
	return id, nil
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

// CallerFromPeer derives the Caller of a peer a trust.Chain verified (the
// middleware's caller; ModelCaller models one without a certificate). The
// mesh identity is kept only when the mesh CA vouched for it, the SPIFFE
// ID only when the peer's source vouched for it (trust.Peer.SPIFFEID).
func CallerFromPeer(p *trust.Peer) *Caller {
	c := &Caller{Name: p.Name(), Entity: p.Entity, Source: p.Backend, MeshCA: p.MeshCA, Fingerprint: p.Fingerprint, Peer: p}
	if p.MeshCA && !p.Identity.IsZero() {
		c.Identity = p.Identity
		c.Name = p.Identity.CommonName()
	}
	if !p.SPIFFEID.IsZero() {
		c.SPIFFEID, c.TrustDomain = p.SPIFFEID.String(), p.SPIFFEID.TrustDomain()
	}
	return c
}

type callerKey struct{}

// withVerified returns a copy of ctx that carries v, for FromContext and
// Recheck.
func withVerified(ctx context.Context, v Verified) context.Context {
	return context.WithValue(ctx, callerKey{}, v)
}

// FromContext returns the verified caller of a request that passed the
// middleware.
func FromContext(ctx context.Context) (*Caller, bool) {
	v, ok := ctx.Value(callerKey{}).(Verified)
	return v.Caller, ok && v.Caller != nil
}

// WithCaller returns a copy of ctx that carries c: what a service's own
// tests call to run a handler that reads FromContext without the
// middleware, and what a service that verifies callers by other means
// calls to hand its handlers the same Caller.
func WithCaller(ctx context.Context, c *Caller) context.Context {
	return withVerified(ctx, Verified{Caller: c})
}

// SourceMeshCA is the trust backend of the mesh CA: a modelled caller
// (ModelCaller) of this source without an entity is one the mesh CA
// vouched for.
const SourceMeshCA = "localca"

// SourceSPIRE is the trust backend of SPIFFE bundles: a modelled caller
// of this source bears the SPIFFE ID its trust domain's bundle vouched for.
const SourceSPIRE = "spire"

// ModelSource says where a modelled caller's certificate comes from
// (ModelCaller): the trust backend that would admit it and the entity its
// CA is registered under. The zero value is the mesh CA.
type ModelSource struct {
	// Backend is the trust backend's name (SourceMeshCA, "filestore",
	// "entities", "k8s-secrets", SourceSPIRE). "" is the mesh CA, or
	// "entities" with an Entity, or SourceSPIRE for a SPIFFE ID outside
	// the mesh's trust domain (no other source vouches for one).
	Backend string
	// Entity is the partner entity whose CA would sign the certificate;
	// "" for the mesh's own CAs.
	Entity string
}

// ModelCaller returns the Caller a certificate of principal would be, for
// answering "may X do Y?" without a certificate (meshctl policy check;
// CallerFromPeer derives the caller of a real one):
// an identity or CN ("opus@ct111", "weather-agent"), a SPIFFE ID,
// AnonymousName or LegacyName, coming from src. It bears the names src
// may vouch for, as CallerFromPeer's would: the mesh CA issues only mesh
// identities (a SPIFFE ID of its trust domain td is one), a SPIFFE bundle
// only SPIFFE IDs, any other source a CN that is neither a mesh identity
// nor a SPIFFE ID to the policy. A principal its source cannot issue is an
// error saying which source to name.
func ModelCaller(principal string, src ModelSource, td spiffeid.TrustDomain) (*Caller, error) {
	switch principal {
	case "":
		return nil, errors.New("empty identity: name one (opus@ct111, ct111.mesh, spiffe://td/path, anonymous)")
	case AnonymousName:
		return anonymous, nil
	case LegacyName:
		return &Caller{Name: LegacyName, Legacy: true}, nil
	}
	if src.Entity != "" {
		if err := identity.ValidateID(src.Entity); err != nil {
			return nil, fmt.Errorf("entity %q: %w", src.Entity, err)
		}
	}
	var sid spiffeid.ID
	if strings.HasPrefix(principal, "spiffe://") {
		var err error
		if sid, err = spiffeid.FromString(principal); err != nil {
			return nil, fmt.Errorf("SPIFFE ID %q: %w", principal, err)
		}
	}
	backend := src.Backend
	switch {
	case backend != "":
	case src.Entity != "":
		backend = "entities"
	case !sid.IsZero() && sid.TrustDomain() != td:
		backend = SourceSPIRE
	default:
		backend = SourceMeshCA
	}
	c := &Caller{Name: principal, Entity: src.Entity, Source: backend}
	switch {
	case backend == SourceMeshCA && src.Entity == "":
		// The mesh CA: a mesh identity, its SPIFFE ID in td.
		id, err := identity.Parse(principal)
		if !sid.IsZero() {
			if sid.TrustDomain() != td {
				return nil, fmt.Errorf("the mesh CA issues SPIFFE IDs of trust domain %q only, not %s: name the source that vouches for it (--source %s)", td.Name(), principal, SourceSPIRE)
			}
			id, err = identity.FromSPIFFEID(sid)
		}
		if err != nil {
			return nil, fmt.Errorf("the mesh CA issues only mesh identities (opus@ct111, ct111.mesh, alice@external), not %q: name the source of its certificate (--source filestore, --source %s, --entity <name>): %w", principal, SourceSPIRE, err)
		}
		c.MeshCA, c.Identity, c.Name = true, id, id.CommonName()
		if s, err := id.SPIFFEID(td); err == nil && !td.IsZero() {
			c.SPIFFEID, c.TrustDomain = s.String(), td
		}
	case backend == SourceMeshCA:
		return nil, fmt.Errorf("the mesh CA (%s) signs for no entity; a partner entity's CA is %q", SourceMeshCA, "entities")
	case backend == SourceSPIRE:
		if sid.IsZero() {
			return nil, fmt.Errorf("the %s source vouches for SPIFFE IDs only, not %q", SourceSPIRE, principal)
		}
		// Its bundle vouches for the ID. The trust domain of meshd's own
		// SVID is the mesh's own (entity ""), as spirebundle makes it; a
		// federated trust domain's entity is its name or the operator's
		// mapping (spirebundle.Config.Entities), which src.Entity names.
		c.SPIFFEID, c.TrustDomain = sid.String(), sid.TrustDomain()
	}
	// Any other source vouches for neither a mesh identity nor a SPIFFE
	// ID, whatever its certificate says: the principal stays a bare CN.
	return c, nil
}
