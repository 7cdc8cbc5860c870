package registry

import (
	"fmt"
	"strings"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// Authorize checks that peer may act for agentID: the certificate names
// that agent, the id lies in the peer's entity's namespace, and no other
// owner, entity or trust source claimed it first. A nil peer (TLS off)
// (TLS off, or a caller without a certificate in TLS auto) may act for
// any agent registered without a certificate, and for no other.
func (r *Registry) Authorize(peer *trust.Peer, agentID string) error {
	e := r.locked(agentID)
	if e == nil {
		return authorize(peer, agentID, nil)
	}
	defer e.mu.Unlock()
	return authorize(peer, agentID, &e.rec)
}

// authorize is the identity binding rule, in one place.
func authorize(peer *trust.Peer, agentID string, owner *store.Agent) error {
	if peer == nil {
		if owner != nil && owner.Owner != "" {
			return refusal(ErrForbidden, "owned_by_other", "agent id %q was claimed by certificate %q; a caller without a certificate cannot act for it, only that certificate can", agentID, owner.Owner)
		}
		return nil
	}
	allowed, err := peer.AgentID()
	if err != nil {
		return refusal(ErrForbidden, "not_agent_cert", "%v", err)
	}
	if allowed != agentID {
		return refusal(ErrForbidden, "identity_mismatch", "certificate %q may only speak for agent %q, not %q", peer.Name(), allowed, agentID)
	}
	if peer.Entity != "" && !strings.HasPrefix(agentID, peer.Entity+"-") {
		return refusal(ErrForbidden, "outside_namespace", "entity %q may only register agent ids starting with %q; %q is outside its namespace", peer.Entity, peer.Entity+"-", agentID)
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
		return "no owner (TLS off)"
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
