package trust

import (
	"bytes"
	"context"
	"crypto/x509"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
)

// LocalCA trusts the mesh CA: its root, with its live intermediates known
// even when a peer presents only its leaf. Every certificate it admits
// must carry a mesh identity whose SPIFFE ID is in the trust domain.
type LocalCA struct {
	td spiffeid.TrustDomain

	mu            sync.RWMutex
	roots         *x509.CertPool
	intermediates []*x509.Certificate
	notify        notifier
}

// NewLocalCA returns a backend trusting root and intermediates.
func NewLocalCA(td spiffeid.TrustDomain, root *x509.Certificate, intermediates []*x509.Certificate) *LocalCA {
	l := &LocalCA{td: td}
	l.SetAnchors(root, intermediates)
	return l
}

// Name returns "localca".
func (*LocalCA) Name() string { return "localca" }

// SetAnchors replaces the root and intermediates, after a rotation.
func (l *LocalCA) SetAnchors(root *x509.Certificate, intermediates []*x509.Certificate) {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	l.mu.Lock()
	l.roots, l.intermediates = roots, intermediates
	l.mu.Unlock()
	l.notify.fire()
}

// OnChange registers fn to run when the anchors change.
func (l *LocalCA) OnChange(fn func()) { l.notify.add(fn) }

// Verify implements Backend.
func (l *LocalCA) Verify(_ context.Context, chain []*x509.Certificate, now time.Time) (*Peer, error) {
	l.mu.RLock()
	roots, inter := l.roots, l.intermediates
	l.mu.RUnlock()
	// Only the CA's own live intermediates may stand between the root and
	// the leaf: those the peer presents are left out, so a chain through
	// an intermediate the CA revoked (or never listed) finds no path,
	// whatever the peer sends. The mesh CA's root signs intermediates of
	// path length 0 only, so no path needs another.
	full := chain
	if len(chain) > 0 {
		full = append(append(make([]*x509.Certificate, 0, 1+len(inter)), chain[0]), inter...)
	}
	chains, err := verifyChain(full, roots, now)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	id, err := identity.FromCertificate(leaf, l.td)
	if err != nil {
		return nil, refuse(ErrUntrusted, ReasonBadIdentity, "certificate %q: %v", DisplayName(leaf), err)
	}
	p := newPeer(l.Name(), leaf)
	p.Identity = id
	// FromCertificate checked that the one URI SAN is id's SPIFFE ID in
	// the mesh's trust domain.
	p.MeshCA = true
	p.SPIFFEID, _ = id.SPIFFEID(l.td)
	p.expires = chainExpiry(chains[0])
	return p, nil
}

// Anchors trusts a set of CA certificates, each tied to an entity name ("" for
// CAs that are the mesh's own). It backs the filestore backend and the
// entities registered in meshd's store.
type Anchors struct {
	name string

	// mu serialises updates, so each starts from the set the one before
	// it left; readers load set without a lock.
	mu     sync.Mutex
	set    atomic.Pointer[anchorSet]
	notify notifier
}

// anchorSet is one state of Anchors, never changed once published.
type anchorSet struct {
	byName map[string][]*x509.Certificate
	pool   *x509.CertPool
}

// NewAnchors returns an empty set of anchors reporting itself as name.
func NewAnchors(name string) *Anchors {
	a := &Anchors{name: name}
	a.set.Store(&anchorSet{byName: map[string][]*x509.Certificate{}, pool: x509.NewCertPool()})
	return a
}

// Name returns the backend's name.
func (a *Anchors) Name() string { return a.name }

// OnChange registers fn to run when the anchors change.
func (a *Anchors) OnChange(fn func()) { a.notify.add(fn) }

// Replace swaps the whole set: entity name ("" for the mesh's own) to its
// CA certificates.
func (a *Anchors) Replace(set map[string][]*x509.Certificate) {
	a.update(func(m map[string][]*x509.Certificate) {
		clear(m)
		maps.Copy(m, set)
	})
}

// Set replaces the certificates of one entity.
func (a *Anchors) Set(entity string, certs []*x509.Certificate) {
	a.update(func(m map[string][]*x509.Certificate) { m[entity] = certs })
}

