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
// The peers of meshd's own trust domain (Config.TrustDomain, the trust
// domain of meshd's own SVID) are the mesh's own, entity "", as the CAs of
// the trust dir are: the SPIRE deployment meshd gets its own identity from
// is the mesh's identity provider. The entity of a federated peer is its
// trust domain's name, unless the operator maps the trust domain to
// another entity name (Config.Entities), which may also make the own trust
// domain an entity. Every bundle
// change is published at once: a trust.Chain over the Backend drops its
// cached verdicts, and meshd re-verifies the agents it admitted.
//
// # Bounded staleness
//
// Bundles the source cannot refresh are trusted for a bounded time only
// (Config.MaxStaleness, default DefaultMaxStaleness). When the Workload
// API stream breaks (the agent gone, or PermissionDenied once meshd's own
// registration entry is deleted), SPIRE may go on to revoke an authority
// the last bundles still hold. Once the source has been stale for the
// bound, every chain those bundles would admit is refused as
// trust.ReasonStaleTrust, and the change is published so that what was
// admitted is verified again and evicted; when the stream is healthy again
// the fresh bundles admit again, published the same way.
package spirebundle

import (
	"context"
	"crypto/x509"
	"errors"
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
// domain, and a signal when they may have changed; and since when, if at
// all, it has been unable to keep them current. *spire.Source (package
// credentials/spire) is one.
type Source interface {
	Current() (*credentials.Credentials, error)
	Changed() <-chan struct{}
	// StaleSince returns the zero time while the bundles are known
	// current, else since when they have not been; changed is closed
	// when that answer changes.
	StaleSince() (since time.Time, changed <-chan struct{})
}

// DefaultMaxStaleness is Config.MaxStaleness's default: five minutes.
// Long enough for a SPIRE agent to restart or be upgraded (seconds of
// outage, plus go-spiffe's reconnect back-off of up to 30 s and gRPC's
// redial back-off, which reaches two minutes) without refusing a single
// agent; short enough that an authority SPIRE revoked, or a workload
// entry taken from meshd, stops vouching well inside the default hour of
// an X.509-SVID, of which SPIRE rotates the second half.
const DefaultMaxStaleness = 5 * time.Minute

// Config configures a Backend.
type Config struct {
	// Source provides the bundles; required.
	Source Source
	// MaxStaleness is how long bundles the source cannot refresh (see
	// Source.StaleSince) are still trusted; past it the backend refuses
	// every chain they would admit, with trust.ReasonStaleTrust, until
	// the source is current again. Zero means DefaultMaxStaleness;
	// negative is an error. The bound cannot be turned off: a very long
	// one is the operator's explicit choice.
	MaxStaleness time.Duration
	// TrustDomain is meshd's own: its peers are the mesh's own (entity
	// ""). Zero: the trust domain of the source's current SVID.
	TrustDomain spiffeid.TrustDomain
	// Entities maps a trust domain to the entity name its peers get; a
	// federated trust domain not listed is its own entity, by its name,
	// and the own trust domain not listed is the mesh's own.
	Entities map[spiffeid.TrustDomain]string
	// Logger receives bundle changes; default slog.Default().
	Logger *slog.Logger
}

// Backend is the spire trust backend. It implements trust.Backend and
// trust.Notifier.
type Backend struct {
	src      Source
	own      spiffeid.TrustDomain
	entities map[spiffeid.TrustDomain]string
	log      *slog.Logger
	bound    time.Duration

	// domains is the current state, never changed once published; only
	// follow (and New before it) publishes.
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
	// staleSince is zero while the source keeps the bundles current, else
	// since when it has not (or since the backend stopped following it).
	staleSince time.Time
	// refusing is whether follow last found them stale past the bound; it
	// decides what is logged and published. Verify checks the bound
	// itself, against its own now.
	refusing bool
}

// stale reports whether d's bundles have been stale for the bound at now.
func (d *domains) stale(now time.Time, bound time.Duration) bool {
	return !d.staleSince.IsZero() && !now.Before(d.staleSince.Add(bound))
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
	switch {
	case cfg.MaxStaleness < 0:
		return nil, fmt.Errorf("spirebundle: MaxStaleness %s is negative; give how long bundles the Workload API cannot refresh stay trusted (default %s)", cfg.MaxStaleness, DefaultMaxStaleness)
	case cfg.MaxStaleness == 0:
		cfg.MaxStaleness = DefaultMaxStaleness
	}
	for td, e := range cfg.Entities {
		if err := identity.ValidateID(e); err != nil {
			return nil, fmt.Errorf("spirebundle: entity %q for trust domain %s: %w", e, td, err)
		}
	}
	own := cfg.TrustDomain
	if own.IsZero() {
		c, err := cfg.Source.Current()
		if err != nil {
			return nil, fmt.Errorf("spirebundle: no trust domain given, and no SVID to take it from: %w", err)
		}
		if c.Certificate.Leaf == nil {
			return nil, fmt.Errorf("spirebundle: no trust domain given, and the source has no SVID to take it from")
		}
		id, err := x509svid.IDFromCert(c.Certificate.Leaf)
		if err != nil {
			return nil, fmt.Errorf("spirebundle: no trust domain given, and the source's certificate has no SPIFFE ID: %w", err)
		}
		own = id.TrustDomain()
	}
	b := &Backend{
		src:      cfg.Source,
		own:      own,
		entities: maps.Clone(cfg.Entities),
		log:      cfg.Logger.With("backend", Name),
		bound:    cfg.MaxStaleness,
		done:     make(chan struct{}),
	}
	b.domains.Store(&domains{byTD: map[spiffeid.TrustDomain]*trust.Anchors{}, certs: map[spiffeid.TrustDomain][]*x509.Certificate{}})
	changed := b.src.Changed()
	health, deadline := b.refresh()
	ctx, b.cancel = context.WithCancel(ctx)
	go b.follow(ctx, changed, health, deadline)
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

// Close stops following the source. The bundles seen last stay in force
// for at most MaxStaleness more (from when the source became stale, if it
// was), then every chain they would admit is refused; nothing is published
// any more.
func (b *Backend) Close() error {
	b.cancel()
	<-b.done
	return nil
}

// StaleSince returns the zero time while the bundles are current, else
// since when the source has been unable to refresh them; stale reports
// whether that has lasted MaxStaleness at now, so that every chain they
// would admit is refused.
func (b *Backend) StaleSince(now time.Time) (since time.Time, stale bool) {
	d := b.domains.Load()
	return d.staleSince, d.stale(now, b.bound)
}

// MaxStaleness returns the staleness bound in force.
func (b *Backend) MaxStaleness() time.Duration { return b.bound }

// TrustDomain returns meshd's own trust domain, whose peers are the
// mesh's own unless Config.Entities maps it.
func (b *Backend) TrustDomain() spiffeid.TrustDomain { return b.own }

// Entity returns the entity name of trust domain td: the operator's
// mapping, else "" (the mesh's own) for the own trust domain, else td's
// name.
func (b *Backend) Entity(td spiffeid.TrustDomain) string {
	// Compared: trust domains as spiffeid parses them (lowercase names).
	// The bundle of td is the only one that vouches for td's IDs, so the
	// entity follows from the ID's trust domain alone.
	if e, ok := b.entities[td]; ok {
		return e
	}
	if td == b.own {
		return ""
	}
	return td.Name()
}

// Entities returns the partner entities whose bundles are trusted, sorted;
// the mesh's own trust domain is none.
func (b *Backend) Entities() []string {
	d := b.domains.Load()
	out := make([]string, 0, len(d.byTD))
	for td := range d.byTD {
		if e := b.Entity(td); e != "" {
			out = append(out, e)
		}
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
	// Compared: the ID's trust domain, as spiffeid parses it, with the
	// trust domains whose bundles the source holds (meshd's own, and the
	// federated ones the operator listed).
	d := b.domains.Load()
	a, ok := d.byTD[id.TrustDomain()]
	if !ok {
		// The caller learns only that its own trust domain is not trusted,
		// not which ones are.
		return nil, trust.NewVerifyError(trust.ErrUnknownTrustDomain, trust.ReasonUnknownCA,
			fmt.Sprintf("certificate %q: trust domain %s is not trusted here (neither meshd's own nor a federated trust domain the operator listed)", id, id.TrustDomain()))
	}
	p, err := a.Verify(ctx, chain, now)
	if err != nil {
		if d.stale(now, b.bound) && errors.Is(err, trust.ErrUnknownAuthority) {
			// Perhaps an authority SPIRE added while the bundles could not
			// be refreshed: the next backend may still know the chain.
			return nil, unknown(fmt.Sprintf("%v; the SPIFFE bundle of %s is stale (not refreshed since %s), so a newer SPIRE authority would not be known", err, id.TrustDomain(), d.staleSince.UTC().Format(time.RFC3339)))
		}
		return nil, err
	}
	if d.stale(now, b.bound) {
		// The stale bundle would vouch for this chain, but SPIRE may have
		// revoked its authority since: fail closed.
		return nil, trust.NewVerifyError(trust.ErrUntrusted, trust.ReasonStaleTrust, fmt.Sprintf(
			"certificate %q: the SPIFFE bundle of %s has not been refreshed since %s, longer than the spire backend's bound of %s (is meshd's SPIRE agent up, and does meshd still have a registration entry?)",
			id, id.TrustDomain(), d.staleSince.UTC().Format(time.RFC3339), b.bound))
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

// follow publishes every change of the source's bundles and of their
// staleness, and the moment the staleness reaches the bound. When it
// stops, the bundles count as stale from then on (unless they were
// already).
func (b *Backend) follow(ctx context.Context, changed, health <-chan struct{}, deadline time.Time) {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var expired <-chan time.Time
		if !deadline.IsZero() {
			timer.Reset(time.Until(deadline))
			expired = timer.C
		}
		select {
		case <-ctx.Done():
			if d := b.domains.Load(); d.staleSince.IsZero() {
				next := *d
				next.staleSince = time.Now()
				b.domains.Store(&next)
			}
			return
		case <-changed:
			changed = b.src.Changed()
		case <-health:
		case <-expired:
		}
		timer.Stop()
		health, deadline = b.refresh()
	}
}

// refresh reads the source's bundles and staleness and publishes what
// changed. A source with no credentials yet, or closed, keeps the bundles
// seen last. It returns the source's signal of its next change of
// staleness, and when the staleness reaches the bound if it has not yet
// (zero if it has, or the bundles are current).
func (b *Backend) refresh() (health <-chan struct{}, deadline time.Time) {
	since, health := b.src.StaleSince()
	cur := b.domains.Load()
	next := &domains{byTD: cur.byTD, certs: cur.certs, staleSince: since}
	next.refusing = next.stale(time.Now(), b.bound)
	if !since.IsZero() && !next.refusing {
		deadline = since.Add(b.bound)
	}
	c, err := b.src.Current()
	bundlesChanged := err == nil && !sameBundles(cur.certs, c.Bundles)
	if bundlesChanged {
		next.byTD, next.certs = map[spiffeid.TrustDomain]*trust.Anchors{}, map[spiffeid.TrustDomain][]*x509.Certificate{}
		for td, certs := range c.Bundles {
			if len(certs) == 0 {
				continue
			}
			a := trust.NewAnchors(Name)
			a.Set(b.Entity(td), certs)
			next.byTD[td] = a
			next.certs[td] = slices.Clone(certs)
		}
	}
	if !bundlesChanged && next.staleSince.Equal(cur.staleSince) && next.refusing == cur.refusing {
		return health, deadline
	}
	b.domains.Store(next)
	if bundlesChanged {
		names := make([]string, 0, len(next.byTD))
		for _, td := range sortedDomains(next.certs) {
			names = append(names, fmt.Sprintf("%s (%d)", td, len(next.certs[td])))
		}
		b.log.Info("SPIFFE bundles changed", "trust_domains", names)
	}
	switch {
	case next.refusing && !cur.refusing:
		b.log.Error("refusing every SPIFFE certificate: the Workload API has not refreshed the bundles for longer than the bound, and SPIRE may have revoked an authority since; check meshd's SPIRE agent and meshd's registration entry",
			"stale_since", since, "max_staleness", b.bound)
	case !next.refusing && cur.refusing:
		b.log.Info("admitting SPIFFE certificates again: the Workload API refreshed the bundles")
	}
	if !bundlesChanged && next.refusing == cur.refusing {
		return health, deadline // no verdict changes
	}
	b.notifyM.Lock()
	fns := slices.Clone(b.notify)
	b.notifyM.Unlock()
	for _, fn := range fns {
		fn()
	}
	return health, deadline
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
