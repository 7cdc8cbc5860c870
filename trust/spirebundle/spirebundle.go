// Package spirebundle is the "spire" trust backend: the X.509 bundles of
// the SPIFFE Workload API, followed as they stream, vouching for the
// SPIFFE IDs of their own trust domain only.
//
// The bundles come from a credentials.Source, normally the SPIRE
// provider's (package credentials/spire) on meshd's own Workload API
// socket: the bundle of meshd's own trust domain, and those of the
// federated trust domains the operator lists (WithFederation there); the
// agent's other bundles are dropped. MCP Mesh's release fetches the
// bundles once and, for a peer, tries every bundle; here a certificate is
// verified against the bundle of its SPIFFE ID's trust domain and no
// other, so a federated partner's CA can never vouch for an ID in the
// mesh's own trust domain, or in a third one.
//
// The entity of a peer is its trust domain's name, unless the operator maps
// the trust domain to another entity name (Config.Entities). Every bundle
// change is published at once: a trust.Chain over the Backend drops its
// cached verdicts, and meshd re-verifies the agents it admitted.
package spirebundle

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/trust"
)

// Name is the backend's name in MCP_MESH_TRUST_BACKEND.
const Name = "spire"

// Source is where the bundles come from: its Current().Bundles, by trust
// domain, and a signal when they may have changed. *spire.Source (package
// credentials/spire) is one.
type Source interface {
	Current() (*credentials.Credentials, error)
	Changed() <-chan struct{}
}

// Config configures a Backend.
type Config struct {
	// Source provides the bundles; required.
	Source Source
	// Entities maps a trust domain to the entity name its peers get;
	// a trust domain not listed is its own entity, by its name.
	Entities map[spiffeid.TrustDomain]string
	// Logger receives bundle changes; default slog.Default().
	Logger *slog.Logger
}

// Backend is the spire trust backend. It implements trust.Backend and
// trust.Notifier.
type Backend struct {
	src      Source
	entities map[spiffeid.TrustDomain]string
	log      *slog.Logger

	// domains is the current state, never changed once published.
	domains atomic.Pointer[domains]
	notify  []func()
	notifyM sync.Mutex

	cancel context.CancelFunc // ends follow, at Close or when New's ctx ends
	done   chan struct{}
}

// domains is one state of the bundles: per trust domain, the authorities
// as a one-entity trust.Anchors, which verifies a chain against those
// authorities only.
type domains struct {
	byTD  map[spiffeid.TrustDomain]*trust.Anchors
	certs map[spiffeid.TrustDomain][]*x509.Certificate
}

// New returns a Backend over the source's current bundles that follows
// their changes until ctx ends or Close is called.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Source == nil {
		return nil, fmt.Errorf("spirebundle: no bundle source")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for td, e := range cfg.Entities {
		if err := identity.ValidateID(e); err != nil {
			return nil, fmt.Errorf("spirebundle: entity %q for trust domain %s: %w", e, td, err)
		}
	}
	b := &Backend{
		src:      cfg.Source,
		entities: maps.Clone(cfg.Entities),
		log:      cfg.Logger.With("backend", Name),
		done:     make(chan struct{}),
	}
	b.domains.Store(&domains{byTD: map[spiffeid.TrustDomain]*trust.Anchors{}, certs: map[spiffeid.TrustDomain][]*x509.Certificate{}})
	changed := b.src.Changed()
	b.refresh()
	ctx, b.cancel = context.WithCancel(ctx)
	go b.follow(ctx, changed)
	return b, nil
}

// Name returns "spire".
func (*Backend) Name() string { return Name }

// OnChange implements trust.Notifier: fn runs after every change of the
// bundles.
func (b *Backend) OnChange(fn func()) {
	b.notifyM.Lock()
	b.notify = append(b.notify, fn)
	b.notifyM.Unlock()
}

// Close stops following the source; the bundles seen last stay in force.
func (b *Backend) Close() error {
	b.cancel()
	<-b.done
	return nil
}

// Entity returns the entity name of trust domain td.
func (b *Backend) Entity(td spiffeid.TrustDomain) string {
	if e, ok := b.entities[td]; ok {
		return e
	}
	return td.Name()
}

