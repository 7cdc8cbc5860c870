package registry

import (
	"fmt"
	"strings"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// Authorize checks that peer may act for agentID: the certificate names
// that agent, the id lies in the peer's entity's namespace, and no other
// owner or entity claimed it first. A nil peer (TLS off) may act for any
// agent.
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
			return refusal(ErrForbidden, "owned_by_other", "agent id %q is owned by %q; only its certificate may act for it", agentID, owner.Owner)
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
	if owner.Owner != peer.Name() {
		return refusal(ErrForbidden, "owned_by_other", "agent id %q is owned by %q; %q cannot take it (its owner can DELETE it first)", agentID, owner.Owner, peer.Name())
	}
	return nil
}

func entityLabel(e string) string {
	if e == "" {
		return "the mesh's own CA"
	}
	return fmt.Sprintf("entity %q", e)
}
