// Package registry holds the agents registered with meshd: their records,
// liveness, ownership, rotation signals and eviction.
//
// Records live in memory. A registration that changes what the store
// holds (a first claim, a new payload, a new certificate) is written
// durably before it is acknowledged; an unchanged heartbeat only touches
// memory. Liveness changes (unhealthy after the timeout), evictions and
// rotations are written in batches, copied under each entry's lock and
// written after it is unlocked. Every change to a record raises its
// version, and the store never replaces a record with an older one, so a
// batch that reaches the store after a newer write cannot undo it.
package registry

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// Agent states.
const (
	StatusHealthy   = "healthy"
	StatusUnhealthy = "unhealthy"
	StatusEvicted   = "evicted"
)

// Defaults.
const (
	DefaultTimeout       = 20 * time.Second
	DefaultInterval      = 5 * time.Second
	DefaultFlushInterval = 500 * time.Millisecond

	// MCP Mesh agents declare tens of tools and dependencies, and a few
	// tags on each; the limits leave room for ten times that. A heartbeat
	// may be 1 MiB, enough for 12,000 tools, and resolution costs
	// dependencies × the tools offering them, so without them one agent
	// could make every resolution cost seconds.
	DefaultMaxTools            = 256
	DefaultMaxToolDependencies = 256
	DefaultMaxDependencies     = 1024
	DefaultMaxTags             = 64
)

// Errors callers branch on. A *Refusal wraps one of them.
var (
	// ErrForbidden reports a caller that may not act for the agent it names.
	ErrForbidden = errors.New("registry: forbidden")
	// ErrInvalid reports a malformed registration.
	ErrInvalid = errors.New("registry: invalid registration")
	// ErrUnknown reports an agent id that is not registered.
	ErrUnknown = errors.New("registry: unknown agent")
	// ErrEvicted reports an evicted agent.
	ErrEvicted = errors.New("registry: agent evicted")
	// ErrDraining reports a new agent refused while the registry drains.
	ErrDraining = errors.New("registry: draining")
	// ErrTooMany reports a registration without a certificate refused by
	// a bound on how many agents, or new ids, such callers may have.
	ErrTooMany = errors.New("registry: too many agents without a certificate")
	// ErrTooLarge reports a registration without a certificate refused by
	// a bound on the payload bytes such callers may have stored.
	ErrTooLarge = errors.New("registry: too large for an agent without a certificate")
)

// Refusal is why the registry refused a request.
type Refusal struct {
	// Reason is a short machine-readable label, used in metrics.
	Reason string
	Detail string
	err    error
}

func (r *Refusal) Error() string { return r.Detail }

// Unwrap returns the sentinel error.
func (r *Refusal) Unwrap() error { return r.err }

func refusal(sentinel error, reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...), err: sentinel}
}

// ReasonOf returns the reason label of a registry or trust error.
func ReasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return trust.Reason(err)
}

// Store is what the registry persists agents in. Every claim of an agent
// id (the only write that inserts a record or sets its owner, entity and
// source) goes through its audited, conditional PutAgentAudited; every
// other write through UpdateAgent or PutAgents, which apply only over the
// ownership the registry authorised the change against.
// The methods are store.Store's, which documents them; every one is
// required, the conditional claim above all.
type Store interface {
	PutAgentAudited(ctx context.Context, ag store.Agent, a store.AuditEntry) error
	UpdateAgent(ctx context.Context, ag store.Agent) error
	PutAgents(ctx context.Context, agents []store.Agent) error
	DeleteAgent(ctx context.Context, id string, a store.AuditEntry) error
	Agents(ctx context.Context) ([]store.Agent, error)
}

