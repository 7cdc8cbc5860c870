package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// Result is the registry's answer to a heartbeat.
type Result struct {
	AgentID string
	// Created is set on the agent's first registration.
	Created bool
	// Rotate asks the agent to re-register with a fresh certificate.
	Rotate bool
	// Resolved maps each of the agent's tools to the providers of its
	// dependencies (POST only), and ResolvedJSON is Resolved as
	// json.Marshal writes it, shared by the agents that share the
	// resolution: never modified.
	Resolved     map[string][]meshapi.Resolution
	ResolvedJSON []byte
}

// HeartbeatFrom handles a raw POST /heartbeat body from a caller at
// source, the name the server gives its network address (an IPv4
// address, an IPv6 /64). A body identical to the agent's last one, from
// the same certificate, is answered from memory without being parsed;
// anything else goes through ParseRegistration and Heartbeat. A caller
// without a certificate (peer nil) is held to the certless bounds of its
// source (Config.Certless); source means nothing for a caller with one.
// Nothing of body is kept once it returns (the server reuses its buffer).
func (r *Registry) HeartbeatFrom(ctx context.Context, peer *trust.Peer, source string, body []byte) (Result, error) {
	sum := digestBody(body)
	if peer != nil {
		if res, ok := r.unchanged(peer, sum); ok {
			return res, nil
		}
	}
	reg, payload, err := ParseRegistration(body)
	if err != nil {
		return Result{}, err
	}
	return r.heartbeat(ctx, peer, source, reg, payload, sum)
}

// HeartbeatUnchanged answers, from memory alone, a POST /heartbeat body
// identical to the last one peer's agent sent with the same certificate,
// as HeartbeatFrom would; false for anything HeartbeatFrom would write
// to the store (a registration, a change, a caller without a
// certificate). A replica that cannot reach the store serves these only.
func (r *Registry) HeartbeatUnchanged(peer *trust.Peer, body []byte) (Result, bool) {
	if peer == nil {
		return Result{}, false
	}
	return r.unchanged(peer, digestBody(body))
}

// unchanged answers a heartbeat whose body hash, certificate and state are
// what the registry already holds.
func (r *Registry) unchanged(peer *trust.Peer, sum bodyDigest) (Result, bool) {
	id, ok := r.soleID(peer)
	if !ok {
		return Result{}, false
	}
	e := r.locked(id)
	if e == nil {
		return Result{}, false
	}
	// A pending rotation is acknowledged by this POST, which the store
	// must record: the slow path does.
	if e.body != sum || e.rec.Status != StatusHealthy || e.rec.CertFingerprint != peer.Fingerprint || !e.rec.RotateFrom.IsZero() || r.authorize(peer, id, &e.rec) != nil {
		e.mu.Unlock()
		return Result{}, false
	}
	e.lastSeen.Store(r.cfg.Now().UnixNano())
	res := Result{AgentID: id}
	e.mu.Unlock()
	res.Resolved, res.ResolvedJSON = r.resolveFor(e)
	return res, true
}

// Heartbeat registers or refreshes an agent. payload is the canonical body
// from ParseRegistration. A change to what the store holds is durable
// before Heartbeat returns; an unchanged heartbeat touches only memory.
func (r *Registry) Heartbeat(ctx context.Context, peer *trust.Peer, reg meshapi.Registration, payload []byte) (Result, error) {
	return r.heartbeat(ctx, peer, "", reg, payload, 0)
}

func (r *Registry) heartbeat(ctx context.Context, peer *trust.Peer, origin string, reg meshapi.Registration, payload []byte, sum bodyDigest) (Result, error) {
	res, err := r.heartbeatOnce(ctx, peer, origin, reg, payload, sum)
	if errors.Is(err, errRecordGone) {
		// The record this process held was deleted or released by
		// another replica since it was read, and the entry is dropped:
		// the heartbeat is a registration anew, and claims the id (or
		// is refused) like any first one.
		res, err = r.heartbeatOnce(ctx, peer, origin, reg, payload, sum)
	}
	return res, err
}

// errRecordGone reports a change to an agent whose record the store no
// longer holds; heartbeat registers the agent anew.
var errRecordGone = errors.New("registry: the agent's record was deleted from the store meanwhile")

