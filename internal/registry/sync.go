package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Replicas. Several meshd processes on one store each hold the registry
// in memory; an agent heartbeats to any of them. Sync merges into memory
// what the others wrote (agents they registered, changed, evicted or
// deleted), and shareLiveness writes, in the flush batch, the last-seen
// time of the agents whose heartbeats this process answers, at most once
// per ShareInterval each: liveness crosses replicas without a write per
// heartbeat. A record's Version orders the changes, as it does within one
// process; last-seen times merge by the latest.
//
// Ownership is the store's: it changes only through the audited claim
// (Store.PutAgentAudited), and every other write of a replica applies only
// over the ownership it was authorised against and never brings back a
// deleted record (store.Store). So a replica that still holds an
// agent released and claimed by another, or deleted, elsewhere cannot
// write it back; its own copy is replaced, or dropped, by its next Sync.

// Sync reads every agent from the store and merges what other processes
// wrote into memory: a record newer (by Version) than the one held
// replaces it, and so does one whose ownership (owner, entity, source)
// differs from the one held, whatever its version; a later last-seen time
// is taken, an agent not held is added, and one held but no longer stored
// (deleted or released by another process) is dropped. A record this
// process wrote after the read began is kept as it is: the read may
// predate it. It returns how many entries it changed.
func (r *Registry) Sync(ctx context.Context) (int, error) {
	// Ordered against Delete and the batches, like they are against each
	// other: a deletion here cannot be undone by a record read before it.
	r.lockWrites()
	defer r.writeMu.Unlock()
	// Counted before the read: an entry written before this (wrote <
	// gen) is in what the read returns, or was deleted since.
	gen := r.syncs.Add(1)
	start := r.cfg.Now()
	recs, err := r.st.Agents(ctx)
	if err != nil {
		r.blind.Store(true)
		return 0, fmt.Errorf("sync agents from the store: %w", err)
	}
	defer r.blind.Store(false)
	stored := make(map[string]bool, len(recs))
	changed, topo := 0, false
	for _, rec := range recs {
		stored[rec.ID] = true
		if r.expiredCertless(&rec, start) && r.lookup(rec.ID) == nil {
			// Silent past the expiry: not taken in, and its replica (or
			// this one's next Expire) deletes it.
			continue
		}
		c, t := r.merge(rec, gen)
		if c {
			changed++
		}
		topo = topo || t
	}
	for _, e := range r.snapshot() {
		e.mu.Lock()
		id := e.rec.ID
		if !e.gone && id != "" && !stored[id] && e.wrote < gen {
			r.drop(id, e)
			changed++
		}
		e.mu.Unlock()
	}
	if topo {
		r.topology.Add(1)
	}
	return changed, nil
}

// merge takes rec, read from the store by the Sync counted gen, into
// memory. It reports whether the entry changed, and whether other agents
// can see the change.
func (r *Registry) merge(rec store.Agent, gen uint64) (changed, visible bool) {
	seen := rec.LastSeen.UnixNano()
	e := r.locked(rec.ID)
	if e == nil {
		e = &entry{rec: rec, node: ownerNode(rec.Owner)}
		var reg meshapi.Registration
		_ = json.Unmarshal(rec.Payload, &reg)
		e.setRegistration(reg)
		e.lastSeen.Store(seen)
		e.mu.Lock()
		r.mu.Lock()
		if r.agents[rec.ID] != nil {
			// Claimed here meanwhile: that entry is the one to merge into.
			r.mu.Unlock()
			e.mu.Unlock()
			return r.merge(rec, gen)
		}
		r.chargeStored(e)
		r.agents[rec.ID] = e
		r.count.Add(1)
		r.index(e, nil)
		r.mu.Unlock()
		e.mu.Unlock()
		return true, true
	}
	defer e.mu.Unlock()
	if seen > e.lastSeen.Load() {
		e.lastSeen.Store(seen)
		changed = true
	}
	// The store's ownership replaces a held one that differs, unless
	// this process wrote the entry since the read began: a claim it made
	// then is newer than what was read.
	owner := e.wrote < gen && !store.SameOwner(rec, e.rec)
	if rec.Version <= e.rec.Version && !owner {
		return changed, false
	}
	old, oldStatus := e.reg, e.rec.Status
	var reg meshapi.Registration
	_ = json.Unmarshal(rec.Payload, &reg)
	if owner {
		// Another owner's liveness and certificate, not the ones held.
		e.lastSeen.Store(seen)
		e.notAfter = time.Time{}
	}
	e.rec, e.node = rec, ownerNode(rec.Owner)
	r.rechargeStored(e)
	// The next heartbeat is parsed again rather than matched against a
	// body this process no longer holds the record of.
	e.body = 0
	e.setRegistration(reg)
	r.mu.Lock()
	r.index(e, &old)
	r.mu.Unlock()
	return true, owner || oldStatus != rec.Status || !sameVisible(old, reg)
}

// shareLiveness marks dirty, with its last-seen time in the record, every
// healthy agent whose heartbeats reached this process since its record
// last carried its liveness, ShareInterval ago or more; Flush writes them
// in one batch. The version stays: liveness alone is no change.
//
// An agent registered without a certificate has its liveness written at
// least every quarter of the certless expiry, replicas or not, so that a
// restart (which loads no expired one) keeps the live ones.
func (r *Registry) shareLiveness() {
	var certlessEvery time.Duration
	if r.certless != nil {
		certlessEvery = r.certless.lim.Expiry / 4
	}
	if r.cfg.ShareInterval <= 0 && certlessEvery <= 0 {
		return
	}
	for _, e := range r.snapshot() {
		seen := e.lastSeen.Load()
		e.mu.Lock()
		every := r.cfg.ShareInterval
		if e.charge.charged && (every <= 0 || certlessEvery < every) {
			every = certlessEvery
		}
		if !e.gone && e.rec.ID != "" && e.rec.Status == StatusHealthy && every > 0 &&
			time.Duration(seen-e.rec.LastSeen.UnixNano()) >= every {
			e.rec.LastSeen = time.Unix(0, seen).UTC()
			r.markDirty(e.rec.ID)
		}
		e.mu.Unlock()
	}
}

// bump returns the version that follows v. Within one process that is
// v+1. Among replicas it is a hybrid clock, the later of v+1 and now in
// Unix nanoseconds, so that two replicas changing one record (one evicts
// it, the other takes a new registration) do not both write the same
// version with different contents, which the store would take in either
// order: the later change wins, and every replica converges on it.
func (r *Registry) bump(v int64) int64 {
	if r.cfg.SyncInterval <= 0 {
		return v + 1
	}
	return max(v+1, r.cfg.Now().UnixNano())
}