// Entities returns the entities whose bundles are trusted, sorted.
func (b *Backend) Entities() []string {
	d := b.domains.Load()
	out := make([]string, 0, len(d.byTD))
	for td := range d.byTD {
		out = append(out, b.Entity(td))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Certificates returns the authorities trusted for entity.
func (b *Backend) Certificates(entity string) []*x509.Certificate {
	d := b.domains.Load()
	var out []*x509.Certificate
	for _, td := range sortedDomains(d.certs) {
		if b.Entity(td) == entity {
			out = append(out, d.certs[td]...)
		}
	}
	return out
}

// Verify implements trust.Backend. The leaf must carry a SPIFFE ID; the
// chain is verified against the bundle of that ID's trust domain only. A
// leaf without a SPIFFE ID, or of a trust domain without a bundle, is an
// unknown authority, for the next backend to try.
func (b *Backend) Verify(ctx context.Context, chain []*x509.Certificate, now time.Time) (*trust.Peer, error) {
	if len(chain) == 0 {
		return nil, trust.NewVerifyError(trust.ErrNoCertificate, trust.ReasonNoCertificate, "client certificate required")
	}
	leaf := chain[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, unknown(fmt.Sprintf("certificate %q has no SPIFFE ID for the spire backend: %v", trust.DisplayName(leaf), err))
	}
	a, ok := b.domains.Load().byTD[id.TrustDomain()]
	if !ok {
		return nil, unknown(fmt.Sprintf("certificate %q: no bundle for trust domain %s (federated bundles are trusted only for the trust domains listed)", id, id.TrustDomain()))
	}
	p, err := a.Verify(ctx, chain, now)
	if err != nil {
		return nil, err
	}
	if mid, err := identity.FromSPIFFEID(id); err == nil {
		p.Identity = mid
	}
	// td's own bundle verified the chain: it vouches for this ID, and for
	// no mesh identity (MeshCA stays unset).
	p.SPIFFEID = id
	return p, nil
}

// unknown is a refusal that lets the next backend try.
func unknown(detail string) error {
	return trust.NewVerifyError(trust.ErrUnknownAuthority, trust.ReasonUnknownCA, detail)
}

// follow publishes every change of the source's bundles.
func (b *Backend) follow(ctx context.Context, changed <-chan struct{}) {
	defer close(b.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			changed = b.src.Changed()
			b.refresh()
		}
	}
}

// refresh reads the source's bundles and publishes them if they changed.
// A source with no credentials yet, or closed, keeps the bundles seen last.
func (b *Backend) refresh() {
	c, err := b.src.Current()
	if err != nil {
		return
	}
	cur := b.domains.Load()
	if sameBundles(cur.certs, c.Bundles) {
		return
	}
	next := &domains{byTD: map[spiffeid.TrustDomain]*trust.Anchors{}, certs: map[spiffeid.TrustDomain][]*x509.Certificate{}}
	for td, certs := range c.Bundles {
		if len(certs) == 0 {
			continue
		}
		a := trust.NewAnchors(Name)
		a.Set(b.Entity(td), certs)
		next.byTD[td] = a
		next.certs[td] = slices.Clone(certs)
	}
	b.domains.Store(next)
	names := make([]string, 0, len(next.byTD))
	for _, td := range sortedDomains(next.certs) {
		names = append(names, fmt.Sprintf("%s (%d)", td, len(next.certs[td])))
	}
	b.log.Info("SPIFFE bundles changed", "trust_domains", names)
	b.notifyM.Lock()
	fns := slices.Clone(b.notify)
	b.notifyM.Unlock()
	for _, fn := range fns {
		fn()
	}
}

func sortedDomains(m map[spiffeid.TrustDomain][]*x509.Certificate) []spiffeid.TrustDomain {
	tds := slices.Collect(maps.Keys(m))
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int {
		switch {
		case a.Name() < b.Name():
			return -1
		case a.Name() > b.Name():
			return 1
		}
		return 0
	})
	return tds
}

// sameBundles reports whether two sets of bundles hold the same
// authorities per trust domain.
func sameBundles(a, b map[spiffeid.TrustDomain][]*x509.Certificate) bool {
	ka := make(map[string][]*x509.Certificate, len(a))
	for td, c := range a {
		ka[td.Name()] = c
	}
	kb := make(map[string][]*x509.Certificate, len(b))
	for td, c := range b {
		if len(c) > 0 {
			kb[td.Name()] = c
		}
	}
	return trust.SameSets(ka, kb)
}