// Remove drops an entity's certificates.
func (a *Anchors) Remove(entity string) {
	a.update(func(m map[string][]*x509.Certificate) { delete(m, entity) })
}

// update publishes the set fn makes of a copy of the current one.
func (a *Anchors) update(fn func(map[string][]*x509.Certificate)) {
	a.mu.Lock()
	byName := maps.Clone(a.set.Load().byName)
	fn(byName)
	pool := x509.NewCertPool()
	for _, certs := range byName {
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	a.set.Store(&anchorSet{byName: byName, pool: pool})
	a.mu.Unlock()
	a.notify.fire()
}

// Entities returns the entity names the anchors cover, sorted; "" (the
// mesh's own CAs) is not listed.
func (a *Anchors) Entities() []string {
	var out []string
	for n := range a.set.Load().byName {
		if n != "" {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Certificates returns the CA certificates of one entity.
func (a *Anchors) Certificates(entity string) []*x509.Certificate {
	return a.set.Load().byName[entity]
}

// Verify implements Backend. The entity of the peer is the registered name
// of the anchor its chain ends at, never a name the CA wrote into its own
// certificate. An anchor registered under several names is attributed to
// the first in sort order ("" first), the same one every time.
func (a *Anchors) Verify(_ context.Context, chain []*x509.Certificate, now time.Time) (*Peer, error) {
	set := a.set.Load()
	chains, err := verifyChain(chain, set.pool, now)
	if err != nil {
		return nil, err
	}
	anchor := chains[0][len(chains[0])-1]
	entity, found := "", false
	for name, certs := range set.byName {
		for _, c := range certs {
			if bytes.Equal(c.Raw, anchor.Raw) && (!found || name < entity) {
				entity, found = name, true
			}
		}
	}
	if !found {
		return nil, refuse(ErrUnknownAuthority, ReasonUnknownCA, "certificate %q: its anchor was just removed", DisplayName(chain[0]))
	}
	p := newPeer(a.name, chain[0])
	p.Entity = entity
	p.Identity = looseIdentity(chain[0])
	p.expires = chainExpiry(chains[0])
	return p, nil
}

// AnchorsView is the read side of an Anchors: a trust.Backend, a Notifier
// and an entity source (Entities, Certificates), without Replace, Set or
// Remove. A backend that keeps its CAs in an Anchors embeds its View, so
// only the backend changes the set.
type AnchorsView struct{ a *Anchors }

// View returns the read side of a.
func (a *Anchors) View() AnchorsView { return AnchorsView{a} }

// Name returns the backend's name.
func (v AnchorsView) Name() string { return v.a.Name() }

// Verify implements Backend (Anchors.Verify).
func (v AnchorsView) Verify(ctx context.Context, chain []*x509.Certificate, now time.Time) (*Peer, error) {
	return v.a.Verify(ctx, chain, now)
}

// OnChange implements Notifier: fn runs after every change of the set of
// CAs.
func (v AnchorsView) OnChange(fn func()) { v.a.OnChange(fn) }

// Entities returns the partner entities the anchors cover, sorted.
func (v AnchorsView) Entities() []string { return v.a.Entities() }

// Certificates returns the CA certificates of entity ("" for the mesh's
// own).
func (v AnchorsView) Certificates(entity string) []*x509.Certificate {
	return v.a.Certificates(entity)
}

// SameSets reports whether a and b, sets of CA certificates by entity name
// as Anchors.Replace takes them, hold the same certificates in the same
// order per entity. A nil set is never the same as another.
func SameSets(a, b map[string][]*x509.Certificate) bool {
	if a == nil || b == nil || len(a) != len(b) {
		return false
	}
	for name, ac := range a {
		bc, ok := b[name]
		if !ok || len(ac) != len(bc) {
			return false
		}
		for i := range ac {
			if !bytes.Equal(ac[i].Raw, bc[i].Raw) {
				return false
			}
		}
	}
	return true
}

// notifier is a list of change callbacks.
type notifier struct {
	mu  sync.Mutex
	fns []func()
}

func (n *notifier) add(fn func()) {
	n.mu.Lock()
	n.fns = append(n.fns, fn)
	n.mu.Unlock()
}

func (n *notifier) fire() {
	n.mu.Lock()
	fns := n.fns
	n.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}