// Config configures a Registry. The zero value of each field selects its
// default.
type Config struct {
	// Timeout is how long an agent may be silent before it is unhealthy.
	Timeout time.Duration
	// FlushInterval is how often liveness changes are written.
	FlushInterval time.Duration
	// SyncInterval, for a registry that shares its store with other
	// processes (meshd replicas), is how often Run merges what they wrote
	// (see Sync); 0 never, for a store this process alone writes.
	SyncInterval time.Duration
	// ShareInterval, with SyncInterval, is how stale the stored last-seen
	// time of an agent this process hears from may get before it is
	// written (in the flush batch); default a quarter of Timeout, so a
	// replica that only reads it never finds a live agent silent.
	ShareInterval time.Duration
	Now           func() time.Time
	Logger        *slog.Logger

	// MaxTools is the most tools one agent may declare (default
	// DefaultMaxTools); MaxToolDependencies the most dependencies one of
	// its tools may declare (DefaultMaxToolDependencies), MaxDependencies
	// the most all its tools may declare together
	// (DefaultMaxDependencies), and MaxTags the most tags a tool or a
	// dependency may carry (DefaultMaxTags). A heartbeat over a limit is
	// refused as invalid.
	MaxTools            int
	MaxToolDependencies int
	MaxDependencies     int
	MaxTags             int

	// ProviderEntities is the set of partner entities whose agents may
	// provide capabilities to every agent. Any other agent provides only
	// to agents of its own entity, and a mesh agent (of the mesh's own
	// CAs, entity "") to every agent, so that a dependency never resolves
	// to another partner's host unless the operator said so.
	ProviderEntities []string

	// PlainHTTP is set when agents are registered over plain HTTP (TLS
	// off): their endpoints are then http://host:port, not https://.
	PlainHTTP bool
	// Bindings is the binding of each trust source (by backend name): how
	// its certificates name the agents they may speak for. A source it
	// does not list binds by exact CN.
	Bindings map[string]Binding
	// Namespaces holds the agent-id namespace of each entity; nil gives
	// every entity the prefix namespace "<entity>-".
	Namespaces *Namespaces
	// Certless, when set, bounds the agents registered by callers without
	// a certificate (TLS mode auto) and expires them; nil leaves them
	// unbounded (TLS mode off, where no caller has one).
	Certless *CertlessLimits
	// OnChange, when set, is told of every change of an agent's presence
	// this process makes (Change), once it is made, with no lock of the
	// registry held. It runs on the goroutine that made the change (a
	// heartbeat's, an eviction's), so it must not block.
	OnChange func(Change)
}

// Change is a change of an agent's presence, for Config.OnChange.
type Change struct {
	// Kind is ChangeRegistered, ChangeUnhealthy, ChangeEvicted or
	// ChangeRemoved.
	Kind    string
	AgentID string
	// Reason says why, for an eviction or a removal.
	Reason string
}

// The kinds of Change.
const (
	// ChangeRegistered: the agent registered, for the first time or
	// again after it was unhealthy or evicted.
	ChangeRegistered = "registered"
	// ChangeUnhealthy: the agent was silent past the timeout.
	ChangeUnhealthy = "unhealthy"
	// ChangeEvicted: its certificate, identity or entity lost trust.
	ChangeEvicted = "evicted"
	// ChangeRemoved: it unregistered, or an operator released its id.
	ChangeRemoved = "removed"
)

// changed tells Config.OnChange of c.
func (r *Registry) changed(c Change) {
	if r.cfg.OnChange != nil {
		r.cfg.OnChange(c)
	}
}

// Registry is the set of registered agents. It is safe for concurrent use.
type Registry struct {
	cfg Config
	st  Store

	// Lock order: writeMu first, then an entry's mu, then mu, dirtyMu or
	// certless.mu; never the other way round, and never two entries'
	// locks at once. mu, dirtyMu and certless.mu are leaves: nothing is
	// locked while one is held (but what CertlessLimits.AdmitNew locks
	// under certless.mu), and so is a resolution cache's mu, which is
	// never held with any other. An entry's lock is held across its store
	// writes, so waiting for one under mu would stall every reader of the
	// registry behind that write.
	// writeMu is held across store writes too, but only by Delete and the
	// batches; heartbeats never take it.

	// writeMu orders the batch writes (Flush, evict, Rotate) against
	// Delete. A batch holds it from copying its records to writing them,
	// Delete from locking the entry to dropping it, so no batch writes
	// back the record of an agent deleted after the copy. Versions cannot
	// do that: the deleted row is gone, and the id's next registration
	// starts at version 1 again. Heartbeats, the hot path, are ordered
	// against batches by versions alone and never wait for one.
	writeMu sync.Mutex

	mu     sync.RWMutex
	agents map[string]*entry
	// providers indexes agents by the capabilities their tools offer.
	providers map[string]map[string]*entry

	// cache holds the dependency resolutions of the current topology,
	// shared by every agent and every list.
	cache atomic.Pointer[resolutionCache]
	// providerEntities is cfg.ProviderEntities as a set.
	providerEntities map[string]bool
	// namespaces is cfg.Namespaces.
	namespaces *Namespaces
	// certless accounts for the agents registered without a certificate;
	// nil when cfg.Certless is.
	certless *certlessBook

	dirtyMu sync.Mutex
	dirty   map[string]struct{}

	count atomic.Int64
	// topology counts changes any agent's dependencies could see: agents
	// coming, going, changing tools or health. HEAD resolves again an
	// agent whose answer predates the current value (entry.topoSeen),
	// and answers 202 if the resolution is not the one it received. It
	// is raised once a change is visible (stored in its entry and
	// indexed), so a resolution computed at a value never misses a change
	// made before it.
	topology atomic.Uint64

	// draining refuses new agent ids (SetDraining) while the agents
	// registered keep heartbeating: a rolling restart moves new agents to
	// the other replicas first.
	draining atomic.Bool

	// blind is set while the last Sync failed: this replica cannot see
	// the agents other replicas registered, nor the liveness they share.
	// Meanwhile Check answers store.ErrUnavailable rather than "unknown"
	// or "unhealthy" (the truth may be on another replica), and Sweep
	// marks no agent unhealthy: a database blip must never make a fleet
	// re-register at once. It stays false without replicas.
	blind atomic.Bool

	// syncs counts Sync's reads of the store. An entry's wrote is its
	// value when this process last wrote the entry's record: a read
	// started after that (a later count) holds the write, so what it
	// says of the record's ownership, or of its absence, is newer.
	syncs atomic.Uint64

	hooks hooks
}

