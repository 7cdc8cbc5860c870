package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// effect is what applying one event did, for the admin request that
// caused it to report.
type effect struct{ evicted, closed int }

// effects holds the effect of each applied event until the admin request
// that wrote it takes it. Keys are "<kind> <name>".
type effects struct {
	mu sync.Mutex
	m  map[string]effect
}

func (e *effects) add(key string, eff effect) {
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]effect{}
	}
	cur := e.m[key]
	e.m[key] = effect{evicted: cur.evicted + eff.evicted, closed: cur.closed + eff.closed}
	e.mu.Unlock()
}

func (e *effects) take(key string) effect {
	e.mu.Lock()
	defer e.mu.Unlock()
	eff := e.m[key]
	delete(e.m, key)
	return eff
}

// applyEvent is meshd's subscriber to the change feed: it makes one change
// recorded in the store take effect in this process, whichever process
// recorded it (an admin request here, an offline meshctl, a replica). Each
// case is idempotent.
func (s *Server) applyEvent(ctx context.Context, e store.Event) error {
	switch e.Kind {
	case store.EventCertRevoked:
		s.effects.add("cert.revoked "+e.CommonName, s.applyCertRevocation(ctx, e))
		if s.crl != nil {
			s.crl.Kick()
		}
	case store.EventIdentityRevoked:
		s.effects.add("cert.revoked "+e.CommonName, s.applyIdentityRevocation(ctx, e))
	case store.EventIdentityReinstated:
		if s.revs.RemoveIdentity(e.CommonName) {
			s.log.Info("identity reinstated", "identity", e.CommonName)
		}
	case store.EventEntityRevoked:
		// An entity registered again since this event is trusted: its
		// current record decides.
		if cur, err := s.st.Entity(ctx, e.Entity); err == nil && !cur.Revoked() {
			return nil
		}
		s.effects.add("entity.revoked "+e.Entity, s.applyEntityRevocation(ctx, e))
	case store.EventEntityRegistered:
		return s.applyEntityRegistration(ctx, e.Entity)
	case store.EventEntityRotated:
		if s.reg == nil {
			return nil
		}
		n, err := s.reg.Rotate(ctx, e.Entity)
		s.effects.add("entity.rotated "+e.Entity, effect{evicted: n})
		return err
	case store.EventCARotated:
		return s.reloadCA(ctx)
	case store.EventPolicySet:
		if e.CommonName == AdminPolicy {
			return s.loadAdminPolicy(ctx)
		}
	}
	return nil
}

// applyCertRevocation makes one certificate's revocation take effect:
// refused from now on, its agents evicted, its open connections closed.
func (s *Server) applyCertRevocation(ctx context.Context, e store.Event) effect {
	reason := ca.Reason(e.Reason).String()
	added := s.revs.AddSerial(trust.Revoked{Serial: e.Serial, IssuerKeyID: e.IssuerKeyID, Reason: reason, At: e.Time})
	if e.KeyHash != "" && s.revs.AddKey(trust.Revoked{KeyHash: e.KeyHash, Reason: reason, At: e.Time}) {
		added = true
	}
	if !added {
		return effect{}
	}
	match := func(p *trust.Peer) bool {
		return p.Serial == e.Serial && p.IssuerKeyID == e.IssuerKeyID ||
			e.KeyHash != "" && trust.KeyHash(p.Leaf.RawSubjectPublicKeyInfo) == e.KeyHash
	}
	// The store knows the certificate (it is the CA's own), so its agents
	// are found by fingerprint: a serial alone is unique only per issuer.
	evict := func(ctx context.Context) ([]registry.Evicted, error) {
		rec, err := s.st.Cert(ctx, e.Serial)
		if err != nil {
			return nil, err
		}
		return s.reg.EvictFingerprints(ctx, map[string]bool{rec.Fingerprint: true}, fmt.Sprintf("certificate %s (serial %s) revoked: %s", e.CommonName, e.Serial, reason))
	}
	return s.cutOff(ctx, "certificate_revoked", match, evict, "certificate revoked",
		"identity", e.CommonName, "serial", e.Serial, "reason", reason, "key_revoked", e.KeyHash != "")
}

// applyIdentityRevocation makes an identity's revocation take effect:
// every certificate of it (for a node, of its agents too) refused, issued
// before or after, its agents evicted and their connections closed.
func (s *Server) applyIdentityRevocation(ctx context.Context, e store.Event) effect {
	name := e.CommonName
	if !s.revs.AddIdentity(trust.Revoked{Identity: name, Reason: ca.Reason(e.Reason).String(), At: e.Time}) {
		return effect{}
	}
	match := func(p *trust.Peer) bool { return slices.Contains(store.BlockingNames(p.Name()), name) }
	evict := func(ctx context.Context) ([]registry.Evicted, error) {
		return s.reg.EvictIdentity(ctx, name, fmt.Sprintf("identity %s revoked", name))
	}
	return s.cutOff(ctx, "identity_revoked", match, evict, "identity revoked", "identity", name)
}