func (r *Registry) heartbeatOnce(ctx context.Context, peer *trust.Peer, origin string, reg meshapi.Registration, payload []byte, sum bodyDigest) (Result, error) {
	now := r.cfg.Now()
	res := Result{AgentID: reg.AgentID}
	e, created, err := r.claim(peer, origin, reg.AgentID, &reg, payload)
	if err != nil {
		return res, err
	}
	// recharged is the payload size e was charged before this heartbeat
	// changed it, when it did: given back if the write fails.
	recharged := int64(-1)
	samePayload := false
	if !created {
		if err := r.authorize(peer, reg.AgentID, &e.rec); err != nil {
			e.mu.Unlock()
			return res, err
		}
		// A payload the registry holds already was bounded when it came
		// (or, loaded from the store, warned about by New).
		if samePayload = bytes.Equal(e.rec.Payload, payload); !samePayload {
			if err := r.bound(&reg); err != nil {
				e.mu.Unlock()
				return res, err
			}
			// Only a caller without a certificate may change an agent
			// registered without one (authorize says so): its payload
			// stays within the certless bounds.
			if e.charge.charged && peer == nil {
				if err := r.certless.resize(e.charge.source, e.charge.bytes, int64(len(payload)), false); err != nil {
					e.mu.Unlock()
					return res, err
				}
				recharged, e.charge.bytes = e.charge.bytes, int64(len(payload))
			}
		}
	}
	fp, serial, source := "", "", ""
	var notAfter time.Time
	if peer != nil {
		fp, serial, source, notAfter = peer.Fingerprint, peer.Serial, peer.Backend, peer.Leaf.NotAfter
	}
	e.lastSeen.Store(now.UnixNano())
	pending := !e.rec.RotateFrom.IsZero()
	// authorize has checked the source, unless the record has none yet.
	// A pending rotation is a change: this POST acknowledges it.
	unchanged := !pending && samePayload && e.rec.Status == StatusHealthy && e.rec.CertFingerprint == fp && (e.rec.Source != "" || source == "")
	if unchanged {
		e.body = sum
		e.mu.Unlock()
		res.Resolved, res.ResolvedJSON = r.resolveFor(e)
		return res, nil
	}
	next := e.rec
	next.ID = reg.AgentID
	next.Version = r.bump(next.Version)
	// A claim binds the owner (audited): the id's first, or the first
	// with a certificate of an id registered without one. A record kept
	// from before sources were stored is bound to its owner's source.
	var claim *store.AuditEntry
	switch {
	case created || next.Owner == "":
		// created_at is the id's first registration: an agent without a
		// certificate (TLS off) keeps it across its changes.
		if next.RegisteredAt.IsZero() {
			next.RegisteredAt = now
		}
		if peer != nil {
			next.Owner, next.Entity, next.Source = peer.Name(), peer.Entity, peer.Backend
		}
		if created || peer != nil {
			claim = &store.AuditEntry{Time: now, Action: "agent.claim", Identity: reg.AgentID, Outcome: store.OutcomeOK, Detail: ownerLabel(&next)}
		}
	case next.Source == "" && source != "":
		next.Source = source
		claim = &store.AuditEntry{Time: now, Action: "agent.claim", Identity: reg.AgentID, Outcome: store.OutcomeOK,
			Detail: ownerLabel(&next) + " (bound to a record kept without a source)"}
	}
	next.Payload = payload
	next.CertFingerprint, next.CertSerial = fp, serial
	next.Status, next.Reason = StatusHealthy, ""
	next.LastSeen = now
	// One POST acknowledges a rotation request, as in MCP Mesh: HEAD
	// answers 200 again after it. An agent that came back with the
	// certificate it had when the rotation was asked hears rotate: true
	// once, which tells an agent that can renew to do so now.
	rotating := pending && fp == e.rec.CertFingerprint
	next.RotateFrom = time.Time{}
	if err := r.put(ctx, next, claim); err != nil {
		owned := errors.Is(err, store.ErrAgentOwned)
		gone := claim == nil && errors.Is(err, store.ErrNotFound)
		if created || owned || gone {
			// The store holds another owner, or no record, for the id:
			// this entry is stale, and the next Sync loads what the
			// store holds.
			r.drop(reg.AgentID, e)
		} else if recharged >= 0 {
			_ = r.certless.resize(e.charge.source, e.charge.bytes, recharged, true)
			e.charge.bytes = recharged
		}
		e.mu.Unlock()
		switch {
		case owned:
			// Both writes are conditional: another process (a replica)
			// granted the id to another owner first, or changed its
			// ownership since this one read it.
			return res, refusal(ErrForbidden, "owned_by_other", "agent id %q is owned by another certificate (%v); only its owner may act for it", reg.AgentID, err)
		case gone:
			return res, fmt.Errorf("%w: %w", errRecordGone, err)
		}
		return res, fmt.Errorf("record agent %q: %w", reg.AgentID, err)
	}
	e.wrote = r.syncs.Load()
	old, oldStatus := e.reg, e.rec.Status
	e.rec, e.notAfter, e.body = next, notAfter, sum
	e.setRegistration(reg)
	if claim != nil {
		e.node = ownerNode(next.Owner)
	}
	if next.Owner != "" {
		// A certificate took over an agent registered without one.
		r.uncharge(e)
	}
	// Only what dependents can see moves the topology: other agents are
	// asked (HEAD 202) to POST again for nothing otherwise. It moves once
	// the change is indexed, so no resolution at the new value misses it.
	// A claim changes whom the agent may provide for.
	if created || claim != nil || oldStatus != StatusHealthy || !sameVisible(old, reg) {
		r.mu.Lock()
		r.index(e, &old)
		r.mu.Unlock()
		r.topology.Add(1)
	}
	e.mu.Unlock()
	if created || oldStatus != StatusHealthy {
		r.changed(Change{Kind: ChangeRegistered, AgentID: reg.AgentID})
	}
	res.Created, res.Rotate = created, rotating
	res.Resolved, res.ResolvedJSON = r.resolveFor(e)
	return res, nil
}

