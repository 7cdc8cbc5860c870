package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// DefaultStalenessBound is Config.StalenessBound's default: how long a
// replica cut off from the store keeps serving the heartbeats of agents it
// knows. It is also how late, at most, a revocation made on another
// replica takes effect on one that cannot see it.
const DefaultStalenessBound = 5 * time.Second

// Refusal reasons of the staleness gate.
const (
	// ReasonReplicaStale: this replica has not read the store for longer
	// than its staleness bound, so it cannot tell what was revoked
	// meanwhile.
	ReasonReplicaStale = "replica_stale"
	// ReasonStoreUnreachable: this replica's last read of the store
	// failed, so a write would not be durable now.
	ReasonStoreUnreachable = "store_unreachable"
)

// Freshness is how current this meshd's view of the store is: the change
// feed (*events.Feed implements it). Both methods are one atomic load.
type Freshness interface {
	// ReadAt is when the last successful read of the store began: every
	// change committed before it (a revocation on any replica) has taken
	// effect here.
	ReadAt() time.Time
	// Failing reports whether the last read of the store failed.
	Failing() bool
}

// gate says what a route needs of the store to answer.
type gate int

const (
	// current routes decide on revocation state (a heartbeat, the agent
	// list, a revocation stream): refused once this replica is stale
	// beyond its bound.
	current gate = iota
	// durable routes write to the store (issuance, enrollment, a
	// deletion, a session): refused as soon as the last read of the store
	// failed too, since the write could not be made durable, rather
	// than left hanging on a store that does not answer.
	durable
)

// The staleness gate's verdicts (Server.freshState).
const (
	// stateCurrent: the replica read the store within its bound, and the
	// last read succeeded.
	stateCurrent int32 = iota
	// stateUnreachable: within the bound, but the last read failed.
	stateUnreachable
	// stateStale: beyond the bound.
	stateStale
)

// freshTick is how often the gate's verdict is refreshed for bound: a
// tenth of it, at most 100ms.
func freshTick(bound time.Duration) time.Duration { return min(100*time.Millisecond, bound/10) }

// watchFreshness refreshes the gate's verdict every freshTick until ctx
// ends, so that a request pays one atomic load for it, not the clock.
func (s *Server) watchFreshness(ctx context.Context) {
	tick := freshTick(s.cfg.StalenessBound)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		s.freshState.Store(s.freshness(tick))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// freshness is the gate's verdict now. It turns stale one tick early:
// the verdict stands until the next tick, and no request may be admitted
// past the bound.
func (s *Server) freshness(early time.Duration) int32 {
	if s.cfg.Now().Add(early).Sub(s.fresh.ReadAt()) > s.cfg.StalenessBound {
		return stateStale
	}
	if s.fresh.Failing() {
		return stateUnreachable
	}
	return stateCurrent
}

// storeAway reports whether a write now would not reach the store: this
// replica is stale, or its last read of the store failed. Without
// Freshness (one process on SQLite) it never is.
func (s *Server) storeAway() bool { return s.freshState.Load() != stateCurrent }

// gated refuses a request with 503 when this replica's view of the store
// is too old (or, for g durable, the store unreachable) for h to decide
// it safely, and calls h otherwise. The check is one atomic load, before
// the caller's certificate is verified: a stale replica decides nothing
// on its revocation state.
func (s *Server) gated(g gate, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch st := s.freshState.Load(); {
		case st == stateCurrent:
			h(w, r)
		case st == stateStale:
			age := s.cfg.Now().Sub(s.fresh.ReadAt())
			s.refuseStale(w, r, ReasonReplicaStale, fmt.Sprintf("this meshd replica has not read the store for %s, about its staleness bound (--staleness-bound %s) or longer: it cannot tell what was revoked meanwhile, so it refuses until it reads the store again; retry shortly or on another replica", age.Round(time.Millisecond), s.cfg.StalenessBound))
		case g == durable:
			s.refuseStale(w, r, ReasonStoreUnreachable, "this meshd replica cannot reach the store now, so nothing can be written durably; nothing was written; retry shortly or on another replica")
		default:
			h(w, r)
		}
	}
}

// refuseStale answers 503 with Retry-After and reason: in the JSON body,
// and in X-Reason for a HEAD, whose body is never sent.
func (s *Server) refuseStale(w http.ResponseWriter, r *http.Request, reason, msg string) {
	w.Header().Set("Retry-After", "1")
	switch {
	case r.Method == http.MethodHead && r.URL.Path != "/health":
		s.count("head", http.StatusServiceUnavailable)
	case r.Method == http.MethodPost && r.URL.Path == "/heartbeat":
		s.count("post", http.StatusServiceUnavailable)
	}
	if r.Method == http.MethodHead {
		s.metrics.refusals.WithLabelValues(reason).Inc()
		w.Header().Set("X-Reason", reason)
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	s.refuse(w, r, http.StatusServiceUnavailable, reason, msg)
}

// staleDegradation lists this replica's staleness for GET /health: since
// when it has not read the store, once that is beyond its bound, or once
// its last read failed (writes are refused then).
func (s *Server) staleDegradation() []meshapi.Degradation {
	if s.fresh == nil {
		return nil
	}
	at := s.fresh.ReadAt()
	switch s.freshState.Load() {
	case stateStale:
		return []meshapi.Degradation{{Component: "store (change feed, staleness bound " + s.cfg.StalenessBound.String() + ")", Reason: ReasonReplicaStale, Since: at.UTC()}}
	case stateUnreachable:
		return []meshapi.Degradation{{Component: "store (change feed)", Reason: ReasonStoreUnreachable, Since: at.UTC()}}
	}
	return nil
}
