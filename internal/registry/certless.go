package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// Agents registered without a certificate (TLS mode auto, as MCP Mesh
// admits them) bind no owner: any caller without a certificate may act for
// them, and a certificate may take them over. What such callers can make
// the registry hold is bounded here: agents and payload bytes per source
// and in all, one agent's payload, the rate of new ids, and how long a
// silent one is kept. A source is the name the server gives a caller's
// network address (an IPv4 address, an IPv6 /64); no certificate vouches
// for it, so it only apportions the bounds, and never authorises anything.

// Defaults of CertlessLimits.
const (
	DefaultCertlessAgents          = 1024
	DefaultCertlessAgentsPerSource = 32
	DefaultCertlessBytes           = 16 << 20
	DefaultCertlessBytesPerSource  = 1 << 20
	DefaultCertlessPayload         = 64 << 10
	DefaultCertlessExpiry          = 10 * time.Minute
)

// CertlessLimits bound what callers without a certificate can make the
// registry hold. Zero fields select the defaults.
type CertlessLimits struct {
	// MaxAgents is the most agents registered without a certificate in
	// all, MaxAgentsPerSource the most one source registered; past either,
	// a new id is refused (ErrTooMany).
	MaxAgents, MaxAgentsPerSource int
	// MaxBytes is the most stored payload bytes of those agents in all,
	// MaxBytesPerSource of one source's, and MaxPayload of one agent's;
	// a registration past any is refused (ErrTooLarge) and changes
	// nothing.
	MaxBytes, MaxBytesPerSource, MaxPayload int64
	// Expiry is how long such an agent may be silent before it is
	// deleted, from memory and the store (audited "agent.expire"); an
	// agent stored longer silent is not loaded at start, nor merged from
	// another replica.
	Expiry time.Duration
	// AdmitNew, when set, is asked before a caller without a certificate
	// from source registers an id the registry does not hold, once the
	// other bounds allow it: false refuses it (ErrTooMany, reason
	// "certless_rate"). The server rate-limits new ids with it, which
	// bounds the audit rows such callers cause: each id registered is
	// audited once when it is claimed and once when it is deleted or
	// expires. It is called with the registry's accounting lock held and
	// must not call the registry.
	AdmitNew func(source string) bool
}

// WithDefaults returns l with each field zero or less set to its default.
func (l CertlessLimits) WithDefaults() CertlessLimits {
	orDefault(&l.MaxAgents, DefaultCertlessAgents)
	orDefault(&l.MaxAgentsPerSource, DefaultCertlessAgentsPerSource)
	orDefault(&l.MaxBytes, DefaultCertlessBytes)
	orDefault(&l.MaxBytesPerSource, DefaultCertlessBytesPerSource)
	orDefault(&l.MaxPayload, DefaultCertlessPayload)
	orDefault(&l.Expiry, DefaultCertlessExpiry)
	return l
}

func orDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// certlessUsage is what agents registered without a certificate hold.
type certlessUsage struct {
	agents int
	bytes  int64
}

// certlessBook accounts for the agents registered without a certificate,
// in all and by source. Its mu is a leaf of the registry's lock order
// (after an entry's mu); only AdmitNew is called under it. Each charged
// entry carries its charge (origin, bytes), guarded by the entry's mu.
type certlessBook struct {
	lim CertlessLimits

	mu       sync.Mutex
	total    certlessUsage
	bySource map[string]*certlessUsage // sources with agents only
}

func newCertlessBook(lim CertlessLimits) *certlessBook {
	return &certlessBook{lim: lim.WithDefaults(), bySource: make(map[string]*certlessUsage)}
}