// SetDraining starts (true) or ends draining: while it drains, the
// registry refuses to register agent ids it does not hold (ErrDraining),
// and serves the agents it holds as usual. Like MCP Mesh's, the state is
// this process's alone, and a restart ends it.
func (r *Registry) SetDraining(on bool) { r.draining.Store(on) }

// Draining reports whether the registry drains.
func (r *Registry) Draining() bool { return r.draining.Load() }

// hooks are where tests act inside the registry's writes. They are set
// only by tests, before the registry is used.
type hooks struct {
	// copied runs in Flush, evict and Rotate once the records are copied
	// and their entries unlocked, before the records are written.
	copied func()
	// writeWait runs when a Delete or a batch finds writeMu held, before
	// it waits for it.
	writeWait func()
	// resolve runs when the providers of a dependency on capability are
	// looked for, which the resolution cache did not hold.
	resolve func(capability string)
}

func (h hooks) afterCopy() {
	if h.copied != nil {
		h.copied()
	}
}

// lockWrites locks writeMu.
func (r *Registry) lockWrites() {
	if r.hooks.writeWait == nil {
		r.writeMu.Lock()
		return
	}
	if !r.writeMu.TryLock() {
		r.hooks.writeWait()
		r.writeMu.Lock()
	}
}

// entry is one agent. Its mutex guards rec, reg, notAfter, wrote, gone,
// sent and topoSeen; lastSeen is atomic so the cheap paths take no lock
// but the entry's. Whoever changes rec under the mutex raises rec.Version; last
// seen alone may change without it.
type entry struct {
	mu sync.Mutex
	// gone is set when the entry leaves the map, never to return. Whoever
	// looked the entry up and then waited for its lock must look again:
	// the agent may have been deleted, or registered anew by another
	// certificate.
	gone bool
	rec  store.Agent
	// reg is the registration in compact form (see intern.go); tools is
	// its reg.Tools, shared with registrations that declare the same, and
	// the sorted tags resolution matches a dependency's against.
	reg   meshapi.Registration
	tools *toolSet
	// node is the node of the owner's certificate ("ct111" for
	// "opus@ct111"), or "".
	node     string
	notAfter time.Time // of the certificate it registered with
	// body is the digest of the last heartbeat body as received, so an
	// identical heartbeat is recognised without parsing it (bodyDigest).
	body bodyDigest
	// resolved caches the last dependency resolution (shared with the
	// agents of its setKey, never modified), valid while the topology
	// counter is resolvedAt.
	resolved   setResolution
	resolvedAt uint64
	// wrote is Registry.syncs when this process last wrote rec to the
	// store (0 for a record it only read).
	wrote    uint64
	lastSeen atomic.Int64
	// sent is the digest (setResolution.sum) of the resolution the
	// agent's last POST answer carried, zero before one; topoSeen is
	// the topology value up to which that answer is known to be
	// current. HEAD answers 202 only when, the topology having moved
	// past topoSeen, the resolution a POST would answer now has another
	// digest (Check): the dependencies_resolved of the POST answer is
	// its only part that other agents change (llm_tools is always {}),
	// so an agent whose providers did not change is not asked to POST
	// for others' churn. Both are this process's: an agent that POSTs
	// to another replica is asked (202) once here.
	sent     [sha256.Size]byte
	topoSeen uint64
	// charge is what the entry is charged, registered without a
	// certificate, against the registry's bounds (certless.go).
	charge certlessCharge
}