// put writes rec: a claim, the only write that inserts a record or sets
// its ownership, with claim's audit entry; any other change only over the
// ownership the heartbeat was authorised against (rec's, which the entry
// held), so a replica holding a record from before a release or another
// claim cannot write it back.
func (r *Registry) put(ctx context.Context, rec store.Agent, claim *store.AuditEntry) error {
	if claim != nil {
		return r.st.PutAgentAudited(ctx, rec, *claim)
	}
	return r.st.UpdateAgent(ctx, rec)
}

// sameVisible reports whether two registrations look the same to other
// agents: endpoint, namespace, type and tools.
func sameVisible(a, b meshapi.Registration) bool {
	return a.HTTPHost == b.HTTPHost && a.HTTPPort == b.HTTPPort && namespace(a) == namespace(b) &&
		a.AgentType == b.AgentType && reflect.DeepEqual(a.Tools, b.Tools)
}

// Check is the cheap liveness path (HEAD /heartbeat/{id}). It refreshes the
// agent's liveness and returns Rotate set when the agent should POST again
// (a rotation, a renewed certificate, or a POST answer that would differ
// from the one it last received), or ErrUnknown / ErrEvicted when it must
// register anew.
//
// The answer is per agent, where MCP Mesh's registry asks every agent to
// POST after any change anywhere (its topology is mesh-wide): once the
// topology moved past what the agent's answer is known current for
// (entry.topoSeen), Check resolves the agent's dependencies at the
// current value (from the cache the agents of its setKey share) and
// compares the digest with that of the answer it received (entry.sent).
// Equal: a POST would tell the agent nothing new, and Check answers 200
// and records that the answer is current up to this value. An agent
// without dependencies is never asked to POST for others' churn.
func (r *Registry) Check(peer *trust.Peer, id string) (Result, error) {
	res := Result{AgentID: id}
	e := r.locked(id)
	if e == nil {
		// Binding first, so a certificate cannot probe which other ids exist.
		if err := r.authorize(peer, id, nil); err != nil {
			return res, err
		}
		if r.blind.Load() {
			return res, errBlind(id)
		}
		return res, refusal(ErrUnknown, "unknown_agent", "agent %q is not registered", id)
	}
	if err := r.checkLocked(peer, id, e); err != nil {
		e.mu.Unlock()
		return res, err
	}
	e.lastSeen.Store(r.cfg.Now().UnixNano())
	fp := ""
	if peer != nil {
		fp = peer.Fingerprint
	}
	// The certificate's fingerprint is compared with the one the record
	// was registered with: the chain was verified by the trust backend
	// that admitted it, and authorize has bound it to id.
	if !e.rec.RotateFrom.IsZero() || fp != e.rec.CertFingerprint {
		e.mu.Unlock()
		res.Rotate = true
		return res, nil
	}
	current := e.topoSeen == r.topology.Load()
	e.mu.Unlock()
	if !current {
		// Resolved without e.mu, which resolution takes itself; an
		// eviction meanwhile is answered by the agent's next request
		// (and its connection is closed by it).
		_, same := r.resolutionFor(e, compared)
		res.Rotate = !same
	}
	return res, nil
}