// reserve charges a new agent of source with bytes of payload, or refuses
// it. forced charges it whatever the bounds (an agent the store holds
// already, loaded or merged), and asks no AdmitNew.
func (b *certlessBook) reserve(source string, bytes int64, forced bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.bySource[source]
	if !forced {
		if err := b.check(source, u, 1, bytes, bytes); err != nil {
			return err
		}
		if b.lim.AdmitNew != nil && !b.lim.AdmitNew(source) {
			return refusal(ErrTooMany, "certless_rate", "too many new agent ids registered without a certificate from %s or in all; retry later, or present a certificate", sourceName(source))
		}
	}
	if u == nil {
		u = &certlessUsage{}
		b.bySource[source] = u
	}
	u.agents++
	u.bytes += bytes
	b.total.agents++
	b.total.bytes += bytes
	return nil
}

// check refuses adding agents and delta bytes to source (whose usage is u,
// nil for none) when a bound would be passed; payload is the size of the
// one registration at stake. The caller holds b.mu.
func (b *certlessBook) check(source string, u *certlessUsage, agents int, delta, payload int64) error {
	var have certlessUsage
	if u != nil {
		have = *u
	}
	l := &b.lim
	switch {
	case payload > l.MaxPayload:
		return refusal(ErrTooLarge, "certless_payload", "registration is %d bytes; meshd holds at most %d bytes for an agent registered without a certificate: present a certificate, or declare less", payload, l.MaxPayload)
	case agents > 0 && source != "" && have.agents+agents > l.MaxAgentsPerSource:
		return refusal(ErrTooMany, "certless_source_agents", "%s holds %d agents registered without a certificate, the most meshd keeps for one source; delete one, or present a certificate", sourceName(source), have.agents)
	case agents > 0 && b.total.agents+agents > l.MaxAgents:
		return refusal(ErrTooMany, "certless_agents", "meshd holds %d agents registered without a certificate, the most it keeps; retry once some expire, or present a certificate", b.total.agents)
	case delta > 0 && source != "" && have.bytes+delta > l.MaxBytesPerSource:
		return refusal(ErrTooLarge, "certless_source_bytes", "the agents %s registered without a certificate would hold %d bytes; meshd keeps at most %d for one source", sourceName(source), have.bytes+delta, l.MaxBytesPerSource)
	case delta > 0 && b.total.bytes+delta > l.MaxBytes:
		return refusal(ErrTooLarge, "certless_bytes", "agents registered without a certificate would hold %d bytes; meshd keeps at most %d in all", b.total.bytes+delta, l.MaxBytes)
	}
	return nil
}

// resize changes the payload charged to source from old to bytes bytes,
// or refuses it. forced resizes whatever the bounds.
func (b *certlessBook) resize(source string, old, bytes int64, forced bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.bySource[source]
	if !forced {
		if err := b.check(source, u, 0, bytes-old, bytes); err != nil {
			return err
		}
	}
	if u != nil {
		u.bytes += bytes - old
	}
	b.total.bytes += bytes - old
	return nil
}

// release gives back an agent of source holding bytes.
func (b *certlessBook) release(source string, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u := b.bySource[source]; u != nil {
		u.agents--
		u.bytes -= bytes
		if u.agents <= 0 {
			delete(b.bySource, source)
		}
	}
	b.total.agents--
	b.total.bytes -= bytes
}

func (b *certlessBook) usage() certlessUsage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total
}

func sourceName(source string) string {
	if source == "" {
		return "this caller"
	}
	return "source " + source
}

// certlessCharge is what an entry registered without a certificate is
// charged: its source ("" when loaded or merged from the store, which does
// not keep it) and its payload's bytes. It is guarded by the entry's mu.
type certlessCharge struct {
	charged bool
	source  string
	bytes   int64
}

// chargeStored charges e, loaded or merged from the store, if it is an
// agent registered without a certificate and the registry bounds them.
// The caller holds e.mu, or e is not yet published.
func (r *Registry) chargeStored(e *entry) {
	if r.certless == nil || e.rec.Owner != "" || e.charge.charged {
		return
	}
	n := int64(len(e.rec.Payload))
	_ = r.certless.reserve("", n, true)
	e.charge = certlessCharge{charged: true, bytes: n}
}

