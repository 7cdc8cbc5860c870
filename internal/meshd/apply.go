package meshd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/events"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// effects holds the effect of each applied event until the admin request
// that wrote it takes it. Keys are "<kind> <name>". Its mutex is a leaf.
type effects struct {
	mu sync.Mutex
	m  map[string]server.Effect
}

func (e *effects) add(key string, eff server.Effect) {
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]server.Effect{}
	}
	cur := e.m[key]
	e.m[key] = server.Effect{Evicted: cur.Evicted + eff.Evicted, Closed: cur.Closed + eff.Closed, Agents: append(cur.Agents, eff.Agents...)}
	e.mu.Unlock()
}

func (e *effects) take(key string) server.Effect {
	e.mu.Lock()
	defer e.mu.Unlock()
	eff := e.m[key]
	delete(e.m, key)
	return eff
}

// feed is the change feed as the routes see it (server.Feed).
type feed struct{ m *Meshd }

func (f feed) Poll(ctx context.Context) (int, error) { return f.m.events.Poll(ctx) }
func (f feed) Reader(after int64) *events.Reader     { return f.m.events.Reader(after) }
func (f feed) Pending() int                          { return f.m.events.Pending() }
func (f feed) Synced() (time.Time, int64)            { return f.m.events.Synced() }
func (f feed) Take(key string) server.Effect         { return f.m.effects.take(key) }

// apply is meshd's subscriber to the change feed: it makes one change
// recorded in the store take effect in this process, whichever process
// recorded it (an admin request here, an offline meshctl, a replica). Each
// case is idempotent.
func (m *Meshd) apply(ctx context.Context, e store.Event) error {
	eff, err := m.applyEvent(ctx, e)
	if err == nil {
		// Once it took effect: the console's live pages, and what each
		// revocation evicted.
		m.changes.Applied(e, eff)
	}
	return err
}

// applyEvent makes e take effect and returns what it did.
func (m *Meshd) applyEvent(ctx context.Context, e store.Event) (server.Effect, error) {
	var eff server.Effect
	switch e.Kind {
	case store.EventCertRevoked:
		eff = m.applyCertRevocation(ctx, e)
		m.effects.add("cert.revoked "+e.CommonName, eff)
		if m.crl != nil {
			m.crl.Kick()
		}
	case store.EventIdentityRevoked:
		eff = m.applyIdentityRevocation(ctx, e)
		m.effects.add("cert.revoked "+e.CommonName, eff)
	case store.EventIdentityReinstated:
		if m.revs.RemoveIdentity(e.CommonName) {
			m.log.Info("identity reinstated", "identity", e.CommonName)
		}
	case store.EventEntityRevoked:
		// An entity registered again since this event is trusted: its
		// current record decides.
		if cur, err := m.st.Entity(ctx, e.Entity); err == nil && !cur.Revoked() {
			return eff, nil
		}
		eff = m.applyEntityRevocation(ctx, e)
		m.effects.add("entity.revoked "+e.Entity, eff)
	case store.EventEntityRegistered:
		return eff, m.applyEntityRegistration(ctx, e.Entity)
	case store.EventEntityRotated:
		if m.reg == nil {
			return eff, nil
		}
		n, err := m.reg.Rotate(ctx, e.Entity)
		m.effects.add("entity.rotated "+e.Entity, server.Effect{Evicted: n})
		return eff, err
	case store.EventCARotated:
		return eff, m.reloadCA(ctx)
	case store.EventPolicySet:
		if e.CommonName == server.AdminPolicy && m.srv != nil {
			return eff, m.srv.LoadAdminPolicy(ctx)
		}
	}
	return eff, nil
}

// applyCertRevocation makes one certificate's revocation take effect:
// refused from now on, its agents evicted, its open connections closed.
func (m *Meshd) applyCertRevocation(ctx context.Context, e store.Event) server.Effect {
	reason := ca.Reason(e.Reason).String()
	added := m.revs.AddSerial(trust.Revoked{Serial: e.Serial, IssuerKeyID: e.IssuerKeyID, Reason: reason, At: e.Time})
	if e.KeyHash != "" && m.revs.AddKey(trust.Revoked{KeyHash: e.KeyHash, Reason: reason, At: e.Time}) {
		added = true
	}
	if !added {
		return server.Effect{}
	}
	match := func(p *trust.Peer) bool {
		return p.Serial == e.Serial && p.IssuerKeyID == e.IssuerKeyID ||
			e.KeyHash != "" && trust.KeyHash(p.Leaf.RawSubjectPublicKeyInfo) == e.KeyHash
	}
	// The store knows the certificate (it is the CA's own), so its agents
	// are found by fingerprint: a serial alone is unique only per issuer.
	evict := func(ctx context.Context) ([]registry.Evicted, error) {
		rec, err := m.st.Cert(ctx, e.Serial)
		if err != nil {
			return nil, err
		}
		return m.reg.EvictFingerprints(ctx, map[string]bool{rec.Fingerprint: true}, fmt.Sprintf("certificate %s (serial %s) revoked: %s", e.CommonName, e.Serial, reason))
	}
	return m.cutOff(ctx, "certificate_revoked", e.Time, match, evict, "certificate revoked",
		"identity", e.CommonName, "serial", e.Serial, "reason", reason, "key_revoked", e.KeyHash != "")
}

