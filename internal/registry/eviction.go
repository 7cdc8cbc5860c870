package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// Delete removes an agent on behalf of peer, which must own it.
func (r *Registry) Delete(ctx context.Context, peer *trust.Peer, id string) error {
	return r.deleteEntry(ctx, peer, id, r.lookup(id))
}

// deleteEntry deletes e, the entry the caller looked up for id, or the
// entry that replaced it before its lock was won: the owner is checked,
// and the store row deleted, for the entry that holds id now.
func (r *Registry) deleteEntry(ctx context.Context, peer *trust.Peer, id string, e *entry) error {
	return r.remove(ctx, id, e, func(rec *store.Agent) (string, error) {
		if rec == nil {
			// Binding first, so a certificate cannot probe which other
			// ids exist.
			if err := r.authorize(peer, id, nil); err != nil {
				return "", err
			}
			return "", refusal(ErrUnknown, "unknown_agent", "agent %q is not registered", id)
		}
		if err := r.authorize(peer, id, rec); err != nil {
			return "", err
		}
		if peer == nil {
			return "by anonymous (TLS off)", nil
		}
		return "by " + peer.Name(), nil
	}, "agent.delete")
}

// Release frees agent id, whoever owns it, for the next certificate that
// claims it: an operator's answer to an id claimed by the wrong
// certificate (another node's, say), whose owner will not delete it. by
// names the operator for the audit entry ("agent.release"), which records
// the owner the id had.
func (r *Registry) Release(ctx context.Context, id, by string) error {
	return r.remove(ctx, id, r.lookup(id), func(rec *store.Agent) (string, error) {
		if rec == nil {
			return "", refusal(ErrUnknown, "unknown_agent", "agent %q is not registered", id)
		}
		return fmt.Sprintf("by %s; it was held by %s", by, ownerLabel(rec)), nil
	}, "agent.release")
}

// remove deletes the entry of id (e, or the one that replaced it) if
// check, given its record (nil when id is not registered), allows it, and
// audits action with the detail check returns.
func (r *Registry) remove(ctx context.Context, id string, e *entry, check func(*store.Agent) (string, error), action string) error {
	detail, err := r.removeLocked(ctx, id, e, check, action)
	if err == nil {
		r.changed(Change{Kind: ChangeRemoved, AgentID: id, Reason: detail})
	}
	return err
}

// removeLocked is remove under the locks, and returns the audit detail.
func (r *Registry) removeLocked(ctx context.Context, id string, e *entry, check func(*store.Agent) (string, error), action string) (string, error) {
	r.lockWrites()
	defer r.writeMu.Unlock()
	e = r.relock(id, e)
	if e == nil {
		_, err := check(nil)
		return "", err
	}
	defer e.mu.Unlock()
	detail, err := check(&e.rec)
	if err != nil {
		return "", err
	}
	err = r.st.DeleteAgent(ctx, id, store.AuditEntry{Time: r.cfg.Now(), Action: action, Identity: id, Outcome: store.OutcomeOK, Detail: detail})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return "", err
	}
	r.drop(id, e)
	return detail, nil
}

// Evicted is an agent the registry evicted.
type Evicted struct {
	AgentID         string
	CertFingerprint string
	CertSerial      string
}

// EvictEntity evicts every agent of entity.
func (r *Registry) EvictEntity(ctx context.Context, entity, reason string) ([]Evicted, error) {
	return r.evict(ctx, func(rec *store.Agent) bool { return rec.Entity == entity }, reason)
}

// EvictIdentity evicts every agent claimed by a certificate whose common
// name is name. A node identity ("ct200.mesh") also covers the agent
// identities of that node ("x@ct200"), so evicting a node evicts the
// agents it runs.
func (r *Registry) EvictIdentity(ctx context.Context, name, reason string) ([]Evicted, error) {
	node := ""
	if id, err := identity.Parse(name); err == nil && id.Kind == identity.KindNode {
		node = id.Node
	}
	return r.evict(ctx, func(rec *store.Agent) bool {
		if rec.Owner == name {
			return true
		}
		if node == "" {
			return false
		}
		owner, err := identity.Parse(rec.Owner)
		return err == nil && owner.Kind == identity.KindAgent && owner.Node == node
	}, reason)
}

// EvictFingerprints evicts the agents registered with any of the
// certificates whose fingerprints are given.
func (r *Registry) EvictFingerprints(ctx context.Context, fps map[string]bool, reason string) ([]Evicted, error) {
	return r.evict(ctx, func(rec *store.Agent) bool { return fps[rec.CertFingerprint] }, reason)
}

func (r *Registry) evict(ctx context.Context, match func(*store.Agent) bool, reason string) ([]Evicted, error) {
	out, err := r.evictLocked(ctx, match, reason)
	// Memory evicted them (refused from now on), whatever the store's
	// write did.
	for _, ev := range out {
		r.changed(Change{Kind: ChangeEvicted, AgentID: ev.AgentID, Reason: reason})
	}
	return out, err
}

// evictLocked is evict under the locks.
func (r *Registry) evictLocked(ctx context.Context, match func(*store.Agent) bool, reason string) ([]Evicted, error) {
	var (
		out  []Evicted
		recs []store.Agent
	)
	r.lockWrites()
	defer r.writeMu.Unlock()
	for _, e := range r.snapshot() {
		e.mu.Lock()
		if !e.gone && match(&e.rec) && e.rec.Status != StatusEvicted {
			e.rec.Status, e.rec.Reason = StatusEvicted, reason
			e.rec.Version = r.bump(e.rec.Version)
			recs = append(recs, e.rec)
			out = append(out, Evicted{AgentID: e.rec.ID, CertFingerprint: e.rec.CertFingerprint, CertSerial: e.rec.CertSerial})
		}
		e.mu.Unlock()
	}
	if len(recs) == 0 {
		return nil, nil
	}
	r.topology.Add(1)
	r.hooks.afterCopy()
	if err := r.st.PutAgents(ctx, recs); err != nil {
		// Memory has evicted them already (refused from now on): the
		// store must follow, or another replica, or this one restarted,
		// would list them healthy. Flush writes dirty records, and marks
		// them dirty again each time it fails, so the write is retried
		// every FlushInterval until it succeeds.
		for _, rec := range recs {
			r.markDirty(rec.ID)
		}
		return out, fmt.Errorf("record evictions (retried with every flush until written): %w", err)
	}
	return out, nil
}

// Rotate marks the agents of entity (every agent when entity is "") as due
// to re-register with a fresh certificate, and returns how many.
func (r *Registry) Rotate(ctx context.Context, entity string) (int, error) {
	now := r.cfg.Now()
	var recs []store.Agent
	r.lockWrites()
	defer r.writeMu.Unlock()
	for _, e := range r.snapshot() {
		e.mu.Lock()
		if !e.gone && (entity == "" || e.rec.Entity == entity) && e.rec.Status != StatusEvicted {
			e.rec.RotateFrom = now
			e.rec.Version = r.bump(e.rec.Version)
			recs = append(recs, e.rec)
		}
		e.mu.Unlock()
	}
	if len(recs) == 0 {
		return 0, nil
	}
	r.hooks.afterCopy()
	if err := r.st.PutAgents(ctx, recs); err != nil {
		return 0, fmt.Errorf("record rotation: %w", err)
	}
	return len(recs), nil
}
