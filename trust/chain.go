package trust

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// A Notifier is a Backend whose anchors change at run time; a Chain drops
// its cached verdicts whenever one of its notifiers reports a change.
type Notifier interface {
	OnChange(fn func())
}

// Chain verifies a peer against its backends in order; the first backend
// that knows the chain's authority decides. Verdicts are cached per leaf
// fingerprint and dropped on any revocation or change of anchors.
type Chain struct {
	backends []Backend
	revs     *RevocationSet
	now      func() time.Time

	gen atomic.Uint64

	mu    sync.RWMutex
	cache map[string]cached

	hits, misses atomic.Uint64
}

type cached struct {
	peer *Peer
	err  error
	gen  uint64
	// until bounds how long a refusal is cached: an unknown CA may become
	// known by a route other than a change notification.
	until time.Time
}

// maxCached bounds the cache; past it the cache starts over.
const maxCached = 1 << 18

// negativeTTL is how long a refusal stays cached.
const negativeTTL = 5 * time.Second

// ChainOption configures a Chain.
type ChainOption func(*Chain)

// WithClock sets the Chain's clock; the default is time.Now.
func WithClock(now func() time.Time) ChainOption { return func(c *Chain) { c.now = now } }

// NewChain returns a Chain over backends that also refuses whatever revs
// holds. revs may be nil.
func NewChain(revs *RevocationSet, backends []Backend, opts ...ChainOption) *Chain {
	c := &Chain{backends: backends, revs: revs, now: time.Now, cache: make(map[string]cached)}
	for _, o := range opts {
		o(c)
	}
	for _, b := range backends {
		if n, ok := b.(Notifier); ok {
			n.OnChange(c.Invalidate)
		}
	}
	if revs != nil {
		revs.OnChange(c.Invalidate)
	}
	return c
}

// Backends returns the chain's backends in order.
func (c *Chain) Backends() []Backend { return c.backends }

// Invalidate drops every cached verdict.
func (c *Chain) Invalidate() {
	c.gen.Add(1)
}

// Generation changes whenever cached verdicts are dropped; a caller that
// keeps a Peer (per connection, say) re-verifies when it moves.
func (c *Chain) Generation() uint64 { return c.gen.Load() }

// CacheStats returns how many verifications the cache answered and how
// many it had to compute.
func (c *Chain) CacheStats() (hits, misses uint64) { return c.hits.Load(), c.misses.Load() }

// Verify verifies chain (the peer's leaf first) and returns the Peer, or a
// *VerifyError saying why not.
func (c *Chain) Verify(ctx context.Context, chain []*x509.Certificate) (*Peer, error) {
	if len(chain) == 0 {
		return nil, refuse(ErrNoCertificate, ReasonNoCertificate, "client certificate required")
	}
	now := c.now()
	fp := Fingerprint(chain[0])
	gen := c.gen.Load()
	c.mu.RLock()
	e, ok := c.cache[fp]
	c.mu.RUnlock()
	if ok && e.gen == gen {
		if e.err == nil {
			if now.After(e.peer.Leaf.NotAfter) || now.Before(e.peer.Leaf.NotBefore) ||
				(!e.peer.expires.IsZero() && now.After(e.peer.expires)) {
				ok = false // the window moved, or a CA expired: recompute to report it
			}
		} else if now.After(e.until) {
			ok = false
		}
		if ok {
			c.hits.Add(1)
			return e.peer, e.err
		}
	}
	c.misses.Add(1)
	peer, err := c.verify(ctx, chain, now)
	c.mu.Lock()
	if len(c.cache) >= maxCached {
		c.cache = make(map[string]cached)
	}
	c.cache[fp] = cached{peer: peer, err: err, gen: gen, until: now.Add(negativeTTL)}
	c.mu.Unlock()
	return peer, err
}

func (c *Chain) verify(ctx context.Context, chain []*x509.Certificate, now time.Time) (*Peer, error) {
	var specific error // the first refusal that says more than unknown_ca
	for _, b := range c.backends {
		peer, err := b.Verify(ctx, chain, now)
		if errors.Is(err, ErrUnknownAuthority) {
			if specific == nil && errors.Is(err, ErrUnknownTrustDomain) {
				specific = err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := c.revs.check(peer); err != nil {
			return nil, err
		}
		return peer, nil
	}
	if specific != nil {
		return nil, specific
	}
	return nil, refuse(ErrUnknownAuthority, ReasonUnknownCA, "certificate %q is signed by an authority no trust backend knows", DisplayName(chain[0]))
}