// rechargeStored updates e's charge to its record, just replaced by one
// merged from the store. The caller holds e.mu.
func (r *Registry) rechargeStored(e *entry) {
	switch {
	case r.certless == nil:
	case e.rec.Owner != "":
		r.uncharge(e)
	case !e.charge.charged:
		r.chargeStored(e)
	default:
		n := int64(len(e.rec.Payload))
		_ = r.certless.resize(e.charge.source, e.charge.bytes, n, true)
		e.charge.bytes = n
	}
}

// uncharge gives back e's charge, if it has one: e is dropped, or a
// certificate claimed it. The caller holds e.mu.
func (r *Registry) uncharge(e *entry) {
	if e.charge.charged {
		r.certless.release(e.charge.source, e.charge.bytes)
		e.charge = certlessCharge{}
	}
}

// expiredCertless reports whether rec, read from the store, is an agent
// registered without a certificate silent for longer than the expiry at
// now: one the registry neither loads nor merges.
func (r *Registry) expiredCertless(rec *store.Agent, now time.Time) bool {
	return r.certless != nil && rec.Owner == "" && rec.LastSeen.Before(now.Add(-r.certless.lim.Expiry))
}

// CertlessUsage returns how many agents registered without a certificate
// the registry holds and their payload bytes; zeros when it does not
// bound them (Config.Certless nil).
func (r *Registry) CertlessUsage() (agents int, bytes int64) {
	if r.certless == nil {
		return 0, 0
	}
	u := r.certless.usage()
	return u.agents, u.bytes
}

// errNotExpired stops the removal of an agent that is no longer an
// expired one by the time its lock is won.
var errNotExpired = errors.New("registry: agent no longer expired")

// Expire deletes the agents registered without a certificate that were
// silent longer than the expiry, from the store (each with an
// "agent.expire" audit entry) and from memory, and returns how many. An
// agent heard from, or claimed by a certificate, meanwhile is kept. It
// does nothing when the registry does not bound them.
func (r *Registry) Expire(ctx context.Context) (int, error) {
	if r.certless == nil {
		return 0, nil
	}
	expiry := r.certless.lim.Expiry
	deadline := r.cfg.Now().Add(-expiry).UnixNano()
	n := 0
	var errs []error
	for _, e := range r.snapshot() {
		if e.lastSeen.Load() >= deadline {
			continue
		}
		e.mu.Lock()
		id, certless := e.rec.ID, e.rec.Owner == "" && !e.gone
		e.mu.Unlock()
		if !certless || id == "" {
			continue
		}
		// Checked again under the lock remove wins: a heartbeat or a
		// certificate's claim in between keeps the agent.
		err := r.remove(ctx, id, e, func(rec *store.Agent) (string, error) {
			cur := r.lookup(id)
			if rec == nil || rec.Owner != "" || cur == nil || cur.lastSeen.Load() >= deadline {
				return "", errNotExpired
			}
			return fmt.Sprintf("registered without a certificate and silent for over %s", expiry), nil
		}, "agent.expire")
		switch {
		case err == nil:
			n++
		case !errors.Is(err, errNotExpired):
			errs = append(errs, fmt.Errorf("expire agent %q: %w", id, err))
		}
	}
	return n, errors.Join(errs...)
}

// dropExpiredStored deletes from the store the agents of recs registered
// without a certificate and silent longer than the expiry, at start, and
// returns the others: expired agents are never loaded.
func (r *Registry) dropExpiredStored(ctx context.Context, recs []store.Agent, now time.Time) ([]store.Agent, error) {
	if r.certless == nil {
		return recs, nil
	}
	kept := recs[:0]
	for _, rec := range recs {
		if !r.expiredCertless(&rec, now) {
			kept = append(kept, rec)
			continue
		}
		err := r.st.DeleteAgent(ctx, rec.ID, store.AuditEntry{Time: now, Action: "agent.expire", Identity: rec.ID, Outcome: store.OutcomeOK,
			Detail: fmt.Sprintf("registered without a certificate and silent for over %s (found at start)", r.certless.lim.Expiry)})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("delete expired agent %q: %w", rec.ID, err)
		}
	}
	return kept, nil
}
