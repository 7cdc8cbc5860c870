package meshd

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/trust"
)

// noteTrustChange is called when a backend's anchors change.
func (m *Meshd) noteTrustChange() {
	select {
	case m.trustChanged <- struct{}{}:
	default:
	}
}

// watchTrust re-verifies open connections and registered agents' entities
// after a backend's anchors change (a file removed from the trust dir),
// evicting what is no longer trusted.
func (m *Meshd) watchTrust(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.trustChanged:
			m.sweepTrust(ctx)
		}
	}
}

func (m *Meshd) sweepTrust(ctx context.Context) {
	refused := map[string]bool{}
	closed := 0
	for _, fp := range m.srv.CloseUntrusted(ctx) {
		refused[fp] = true
		closed++
	}
	// Registered agents whose certificate no longer verifies lose their
	// standing even if they have no connection open right now; so do the
	// agents of entities no backend knows any more (those meshd has not
	// seen a certificate of since it started).
	for fp := range m.admitted.refused(ctx, m.chain) {
		refused[fp] = true
	}
	known := map[string]bool{}
	for _, b := range m.dynamic {
		for _, e := range b.Entities() {
			known[e] = true
		}
	}
	for _, e := range m.entities.Entities() {
		known[e] = true
	}
	var gone []string
	for _, v := range m.reg.List(registry.Filter{}) {
		if v.EntityID != "" && !known[v.EntityID] && v.Status != registry.StatusEvicted && !slices.Contains(gone, v.EntityID) {
			gone = append(gone, v.EntityID)
		}
	}
	evicted := 0
	for _, e := range gone {
		ev, err := m.reg.EvictEntity(ctx, e, fmt.Sprintf("entity %q is no longer trusted", e))
		if err != nil {
			m.log.Error("evict agents of a removed entity", "entity", e, "err", err)
		}
		evicted += len(ev)
	}
	ev, err := m.reg.EvictFingerprints(ctx, refused, "certificate no longer trusted")
	if err != nil {
		m.log.Error("evict agents whose certificate lost trust", "err", err)
	}
	evicted += len(ev)
	m.srv.CountEvictions("trust_changed", server.Effect{Evicted: evicted, Closed: closed})
	if evicted+closed > 0 {
		m.log.Info("trust anchors changed", "agents_evicted", evicted, "connections_closed", closed, "entities_gone", gone)
	}
}

// admittedChains remembers the chain each admitted certificate presented,
// by leaf fingerprint, so that a change of trust anchors re-verifies the
// agents registered with them (sweepTrust), connected or not. Entries are
// dropped when they stop verifying, and when their leaf expires; past
// maxAdmitted live certificates new ones are not remembered (their agents
// are still re-verified through their connections and entities). Its
// mutex is a leaf; add, on every request with a certificate, takes it
// for reading only when the chain is remembered already.
type admittedChains struct {
	mu     sync.RWMutex
	chains map[string][]*x509.Certificate
}

// maxAdmitted bounds the remembered chains.
const maxAdmitted = 1 << 16

// add remembers chain, admitted at now.
func (a *admittedChains) add(fp string, chain []*x509.Certificate, now time.Time) {
	a.mu.RLock()
	_, ok := a.chains[fp]
	a.mu.RUnlock()
	if ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.chains[fp]; ok {
		return
	}
	if a.chains == nil {
		a.chains = map[string][]*x509.Certificate{}
	}
	if len(a.chains) >= maxAdmitted {
		for k, c := range a.chains {
			if now.After(c[0].NotAfter) {
				delete(a.chains, k)
			}
		}
		if len(a.chains) >= maxAdmitted {
			return
		}
	}
	a.chains[fp] = chain
}

// refused verifies every remembered chain again and returns, forgotten,
// the fingerprints of those the chain now refuses. A certificate refused
// only because it expired (its anchors still vouch for it: the chain
// checks anchors before the validity window) is forgotten but not
// returned: it did not lose trust, and an X.509-SVID that rotated away
// and expired is not an agent the trust change evicted.
func (a *admittedChains) refused(ctx context.Context, chain *trust.Chain) map[string]bool {
	a.mu.Lock()
	snapshot := make(map[string][]*x509.Certificate, len(a.chains))
	for fp, c := range a.chains {
		snapshot[fp] = c
	}
	a.mu.Unlock()
	out, forget := map[string]bool{}, map[string]bool{}
	for fp, c := range snapshot {
		if _, err := chain.Verify(ctx, c); err != nil {
			forget[fp] = true
			if trust.Reason(err) != trust.ReasonExpired {
				out[fp] = true
			}
		}
	}
	a.mu.Lock()
	for fp := range forget {
		delete(a.chains, fp)
	}
	a.mu.Unlock()
	return out
}