// applyIdentityRevocation makes an identity's revocation take effect:
// every certificate of it (for a node, of its agents too) refused, issued
// before or after, its agents evicted and their connections closed.
func (m *Meshd) applyIdentityRevocation(ctx context.Context, e store.Event) server.Effect {
	name := e.CommonName
	if !m.revs.AddIdentity(trust.Revoked{Identity: name, Reason: ca.Reason(e.Reason).String(), At: e.Time}) {
		return server.Effect{}
	}
	match := func(p *trust.Peer) bool { return slices.Contains(store.BlockingNames(p.Name()), name) }
	evict := func(ctx context.Context) ([]registry.Evicted, error) {
		return m.reg.EvictIdentity(ctx, name, fmt.Sprintf("identity %s revoked", name))
	}
	return m.cutOff(ctx, "identity_revoked", e.Time, match, evict, "identity revoked", "identity", name)
}

// applyEntityRevocation makes an entity's revocation take effect: its
// certificates refused, its agents evicted, their connections closed.
func (m *Meshd) applyEntityRevocation(ctx context.Context, e store.Event) server.Effect {
	name := e.Entity
	if !m.revs.AddEntity(trust.Revoked{Entity: name, Reason: "entity revoked", At: e.Time}) {
		return server.Effect{}
	}
	// Its CA moves to the revoked anchors, last in the chain, so its
	// certificates are refused as entity_revoked rather than unknown_ca.
	if certs := m.entities.Certificates(name); len(certs) > 0 {
		m.revoked.Set(name, certs)
		m.entities.Remove(name)
	}
	return m.cutOff(ctx, "entity_revoked", e.Time, entityPeer(name), m.entityEviction(name, fmt.Sprintf("entity %q revoked", name)), "entity revoked", "entity", name)
}

// applyEntityRegistration trusts the entity as the store now records it.
// When its CA was replaced, the old CA's certificates no longer verify: its
// agents must register again with certificates from the new one.
func (m *Meshd) applyEntityRegistration(ctx context.Context, name string) error {
	e, err := m.st.Entity(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if e.Revoked() {
		return nil // revoked again since; its revocation event follows
	}
	certs, err := pemfile.ParseCerts(e.CAPEM)
	if err != nil {
		return fmt.Errorf("entity %q: stored CA does not parse: %w", name, err)
	}
	prev := m.entities.Certificates(name)
	replaced := len(prev) > 0 && trust.Fingerprint(prev[0]) != e.Fingerprint
	m.namespaces.Set(BackendEntities, name, server.StoredNamespace(e))
	m.entities.Set(name, certs)
	m.revoked.Remove(name)
	m.revs.RemoveEntity(name)
	if !replaced || m.reg == nil {
		return nil
	}
	m.cutOff(ctx, "entity_ca_replaced", time.Time{}, entityPeer(name),
		m.entityEviction(name, fmt.Sprintf("entity %q's CA was replaced; register again with a certificate from the new CA", name)),
		"entity CA replaced", "entity", name)
	return nil
}

// entityPeer matches the peers of entity name.
func entityPeer(name string) func(*trust.Peer) bool {
	return func(p *trust.Peer) bool { return p.Entity == name }
}

// entityEviction evicts the agents of entity name, for reason.
func (m *Meshd) entityEviction(name, reason string) func(context.Context) ([]registry.Evicted, error) {
	return func(ctx context.Context) ([]registry.Evicted, error) { return m.reg.EvictEntity(ctx, name, reason) }
}

// cutOff makes a loss of trust take effect: open connections whose peer
// matches are closed, evict's agents are evicted (once the registry is
// up), and the effect is counted under cause and logged as msg with args.
// revokedAt is the revocation's time in the store (zero for a loss of
// trust that is no revocation): how long it took to take effect here is
// observed in meshd_revocation_eviction_seconds.
func (m *Meshd) cutOff(ctx context.Context, cause string, revokedAt time.Time, match func(*trust.Peer) bool, evict func(context.Context) ([]registry.Evicted, error), msg string, args ...any) server.Effect {
	if m.srv == nil {
		return server.Effect{} // still loading
	}
	eff := server.Effect{Closed: m.srv.CloseWhere(match)}
	ev, err := evict(ctx)
	if err != nil {
		m.log.Error(msg+": evicting its agents failed", append(args, "err", err)...)
	}
	eff.Evicted = len(ev)
	for _, a := range ev {
		eff.Agents = append(eff.Agents, a.AgentID)
	}
	m.obs.observeEviction(cause, revokedAt, m.cfg.Now())
	m.srv.CountEvictions(cause, eff)
	m.log.Info(msg, append(args, "agents_evicted", eff.Evicted, "connections_closed", eff.Closed)...)
	return eff
}

// reloadCA follows a rotation of the CA's intermediates: the new active
// one signs, the trust anchors and the CRLs cover every live one.
func (m *Meshd) reloadCA(ctx context.Context) error {
	if m.auth == nil {
		return nil
	}
	if err := m.auth.Reload(ctx); err != nil {
		return fmt.Errorf("reload the CA after a rotation: %w", err)
	}
	if m.localCA != nil {
		m.localCA.SetAnchors(m.auth.Root(), m.auth.Intermediates())
	}
	if m.srv != nil {
		// Before the event reaches the revocation streams (the feed
		// publishes it once every handler ran): they tell subscribers
		// of the intermediates it left tainted, and the answers to those
		// intermediates' leaves carry Meshtrust-Renew-After from now on.
		m.srv.ReloadTaint()
	}
	if m.serving != nil {
		// A taint, or a revoked intermediate, makes meshd's own serving
		// certificate due now.
		m.serving.poke()
	}
	if _, err := m.auth.RebuildCRL(ctx); err != nil {
		return fmt.Errorf("rebuild the CRL after a rotation: %w", err)
	}
	m.log.Info("CA reloaded", "active_intermediate", m.auth.ActiveIntermediate().Subject.CommonName, "live_intermediates", len(m.auth.Intermediates()), "tainted_intermediates", len(m.auth.TaintedIssuers()))
	return nil
}
