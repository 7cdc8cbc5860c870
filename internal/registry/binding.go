package registry

import (
	"fmt"
	"strings"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// Authorize checks that peer may act for agentID: its trust source's
// binding lets the certificate speak for that agent, the id lies in the
// peer's entity's namespace, and no other owner, entity or trust source
// claimed it first. A nil peer (TLS off, or a caller without a
// certificate in TLS auto) may act for any agent registered without a
// certificate, and for no other.
func (r *Registry) Authorize(peer *trust.Peer, agentID string) error {
	e := r.locked(agentID)
	if e == nil {
		return r.authorize(peer, agentID, nil)
	}
	defer e.mu.Unlock()
	return r.authorize(peer, agentID, &e.rec)
}

// authorize is the identity binding rule, in one place.
func (r *Registry) authorize(peer *trust.Peer, agentID string, owner *store.Agent) error {
	if peer == nil {
		if owner != nil && owner.Owner != "" {
			return refusal(ErrForbidden, "owned_by_other", "agent id %q was claimed by certificate %q; a caller without a certificate cannot act for it, only that certificate can", agentID, owner.Owner)
		}
		return nil
	}
	if peer.Name() == "" {
		// An owner "" is no owner: such a certificate must claim nothing.
		return refusal(ErrForbidden, "not_agent_cert", "the certificate has neither a common name nor one SPIFFE ID, so it names no agent")
	}
	if err := r.bindingOf(peer.Backend).allows(peer, agentID); err != nil {
		return err
	}
	if err := r.namespaces.Lookup(peer.Backend, peer.Entity).allows(peer.Entity, agentID); err != nil {
		return err
	}
	if owner == nil || owner.Owner == "" {
		return nil
	}
	if owner.Entity != peer.Entity {
		return refusal(ErrForbidden, "owned_by_other_entity", "agent id %q belongs to %s; %s cannot take it", agentID, entityLabel(owner.Entity), entityLabel(peer.Entity))
	}
	// A record from before sources were kept has none: its owner's next
	// heartbeat binds it.
	if owner.Source != "" && owner.Source != peer.Backend {
		return refusal(ErrForbidden, "owned_by_other_source", "agent id %q was claimed with a certificate admitted by trust source %q; one admitted by %q cannot take it, whatever its name (an operator can release the id)", agentID, owner.Source, peer.Backend)
	}
	if owner.Owner != peer.Name() {
		return refusal(ErrForbidden, "owned_by_other", "agent id %q is owned by %q; %q cannot take it (its owner can DELETE it first)", agentID, owner.Owner, peer.Name())
	}
	return nil
}

// bindingOf returns the binding of trust source backend: the configured
// one, else exact CN.
func (r *Registry) bindingOf(backend string) Binding {
	if b, ok := r.cfg.Bindings[backend]; ok {
		return b
	}
	return Binding{CN: true}
}

// soleID returns the one agent id peer's certificate may speak for, when
// its binding names exactly one (an exact CN, a mesh agent identity), so
// an unchanged heartbeat can be found without parsing its body.
func (r *Registry) soleID(peer *trust.Peer) (string, bool) {
	b := r.bindingOf(peer.Backend)
	if !b.CN || (b.CNReplicas && peer.Identity.IsZero()) {
		return "", false
	}
	id, err := meshauth.AgentID(peer)
	if err != nil {
		return "", false
	}
	if b.TrustDomain != "" {
		if _, ok := trustDomainName(peer.Leaf.Subject.CommonName, b.TrustDomain); ok {
			return "", false
		}
	}
	for _, t := range b.SPIFFE {
		if _, _, ok := t.Match(peer.Leaf); ok {
			return "", false
		}
	}
	return id, true
}

// ownerNode returns the node of an owner's common name: "ct111" for the
// mesh agent identity "opus@ct111", "" for a name that is not one.
func ownerNode(owner string) string {
	if _, node, ok := strings.Cut(owner, "@"); !ok || node == identity.ExternalNode {
		return ""
	}
	id, err := identity.Parse(owner)
	if err != nil || id.Kind != identity.KindAgent {
		return ""
	}
	return id.Node
}

// ownerLabel describes the owner of rec, for the audit log.
func ownerLabel(rec *store.Agent) string {
	if rec.Owner == "" {
		return "no owner (no certificate)"
	}
	node := ""
	if n := ownerNode(rec.Owner); n != "" {
		node = " (node " + n + ")"
	}
	return fmt.Sprintf("owner %q%s, %s, trust source %q", rec.Owner, node, entityLabel(rec.Entity), rec.Source)
}

func entityLabel(e string) string {
	if e == "" {
		return "the mesh's own CA"
	}
	return fmt.Sprintf("entity %q", e)
}