// checkLocked refuses a HEAD for id from peer that e, id's entry, does
// not serve: another certificate's, an evicted agent, or one silent too
// long. The caller holds e.mu.
func (r *Registry) checkLocked(peer *trust.Peer, id string, e *entry) error {
	if err := r.authorize(peer, id, &e.rec); err != nil {
		return err
	}
	switch e.rec.Status {
	case StatusEvicted:
		return refusal(ErrEvicted, "evicted", "agent %q was evicted: %s", id, e.rec.Reason)
	case StatusUnhealthy:
		if r.blind.Load() {
			return errBlind(id)
		}
		return refusal(ErrUnknown, "unhealthy", "agent %q was silent too long; register again", id)
	}
	return nil
}

// errBlind answers a liveness check this replica cannot decide while it
// cannot read the store (Registry.blind): the agent may be registered,
// and alive, on another replica. It wraps store.ErrUnavailable, which
// meshd answers with 503 and Retry-After, never the 410 that makes an
// agent register again.
func errBlind(id string) error {
	return fmt.Errorf("agent %q: this replica cannot read what the others wrote: %w", id, store.ErrUnavailable)
}

// Run marks silent agents unhealthy and writes liveness changes in
// batches until ctx ends, then flushes once more.
func (r *Registry) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.FlushInterval)
	defer t.Stop()
	var syncs <-chan time.Time
	if r.cfg.SyncInterval > 0 {
		st := time.NewTicker(r.cfg.SyncInterval)
		defer st.Stop()
		syncs = st.C
	}
	for {
		select {
		case <-ctx.Done():
			if err := r.Flush(context.WithoutCancel(ctx)); err != nil {
				r.cfg.Logger.Warn("flush agent liveness", "err", err)
			}
			return
		case <-syncs:
			if _, err := r.Sync(ctx); err != nil && ctx.Err() == nil {
				r.cfg.Logger.Warn("sync agents written by other replicas", "err", err)
			}
		case <-t.C:
			r.Sweep()
			if _, err := r.Expire(ctx); err != nil && ctx.Err() == nil {
				r.cfg.Logger.Warn("expire agents registered without a certificate", "err", err)
			}
			r.shareLiveness()
			if err := r.Flush(ctx); err != nil {
				r.cfg.Logger.Warn("flush agent liveness", "err", err)
			}
		}
	}
}

// Sweep marks agents silent for longer than the timeout unhealthy and
// returns how many it marked.
func (r *Registry) Sweep() int {
	if r.blind.Load() {
		return 0 // their heartbeats may be reaching another replica
	}
	deadline := r.cfg.Now().Add(-r.cfg.Timeout).UnixNano()
	n := 0
	for _, e := range r.snapshot() {
		if e.lastSeen.Load() >= deadline {
			continue
		}
		e.mu.Lock()
		marked := !e.gone && e.rec.Status == StatusHealthy && e.lastSeen.Load() < deadline
		if marked {
			e.rec.Status = StatusUnhealthy
			e.rec.LastSeen = time.Unix(0, e.lastSeen.Load()).UTC()
			e.rec.Version = r.bump(e.rec.Version)
			r.markDirty(e.rec.ID)
			n++
		}
		id := e.rec.ID
		e.mu.Unlock()
		if marked {
			r.changed(Change{Kind: ChangeUnhealthy, AgentID: id})
		}
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
	r.lockWrites()
	defer r.writeMu.Unlock()
	r.dirtyMu.Lock()
	ids := r.dirty
	r.dirty = make(map[string]struct{})
	r.dirtyMu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	recs := make([]store.Agent, 0, len(ids))
	for id := range ids {
		if e := r.locked(id); e != nil {
			recs = append(recs, e.rec)
			e.mu.Unlock()
		}
	}
	r.hooks.afterCopy()
	if err := r.st.PutAgents(ctx, recs); err != nil {
		for id := range ids {
			r.markDirty(id)
		}
		return err
	}
	return nil
}
