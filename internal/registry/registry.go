// Package registry holds the agents registered with meshd: their records,
// liveness, ownership, rotation signals and eviction.
//
// Records live in memory. A registration that changes what the store
// holds (a first claim, a new payload, a new certificate) is written
// durably before it is acknowledged; an unchanged heartbeat only touches
// memory. Liveness changes (unhealthy after the timeout) are written in
// batches.
package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
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

// Dependency is a capability a tool needs, as MCP Mesh agents declare it.
type Dependency struct {
	Capability string   `json:"capability"`
	Tags       []string `json:"tags,omitempty"`
	Version    string   `json:"version,omitempty"`
	Namespace  string   `json:"namespace,omitempty"`
}

// Tool is one tool an agent offers, as MCP Mesh agents describe it.
type Tool struct {
	FunctionName string       `json:"function_name"`
	Capability   string       `json:"capability"`
	Version      string       `json:"version,omitempty"`
	Tags         []string     `json:"tags,omitempty"`
	Description  string       `json:"description,omitempty"`
	Dependencies []Dependency `json:"dependencies,omitempty"`
}

// Registration is the body of POST /heartbeat. Fields meshd does not use
// (input schemas, say) are kept in the stored payload as the agent sent them.
type Registration struct {
	AgentID     string `json:"agent_id"`
	Name        string `json:"name,omitempty"`
	Version     string `json:"version,omitempty"`
	AgentType   string `json:"agent_type,omitempty"`
	Runtime     string `json:"runtime,omitempty"`
	Description string `json:"description,omitempty"`
	HTTPHost    string `json:"http_host,omitempty"`
	HTTPPort    int    `json:"http_port,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Tools       []Tool `json:"tools,omitempty"`
}

// Store is what the registry persists agents in.
type Store interface {
	store.AgentStore
}

// Config configures a Registry. The zero value of each field selects its
// default.
type Config struct {
	// Timeout is how long an agent may be silent before it is unhealthy.
	Timeout time.Duration
	// FlushInterval is how often liveness changes are written.
	FlushInterval time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
}

// Registry is the set of registered agents. It is safe for concurrent use.
type Registry struct {
	cfg Config
	st  Store

	mu     sync.RWMutex
	agents map[string]*entry
	// providers indexes agents by the capabilities their tools offer.
	providers map[string]map[string]*entry

	dirtyMu sync.Mutex
	dirty   map[string]struct{}

	count atomic.Int64
	// topology counts changes any agent's dependencies could see: agents
	// coming, going, changing tools or health. HEAD answers 202 to an
	// agent whose last POST predates the current value.
	topology atomic.Uint64
}

// entry is one agent. Its mutex guards rec, reg and notAfter; lastSeen and
// topoSeen are atomic so the cheap paths take no lock but the entry's.
type entry struct {
	mu       sync.Mutex
	rec      store.Agent
	reg      Registration
	notAfter time.Time // of the certificate it registered with
	// body is the SHA-256 of the last heartbeat body as received, so an
	// identical heartbeat is recognised without parsing it.
	body [sha256.Size]byte
	// resolved caches the last dependency resolution, valid while the
	// topology counter is resolvedAt.
	resolved   map[string][]Resolution
	resolvedAt uint64
	lastSeen   atomic.Int64
	topoSeen   atomic.Uint64
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Registry{cfg: cfg, st: st, agents: make(map[string]*entry), providers: make(map[string]map[string]*entry), dirty: make(map[string]struct{})}
	recs, err := st.Agents(ctx)
	if err != nil {
		return nil, fmt.Errorf("load agents: %w", err)
	}
	now := cfg.Now()
	for _, rec := range recs {
		e := &entry{rec: rec}
		_ = json.Unmarshal(rec.Payload, &e.reg)
		e.lastSeen.Store(now.UnixNano())
		r.agents[rec.ID] = e
		r.index(e, nil)
	}
	r.count.Store(int64(len(r.agents)))
	return r, nil
}

// Len returns the number of registered agents.
func (r *Registry) Len() int { return int(r.count.Load()) }

// Result is the registry's answer to a heartbeat.
type Result struct {
	AgentID string
	// Created is set on the agent's first registration.
	Created bool
	// Rotate asks the agent to re-register with a fresh certificate.
	Rotate bool
	// Resolved maps each of the agent's tools to the providers of its
	// dependencies (POST only).
	Resolved map[string][]Resolution
}

// Resolution is one dependency of a tool and the provider chosen for it,
// in MCP Mesh's shape; an unresolved dependency has empty provider fields.
type Resolution struct {
	AgentID      string `json:"agent_id"`
	Capability   string `json:"capability"`
	Endpoint     string `json:"endpoint"`
	FunctionName string `json:"function_name"`
	Status       string `json:"status"`
}

// MaxBody is the largest heartbeat body meshd reads.
const MaxBody = 1 << 20

// ParseRegistration parses and validates a heartbeat body and returns it
// with the compacted JSON the registry stores.
func ParseRegistration(body []byte) (Registration, []byte, error) {
	var reg Registration
	if err := json.Unmarshal(body, &reg); err != nil {
		return reg, nil, refusal(ErrInvalid, "bad_json", "invalid JSON payload: %v", err)
	}
	if reg.AgentID == "" {
		return reg, nil, refusal(ErrInvalid, "bad_agent_id", "agent_id is required")
	}
	if err := identity.ValidateID(reg.AgentID); err != nil {
		return reg, nil, refusal(ErrInvalid, "bad_agent_id", "agent_id: %v", err)
	}
	if len(reg.Name) > 63 {
		return reg, nil, refusal(ErrInvalid, "bad_name", "name is %d characters long (at most 63)", len(reg.Name))
	}
	switch reg.AgentType {
	case "", "mcp_agent", "api", "a2a":
	default:
		return reg, nil, refusal(ErrInvalid, "bad_agent_type", "agent_type %q is not one of mcp_agent, api, a2a", reg.AgentType)
	}
	if reg.HTTPPort < 0 || reg.HTTPPort > 65535 {
		return reg, nil, refusal(ErrInvalid, "bad_port", "http_port %d is not a port", reg.HTTPPort)
	}
	for i, t := range reg.Tools {
		if t.FunctionName == "" {
			return reg, nil, refusal(ErrInvalid, "bad_tool", "tools[%d]: function_name is required", i)
		}
	}
	payload, err := canonical(body)
	if err != nil {
		return reg, nil, refusal(ErrInvalid, "bad_json", "invalid JSON payload: %v", err)
	}
	return reg, payload, nil
}

// canonical returns the body as the registry stores and compares it:
// compact, keys sorted, and without "timestamp", which agents may stamp
// on every heartbeat and which says nothing about the agent.
func canonical(body []byte) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	delete(fields, "timestamp")
	return json.Marshal(fields)
}

// Authorize checks that peer may act for agentID: the certificate names
// that agent, the id lies in the peer's entity's namespace, and no other
// owner or entity claimed it first. A nil peer (TLS off) may act for any
// agent.
func (r *Registry) Authorize(peer *trust.Peer, agentID string) error {
	r.mu.RLock()
	e := r.agents[agentID]
	r.mu.RUnlock()
	if e == nil {
		return authorize(peer, agentID, nil)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return authorize(peer, agentID, &e.rec)
}

// authorize is the identity binding rule, in one place.
func authorize(peer *trust.Peer, agentID string, owner *store.Agent) error {
	if peer == nil {
		if owner != nil && owner.Owner != "" {
			return refusal(ErrForbidden, "owned_by_other", "agent id %q is owned by %q; only its certificate may act for it", agentID, owner.Owner)
		}
		return nil
	}
	allowed, err := peer.AgentID()
	if err != nil {
		return refusal(ErrForbidden, "not_agent_cert", "%v", err)
	}
	if allowed != agentID {
		return refusal(ErrForbidden, "identity_mismatch", "certificate %q may only speak for agent %q, not %q", peer.Name(), allowed, agentID)
	}
	if peer.Entity != "" && !strings.HasPrefix(agentID, peer.Entity+"-") {
		return refusal(ErrForbidden, "outside_namespace", "entity %q may only register agent ids starting with %q; %q is outside its namespace", peer.Entity, peer.Entity+"-", agentID)
	}
	if owner == nil || owner.Owner == "" {
		return nil
	}
	if owner.Entity != peer.Entity {
		return refusal(ErrForbidden, "owned_by_other_entity", "agent id %q belongs to %s; %s cannot take it", agentID, entityLabel(owner.Entity), entityLabel(peer.Entity))
	}
	if owner.Owner != peer.Name() {
		return refusal(ErrForbidden, "owned_by_other", "agent id %q is owned by %q; %q cannot take it (its owner can DELETE it first)", agentID, owner.Owner, peer.Name())
	}
	return nil
}

func entityLabel(e string) string {
	if e == "" {
		return "the mesh's own CA"
	}
	return fmt.Sprintf("entity %q", e)
}

// HeartbeatBody handles a raw POST /heartbeat body. A body identical to
// the agent's last one, from the same certificate, is answered from memory
// without being parsed; anything else goes through ParseRegistration and
// Heartbeat.
func (r *Registry) HeartbeatBody(ctx context.Context, peer *trust.Peer, body []byte) (Result, error) {
	sum := sha256.Sum256(body)
	if peer != nil {
		if res, ok := r.unchanged(peer, sum); ok {
			return res, nil
		}
	}
	reg, payload, err := ParseRegistration(body)
	if err != nil {
		return Result{}, err
	}
	return r.heartbeat(ctx, peer, reg, payload, sum)
}

// unchanged answers a heartbeat whose body hash, certificate and state are
// what the registry already holds.
func (r *Registry) unchanged(peer *trust.Peer, sum [sha256.Size]byte) (Result, bool) {
	id, err := peer.AgentID()
	if err != nil {
		return Result{}, false
	}
	r.mu.RLock()
	e := r.agents[id]
	r.mu.RUnlock()
	if e == nil {
		return Result{}, false
	}
	e.mu.Lock()
	if e.body != sum || e.rec.Status != StatusHealthy || e.rec.CertFingerprint != peer.Fingerprint || authorize(peer, id, &e.rec) != nil {
		e.mu.Unlock()
		return Result{}, false
	}
	e.lastSeen.Store(r.cfg.Now().UnixNano())
	e.topoSeen.Store(r.topology.Load())
	res := Result{AgentID: id, Rotate: !e.rec.RotateFrom.IsZero()}
	e.mu.Unlock()
	res.Resolved = r.resolveFor(e)
	return res, true
}

// Heartbeat registers or refreshes an agent. payload is the canonical body
// from ParseRegistration. A change to what the store holds is durable
// before Heartbeat returns; an unchanged heartbeat touches only memory.
func (r *Registry) Heartbeat(ctx context.Context, peer *trust.Peer, reg Registration, payload []byte) (Result, error) {
	return r.heartbeat(ctx, peer, reg, payload, [sha256.Size]byte{})
}

func (r *Registry) heartbeat(ctx context.Context, peer *trust.Peer, reg Registration, payload []byte, sum [sha256.Size]byte) (Result, error) {
	now := r.cfg.Now()
	res := Result{AgentID: reg.AgentID}
	e, created, err := r.claim(peer, reg.AgentID)
	if err != nil {
		return res, err
	}
	if !created {
		if err := authorize(peer, reg.AgentID, &e.rec); err != nil {
			e.mu.Unlock()
			return res, err
		}
	}
	fp, serial := "", ""
	var notAfter time.Time
	if peer != nil {
		fp, serial, notAfter = peer.Fingerprint, peer.Serial, peer.Leaf.NotAfter
	}
	e.lastSeen.Store(now.UnixNano())
	pending := !e.rec.RotateFrom.IsZero()
	unchanged := !created && e.rec.Status == StatusHealthy && e.rec.CertFingerprint == fp && bytes.Equal(e.rec.Payload, payload)
	if unchanged {
		e.body = sum
		e.topoSeen.Store(r.topology.Load())
		e.mu.Unlock()
		res.Rotate = pending
		res.Resolved = r.resolveFor(e)
		return res, nil
	}
	next := e.rec
	next.ID = reg.AgentID
	if created || next.Owner == "" {
		next.RegisteredAt = now
		if peer != nil {
			next.Owner, next.Entity = peer.Name(), peer.Entity
		}
	}
	next.Payload = payload
	next.CertFingerprint, next.CertSerial = fp, serial
	next.Status, next.Reason = StatusHealthy, ""
	next.LastSeen = now
	// A rotation stays pending until the agent comes with another
	// certificate than the one it had when the rotation was asked.
	rotating := pending && fp == e.rec.CertFingerprint
	if !rotating {
		next.RotateFrom = time.Time{}
	}
	if err := r.st.PutAgents(ctx, []store.Agent{next}); err != nil {
		e.mu.Unlock()
		if created {
			r.drop(reg.AgentID, e)
		}
		return res, fmt.Errorf("record agent %q: %w", reg.AgentID, err)
	}
	old, oldStatus := e.reg, e.rec.Status
	e.rec, e.reg, e.notAfter, e.body = next, reg, notAfter, sum
	// Only what dependents can see moves the topology: other agents are
	// asked (HEAD 202) to POST again for nothing otherwise.
	if created || oldStatus != StatusHealthy || !sameVisible(old, reg) {
		e.topoSeen.Store(r.topology.Add(1))
		r.mu.Lock()
		r.index(e, &old)
		r.mu.Unlock()
	} else {
		e.topoSeen.Store(r.topology.Load())
	}
	e.mu.Unlock()
	res.Created, res.Rotate = created, rotating
	res.Resolved = r.resolveFor(e)
	return res, nil
}

// sameVisible reports whether two registrations look the same to other
// agents: endpoint, namespace, type and tools.
func sameVisible(a, b Registration) bool {
	return a.HTTPHost == b.HTTPHost && a.HTTPPort == b.HTTPPort && namespace(a) == namespace(b) &&
		a.AgentType == b.AgentType && reflect.DeepEqual(a.Tools, b.Tools)
}

// resolveFor returns e's dependency resolution, computed again only when
// the topology moved since it was cached.
func (r *Registry) resolveFor(e *entry) map[string][]Resolution {
	topo := r.topology.Load()
	e.mu.Lock()
	if e.resolved != nil && e.resolvedAt == topo {
		res := e.resolved
		e.mu.Unlock()
		return res
	}
	reg := e.reg
	e.mu.Unlock()
	res := r.resolve(reg)
	e.mu.Lock()
	e.resolved, e.resolvedAt = res, topo
	e.mu.Unlock()
	return res
}

// claim returns the entry for id locked, creating it if needed. The
// binding rule for a new id is checked before it is inserted, so a refused
// caller never creates an entry.
func (r *Registry) claim(peer *trust.Peer, id string) (*entry, bool, error) {
	r.mu.RLock()
	e := r.agents[id]
	r.mu.RUnlock()
	if e != nil {
		e.mu.Lock()
		return e, false, nil
	}
	if err := authorize(peer, id, nil); err != nil {
		return nil, false, err
	}
	r.mu.Lock()
	if e = r.agents[id]; e != nil {
		r.mu.Unlock()
		e.mu.Lock()
		return e, false, nil
	}
	e = &entry{}
	e.mu.Lock()
	r.agents[id] = e
	r.count.Add(1)
	r.mu.Unlock()
	return e, true, nil
}

// drop removes an entry: a deleted agent, or a new one whose first write
// failed.
func (r *Registry) drop(id string, e *entry) {
	r.mu.Lock()
	if r.agents[id] == e {
		delete(r.agents, id)
		r.count.Add(-1)
		r.unindex(e, &e.reg)
	}
	r.mu.Unlock()
	r.topology.Add(1)
}

// index moves e in the capability index from old's tools to its current
// ones. The caller holds r.mu for writing.
func (r *Registry) index(e *entry, old *Registration) {
	if old != nil {
		r.unindex(e, old)
	}
	for _, t := range e.reg.Tools {
		if t.Capability == "" {
			continue
		}
		m := r.providers[t.Capability]
		if m == nil {
			m = make(map[string]*entry)
			r.providers[t.Capability] = m
		}
		m[e.reg.AgentID] = e
	}
}

func (r *Registry) unindex(e *entry, old *Registration) {
	for _, t := range old.Tools {
		if m := r.providers[t.Capability]; m != nil && m[old.AgentID] == e {
			delete(m, old.AgentID)
			if len(m) == 0 {
				delete(r.providers, t.Capability)
			}
		}
	}
}

// resolve picks, for every dependency of every tool of reg, a healthy
// provider whose tool has the capability and all the requested tags in the
// requested namespace (the lowest agent id wins, so answers are stable).
func (r *Registry) resolve(reg Registration) map[string][]Resolution {
	out := make(map[string][]Resolution, len(reg.Tools))
	for _, t := range reg.Tools {
		if len(t.Dependencies) == 0 {
			continue
		}
		res := make([]Resolution, 0, len(t.Dependencies))
		for _, d := range t.Dependencies {
			res = append(res, r.provider(d))
		}
		out[t.FunctionName] = res
	}
	return out
}

func (r *Registry) provider(d Dependency) Resolution {
	best := Resolution{Status: "unresolved"}
	ns := d.Namespace
	if ns == "" {
		ns = "default"
	}
	r.mu.RLock()
	cands := make([]*entry, 0, len(r.providers[d.Capability]))
	for _, e := range r.providers[d.Capability] {
		cands = append(cands, e)
	}
	r.mu.RUnlock()
	for _, e := range cands {
		e.mu.Lock()
		rec, reg := e.rec, e.reg
		e.mu.Unlock()
		if rec.Status != StatusHealthy || namespace(reg) != ns {
			continue
		}
		for _, t := range reg.Tools {
			if t.Capability != d.Capability || !containsAll(t.Tags, d.Tags) {
				continue
			}
			if best.AgentID == "" || reg.AgentID < best.AgentID {
				best = Resolution{AgentID: reg.AgentID, Capability: t.Capability, Endpoint: endpoint(reg, true), FunctionName: t.FunctionName, Status: "available"}
			}
			break
		}
	}
	if best.AgentID == "" {
		best.Capability = ""
	}
	return best
}

func namespace(reg Registration) string {
	if reg.Namespace == "" {
		return "default"
	}
	return reg.Namespace
}

// endpoint is where an agent serves: https://host:port, or stdio://<id>
// for an agent with no port.
func endpoint(reg Registration, tls bool) string {
	if reg.HTTPPort == 0 {
		return "stdio://" + reg.AgentID
	}
	scheme := "https"
	if !tls {
		scheme = "http"
	}
	return fmt.Sprintf("%s://%s:%d", scheme, reg.HTTPHost, reg.HTTPPort)
}

// Check is the cheap liveness path (HEAD /heartbeat/{id}). It refreshes the
// agent's liveness and returns Rotate set when the agent should POST again
// (a rotation, a renewed certificate, or a topology change since its last
// POST), or ErrUnknown / ErrEvicted when it must register anew.
func (r *Registry) Check(peer *trust.Peer, id string) (Result, error) {
	res := Result{AgentID: id}
	r.mu.RLock()
	e := r.agents[id]
	r.mu.RUnlock()
	if e == nil {
		// Binding first, so a certificate cannot probe which other ids exist.
		if err := authorize(peer, id, nil); err != nil {
			return res, err
		}
		return res, refusal(ErrUnknown, "unknown_agent", "agent %q is not registered", id)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := authorize(peer, id, &e.rec); err != nil {
		return res, err
	}
	switch e.rec.Status {
	case StatusEvicted:
		return res, refusal(ErrEvicted, "evicted", "agent %q was evicted: %s", id, e.rec.Reason)
	case StatusUnhealthy:
		return res, refusal(ErrUnknown, "unhealthy", "agent %q was silent too long; register again", id)
	}
	e.lastSeen.Store(r.cfg.Now().UnixNano())
	fp := ""
	if peer != nil {
		fp = peer.Fingerprint
	}
	res.Rotate = !e.rec.RotateFrom.IsZero() || fp != e.rec.CertFingerprint || e.topoSeen.Load() != r.topology.Load()
	return res, nil
}

// Delete removes an agent on behalf of peer, which must own it.
func (r *Registry) Delete(ctx context.Context, peer *trust.Peer, id string) error {
	r.mu.RLock()
	e := r.agents[id]
	r.mu.RUnlock()
	if e == nil {
		if err := authorize(peer, id, nil); err != nil {
			return err
		}
		return refusal(ErrUnknown, "unknown_agent", "agent %q is not registered", id)
	}
	e.mu.Lock()
	if err := authorize(peer, id, &e.rec); err != nil {
		e.mu.Unlock()
		return err
	}
	who := "anonymous (TLS off)"
	if peer != nil {
		who = peer.Name()
	}
	err := r.st.DeleteAgent(ctx, id, store.AuditEntry{Time: r.cfg.Now(), Action: "agent.delete", Identity: id, Outcome: store.OutcomeOK, Detail: "by " + who})
	e.mu.Unlock()
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	r.drop(id, e)
	return nil
}

// Evicted is an agent the registry evicted.
type Evicted struct {
	AgentID         string
	CertFingerprint string
	CertSerial      string
}

// EvictSerial evicts every agent registered with the certificate serial.
func (r *Registry) EvictSerial(ctx context.Context, serial, reason string) ([]Evicted, error) {
	return r.evict(ctx, func(rec *store.Agent) bool { return rec.CertSerial == serial }, reason)
}

// EvictEntity evicts every agent of entity.
func (r *Registry) EvictEntity(ctx context.Context, entity, reason string) ([]Evicted, error) {
	return r.evict(ctx, func(rec *store.Agent) bool { return rec.Entity == entity }, reason)
}

// EvictFingerprints evicts the agents registered with any of the
// certificates whose fingerprints are given.
func (r *Registry) EvictFingerprints(ctx context.Context, fps map[string]bool, reason string) ([]Evicted, error) {
	return r.evict(ctx, func(rec *store.Agent) bool { return fps[rec.CertFingerprint] }, reason)
}

func (r *Registry) evict(ctx context.Context, match func(*store.Agent) bool, reason string) ([]Evicted, error) {
	var (
		out  []Evicted
		recs []store.Agent
	)
	for _, e := range r.snapshot() {
		e.mu.Lock()
		if match(&e.rec) && e.rec.Status != StatusEvicted {
			e.rec.Status, e.rec.Reason = StatusEvicted, reason
			recs = append(recs, e.rec)
			out = append(out, Evicted{AgentID: e.rec.ID, CertFingerprint: e.rec.CertFingerprint, CertSerial: e.rec.CertSerial})
		}
		e.mu.Unlock()
	}
	if len(recs) == 0 {
		return nil, nil
	}
	r.topology.Add(1)
	if err := r.st.PutAgents(ctx, recs); err != nil {
		return out, fmt.Errorf("record evictions: %w", err)
	}
	return out, nil
}

// Rotate marks the agents of entity (every agent when entity is "") as due
// to re-register with a fresh certificate, and returns how many.
func (r *Registry) Rotate(ctx context.Context, entity string) (int, error) {
	now := r.cfg.Now()
	var recs []store.Agent
	for _, e := range r.snapshot() {
		e.mu.Lock()
		if (entity == "" || e.rec.Entity == entity) && e.rec.Status != StatusEvicted {
			e.rec.RotateFrom = now
			recs = append(recs, e.rec)
		}
		e.mu.Unlock()
	}
	if len(recs) == 0 {
		return 0, nil
	}
	if err := r.st.PutAgents(ctx, recs); err != nil {
		return 0, fmt.Errorf("record rotation: %w", err)
	}
	return len(recs), nil
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

// Run marks silent agents unhealthy and writes liveness changes in
// batches until ctx ends, then flushes once more.
func (r *Registry) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := r.Flush(context.WithoutCancel(ctx)); err != nil {
				r.cfg.Logger.Warn("flush agent liveness", "err", err)
			}
			return
		case <-t.C:
			r.Sweep()
			if err := r.Flush(ctx); err != nil {
				r.cfg.Logger.Warn("flush agent liveness", "err", err)
			}
		}
	}
}

// Sweep marks agents silent for longer than the timeout unhealthy and
// returns how many it marked.
func (r *Registry) Sweep() int {
	deadline := r.cfg.Now().Add(-r.cfg.Timeout).UnixNano()
	n := 0
	for _, e := range r.snapshot() {
		if e.lastSeen.Load() >= deadline {
			continue
		}
		e.mu.Lock()
		if e.rec.Status == StatusHealthy && e.lastSeen.Load() < deadline {
			e.rec.Status = StatusUnhealthy
			e.rec.LastSeen = time.Unix(0, e.lastSeen.Load()).UTC()
			r.markDirty(e.rec.ID)
			n++
		}
		e.mu.Unlock()
	}
	if n > 0 {
		r.topology.Add(1)
	}
	return n
}

func (r *Registry) markDirty(id string) {
	r.dirtyMu.Lock()
	r.dirty[id] = struct{}{}
	r.dirtyMu.Unlock()
}

// Flush writes the batched liveness changes.
func (r *Registry) Flush(ctx context.Context) error {
	r.dirtyMu.Lock()
	ids := r.dirty
	r.dirty = make(map[string]struct{})
	r.dirtyMu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	recs := make([]store.Agent, 0, len(ids))
	r.mu.RLock()
	for id := range ids {
		if e := r.agents[id]; e != nil {
			e.mu.Lock()
			recs = append(recs, e.rec)
			e.mu.Unlock()
		}
	}
	r.mu.RUnlock()
	if err := r.st.PutAgents(ctx, recs); err != nil {
		for id := range ids {
			r.markDirty(id)
		}
		return err
	}
	return nil
}

// Capability is one tool as GET /agents shows it.
type Capability struct {
	Name         string   `json:"name"`
	FunctionName string   `json:"function_name"`
	Version      string   `json:"version"`
	Tags         []string `json:"tags"`
	Description  string   `json:"description"`
	Available    bool     `json:"available"`
}

// View is an agent as GET /agents shows it: MCP Mesh's AgentInfo, plus
// the owner and eviction reason.
type View struct {
	ID                    string       `json:"id"`
	Name                  string       `json:"name"`
	Version               string       `json:"version"`
	AgentType             string       `json:"agent_type"`
	Runtime               string       `json:"runtime"`
	Description           string       `json:"description"`
	Endpoint              string       `json:"endpoint"`
	Namespace             string       `json:"namespace"`
	EntityID              string       `json:"entity_id"`
	Owner                 string       `json:"owner,omitempty"`
	Status                string       `json:"status"`
	Reason                string       `json:"reason,omitempty"`
	CreatedAt             time.Time    `json:"created_at"`
	LastSeen              time.Time    `json:"last_seen"`
	Capabilities          []Capability `json:"capabilities"`
	TotalDependencies     int          `json:"total_dependencies"`
	DependenciesResolved  int          `json:"dependencies_resolved"`
	CertificateExpiration *time.Time   `json:"certificate_expires_at,omitempty"`
}

// Filter selects agents in List; empty fields match everything, and an
// agent matches Capabilities if it offers any of them.
type Filter struct {
	Status, Entity, Namespace string
	Capabilities              []string
}

// List returns the agents matching f, by id.
func (r *Registry) List(f Filter, tls bool) []View {
	out := []View{}
	for _, e := range r.snapshot() {
		e.mu.Lock()
		rec, reg, notAfter := e.rec, e.reg, e.notAfter
		e.mu.Unlock()
		if (f.Status != "" && rec.Status != f.Status) || (f.Entity != "" && rec.Entity != f.Entity) ||
			(f.Namespace != "" && namespace(reg) != f.Namespace) || !offersAny(reg, f.Capabilities) {
			continue
		}
		v := View{
			ID: rec.ID, Name: reg.Name, Version: reg.Version, AgentType: reg.AgentType, Runtime: reg.Runtime,
			Description: reg.Description, Endpoint: endpoint(reg, tls), Namespace: namespace(reg), EntityID: rec.Entity,
			Owner: rec.Owner, Status: rec.Status, Reason: rec.Reason, CreatedAt: rec.RegisteredAt,
			LastSeen: time.Unix(0, e.lastSeen.Load()).UTC(), Capabilities: []Capability{},
		}
		if v.Name == "" {
			v.Name = rec.ID
		}
		if v.AgentType == "" {
			v.AgentType = "mcp_agent"
		}
		if !notAfter.IsZero() {
			v.CertificateExpiration = &notAfter
		}
		for _, t := range reg.Tools {
			v.Capabilities = append(v.Capabilities, Capability{Name: t.Capability, FunctionName: t.FunctionName, Version: t.Version, Tags: t.Tags, Description: t.Description, Available: rec.Status == StatusHealthy})
			v.TotalDependencies += len(t.Dependencies)
		}
		for _, rs := range r.resolve(reg) {
			for _, x := range rs {
				if x.Status == "available" {
					v.DependenciesResolved++
				}
			}
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Expiry calls fn with the certificate expiry of every registered agent,
// for the expiry metric.
func (r *Registry) Expiry(fn func(agentID, owner string, notAfter time.Time)) {
	for _, e := range r.snapshot() {
		e.mu.Lock()
		id, owner, na := e.rec.ID, e.rec.Owner, e.notAfter
		e.mu.Unlock()
		if !na.IsZero() {
			fn(id, owner, na)
		}
	}
}

func offersAny(reg Registration, caps []string) bool {
	if len(caps) == 0 {
		return true
	}
	for _, t := range reg.Tools {
		for _, c := range caps {
			if t.Capability == c {
				return true
			}
		}
	}
	return false
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