// applyEntityRevocation makes an entity's revocation take effect: its
// certificates refused, its agents evicted, their connections closed.
func (s *Server) applyEntityRevocation(ctx context.Context, e store.Event) effect {
	name := e.Entity
	if !s.revs.AddEntity(trust.Revoked{Entity: name, Reason: "entity revoked", At: e.Time}) {
		return effect{}
	}
	// Its CA moves to the revoked anchors, last in the chain, so its
	// certificates are refused as entity_revoked rather than unknown_ca.
	if certs := s.entities.Certificates(name); len(certs) > 0 {
		s.revoked.Set(name, certs)
		s.entities.Remove(name)
	}
	return s.cutOff(ctx, "entity_revoked", entityPeer(name), s.entityEviction(name, fmt.Sprintf("entity %q revoked", name)), "entity revoked", "entity", name)
}

// applyEntityRegistration trusts the entity as the store now records it.
// When its CA was replaced, the old CA's certificates no longer verify: its
// agents must register again with certificates from the new one.
func (s *Server) applyEntityRegistration(ctx context.Context, name string) error {
	e, err := s.st.Entity(ctx, name)
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
	prev := s.entities.Certificates(name)
	replaced := len(prev) > 0 && trust.Fingerprint(prev[0]) != e.Fingerprint
	s.namespaces.Set(BackendEntities, name, storedNamespace(e))
	s.entities.Set(name, certs)
	s.revoked.Remove(name)
	s.revs.RemoveEntity(name)
	if !replaced || s.reg == nil {
		return nil
	}
	s.cutOff(ctx, "entity_ca_replaced", entityPeer(name),
		s.entityEviction(name, fmt.Sprintf("entity %q's CA was replaced; register again with a certificate from the new CA", name)),
		"entity CA replaced", "entity", name)
	return nil
}

// entityPeer matches the peers of entity name.
func entityPeer(name string) func(*trust.Peer) bool {
	return func(p *trust.Peer) bool { return p.Entity == name }
}

// entityEviction evicts the agents of entity name, for reason.
func (s *Server) entityEviction(name, reason string) func(context.Context) ([]registry.Evicted, error) {
	return func(ctx context.Context) ([]registry.Evicted, error) { return s.reg.EvictEntity(ctx, name, reason) }
}

// cutOff makes a loss of trust take effect: open connections whose peer
// matches are closed, evict's agents are evicted (once the registry is
// up), and the effect is counted under cause and logged as msg with args.
func (s *Server) cutOff(ctx context.Context, cause string, match func(*trust.Peer) bool, evict func(context.Context) ([]registry.Evicted, error), msg string, args ...any) effect {
	eff := effect{closed: s.agentAuth.CloseWhere(func(c *meshauth.Caller) bool { return c.Peer != nil && match(c.Peer) })}
	if s.reg == nil {
		return eff // still loading
	}
	ev, err := evict(ctx)
	if err != nil {
		s.log.Error(msg+": evicting its agents failed", append(args, "err", err)...)
	}
	eff.evicted = len(ev)
	s.countEffect(cause, eff)
	s.log.Info(msg, append(args, "agents_evicted", eff.evicted, "connections_closed", eff.closed)...)
	return eff
}

// reloadCA follows a rotation of the CA's intermediates: the new active
// one signs, the trust anchors and the CRLs cover every live one.
func (s *Server) reloadCA(ctx context.Context) error {
	if s.auth == nil {
		return nil
	}
	if err := s.auth.Reload(ctx); err != nil {
		return fmt.Errorf("reload the CA after a rotation: %w", err)
	}
	if s.localCA != nil {
		s.localCA.SetAnchors(s.auth.Root(), s.auth.Intermediates())
	}
	if _, err := s.auth.RebuildCRL(ctx); err != nil {
		return fmt.Errorf("rebuild the CRL after a rotation: %w", err)
	}
	s.log.Info("CA reloaded", "active_intermediate", s.auth.ActiveIntermediate().Subject.CommonName, "live_intermediates", len(s.auth.Intermediates()))
	return nil
}

func (s *Server) countEffect(reason string, eff effect) {
	if s.metrics == nil {
		return
	}
	s.metrics.evictions.WithLabelValues(reason).Add(float64(eff.evicted))
	s.metrics.closedConns.Add(float64(eff.closed))
}