// New returns a registry over st, loaded with the agents st holds. Loaded
// agents are given one timeout of grace: an unchanged heartbeat writes
// nothing, so the stored last-seen time may be old.
func New(ctx context.Context, st Store, cfg Config) (*Registry, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.SyncInterval > 0 && cfg.ShareInterval == 0 {
		cfg.ShareInterval = cfg.Timeout / 4
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, l := range []struct {
		n   *int
		def int
	}{
		{&cfg.MaxTools, DefaultMaxTools},
		{&cfg.MaxToolDependencies, DefaultMaxToolDependencies},
		{&cfg.MaxDependencies, DefaultMaxDependencies},
		{&cfg.MaxTags, DefaultMaxTags},
	} {
		if *l.n <= 0 {
			*l.n = l.def
		}
	}
	r := &Registry{cfg: cfg, st: st, agents: make(map[string]*entry), providers: make(map[string]map[string]*entry), dirty: make(map[string]struct{}),
		providerEntities: make(map[string]bool, len(cfg.ProviderEntities))}
	for _, e := range cfg.ProviderEntities {
		r.providerEntities[e] = true
	}
	r.namespaces = cfg.Namespaces
	if cfg.Certless != nil {
		r.certless = newCertlessBook(*cfg.Certless)
	}
	recs, err := st.Agents(ctx)
	if err != nil {
		return nil, fmt.Errorf("load agents: %w", err)
	}
	now := cfg.Now()
	if recs, err = r.dropExpiredStored(ctx, recs, now); err != nil {
		return nil, err
	}
	for _, rec := range recs {
		e := &entry{rec: rec, node: ownerNode(rec.Owner)}
		var reg meshapi.Registration
		_ = json.Unmarshal(rec.Payload, &reg)
		e.setRegistration(reg)
		// Stored before the limits, or above lowered ones: kept, since
		// its owner's unchanged heartbeats are answered without a
		// check, but its next change is refused.
		if err := r.bound(&e.reg); err != nil {
			cfg.Logger.Warn("stored agent registration is over a limit; its next change will be refused", "agent", rec.ID, "reason", ReasonOf(err), "err", err)
		}
		e.lastSeen.Store(now.UnixNano())
		r.chargeStored(e)
		r.agents[rec.ID] = e
		r.index(e, nil)
	}
	r.count.Store(int64(len(r.agents)))
	return r, nil
}

// Len returns the number of registered agents.
func (r *Registry) Len() int { return int(r.count.Load()) }

// claim returns the entry for id locked, creating it if needed. The
// binding rule and reg's limits are checked for a new id before it is
// inserted, so a refused caller never creates an entry. A new id of a
// caller without a certificate from source, with payload, is charged
// against the certless bounds (or refused by them) before it is inserted.
func (r *Registry) claim(peer *trust.Peer, source, id string, reg *meshapi.Registration, payload []byte) (*entry, bool, error) {
	for {
		if e := r.locked(id); e != nil {
			return e, false, nil
		}
		if err := r.authorize(peer, id, nil); err != nil {
			return nil, false, err
		}
		if r.draining.Load() {
			return nil, false, refusal(ErrDraining, "draining", "meshd is draining before a restart and registers no new agent; register with another replica, or again once this one has restarted")
		}
		if err := r.bound(reg); err != nil {
			return nil, false, err
		}
		e := &entry{}
		if peer == nil && r.certless != nil {
			n := int64(len(payload))
			if err := r.certless.reserve(source, n, false); err != nil {
				return nil, false, err
			}
			e.charge = certlessCharge{charged: true, source: source, bytes: n}
		}
		// Locked before it is published, and before mu as the lock order
		// wants.
		e.mu.Lock()
		r.mu.Lock()
		if r.agents[id] == nil {
			r.agents[id] = e
			r.count.Add(1)
			r.mu.Unlock()
			return e, true, nil
		}
		// Another heartbeat claimed id meanwhile: take its entry.
		r.mu.Unlock()
		r.uncharge(e)
		e.mu.Unlock()
	}
}

// drop removes an entry: a deleted agent, or a new one whose first write
// failed. The caller holds e.mu: the registration it unindexes is
// written under that lock.
func (r *Registry) drop(id string, e *entry) {
	e.gone = true
	r.uncharge(e)
	r.mu.Lock()
	if r.agents[id] == e {
		delete(r.agents, id)
		r.count.Add(-1)
		r.unindex(e, &e.reg)
	}
	r.mu.Unlock()
	r.topology.Add(1)
}

// lookup returns the entry of id, not locked, or nil.
func (r *Registry) lookup(id string) *entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.agents[id]
}

// locked returns the entry of id locked, or nil when id is not registered.
func (r *Registry) locked(id string) *entry { return r.relock(id, r.lookup(id)) }

// relock locks e, the entry the caller looked up for id, and returns it.
// If e was dropped before its lock was won, relock locks and returns id's
// current entry instead, or nil when there is none.
func (r *Registry) relock(id string, e *entry) *entry {
	for e != nil {
		e.mu.Lock()
		if !e.gone {
			return e
		}
		e.mu.Unlock()
		e = r.lookup(id)
	}
	return nil
}

func (r *Registry) snapshot() []*entry {
	r.mu.RLock()
	out := make([]*entry, 0, len(r.agents))
	for _, e := range r.agents {
		out = append(out, e)
	}
	r.mu.RUnlock()
	return out
}
