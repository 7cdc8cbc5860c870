package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// toWire is one revocation event as /revocations/watch sends it.
func toWire(e store.Event) meshapi.RevocationEvent {
	w := meshapi.RevocationEvent{Seq: e.Seq, Kind: string(e.Kind), Serial: e.Serial, IssuerKeyID: e.IssuerKeyID,
		CommonName: e.CommonName, Entity: e.Entity, KeyHash: e.KeyHash, Time: e.Time.UTC()}
	switch e.Kind {
	case store.EventEntityRevoked:
		w.Reason = "entity revoked"
	case store.EventIdentityReinstated:
		w.Reason = "reinstated"
	default:
		w.Reason = ca.Reason(e.Reason).String()
	}
	return w
}

// keepAlive is how often an idle stream gets a comment line.
const keepAlive = 15 * time.Second

// serveWatch streams the revocations of the change feed as server-sent
// events, starting after Last-Event-ID or ?after=. An event's id is where
// to resume after it: every earlier event has been sent.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request, peer *trust.Peer) {
	after, err := resumePoint(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, meshapi.ErrorResponse{Error: err.Error(), Timestamp: now(s)})
		return
	}
	// Each stream holds a connection for as long as the caller likes: cap
	// them per source and per class. Callers without a certificate have a
	// share of their own, so they never take an authenticated verifier's
	// slot.
	source := watchSource(r, peer)
	pool, share := s.watchSlots, s.cfg.MaxWatchStreams-s.cfg.MaxCertlessWatchStreams
	if peer == nil {
		pool, share = s.certlessWatchSlots, s.cfg.MaxCertlessWatchStreams
	}
	release, full := pool.acquire(source)
	if full != "" {
		w.Header().Set("Retry-After", "30")
		msg := fmt.Sprintf("too many revocation streams from this caller (at most %d); close one or retry later", s.cfg.MaxWatchStreamsPerSource)
		switch {
		case full == "total" && peer == nil:
			msg = fmt.Sprintf("meshd serves its maximum of %d revocation streams to callers without a certificate; retry later, or present one", share)
		case full == "total":
			msg = fmt.Sprintf("meshd serves its maximum of %d revocation streams to callers with a certificate; retry later", share)
		case peer != nil && strings.HasPrefix(source, "node "):
			msg = fmt.Sprintf("too many revocation streams from node %s and its agents (at most %d together); close one or retry later", strings.TrimPrefix(source, "node "), s.cfg.MaxWatchStreamsPerSource)
		}
		s.metrics.rateLimited.WithLabelValues(limitWatchStreams).Inc()
		s.refuse(w, r, http.StatusServiceUnavailable, "too_many_streams", msg)
		return
	}
	defer release()
	// Counted with its slot, before the caller can see the answer: the
	// gauge never lags a stream its holder already has.
	s.metrics.watchers.Inc()
	defer s.metrics.watchers.Dec()
	rc := http.NewResponseController(w)
	// The request is read: the listener's read deadline no longer
	// applies to a response that lasts.
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	// The intermediates tainted now, told to every new subscriber; those a
	// later rotation taints follow its ca.rotated event, which meshd
	// publishes only once ReloadTaint has run.
	told := map[string]bool{}
	if b := s.taintEvents(told); len(b) > 0 {
		if _, err := w.Write(b); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
	ticker := time.NewTicker(keepAlive)
	defer ticker.Stop()
	ctx := r.Context()
	rd := s.events.Reader(after)
	for {
		ds, wake, err := rd.Next(ctx)
		if err != nil {
			return
		}
		sent := false
		for _, d := range ds {
			if d.Event.Kind == store.EventCARotated {
				if b := s.taintEvents(told); len(b) > 0 {
					if _, err := w.Write(b); err != nil {
						return
					}
					sent = true
				}
				continue
			}
			if !d.Event.Revocation() {
				continue // entity registrations are not the stream's
			}
			data, _ := json.Marshal(toWire(d.Event))
			if _, err := w.Write([]byte("id: " + strconv.FormatInt(d.Resume, 10) + "\nevent: " + meshapi.EventRevocation + "\ndata: " + string(data) + "\n\n")); err != nil {
				return
			}
			sent = true
		}
		if sent {
			if err := rc.Flush(); err != nil {
				return
			}
		}
		if wake == nil {
			continue // more may be waiting in the store
		}
		select {
		case <-ctx.Done():
			return
		case <-s.stopping:
			return // meshd is shutting down; subscribers resume elsewhere or later
		case <-wake:
		case <-ticker.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

// watchSource is the source one caller's revocation streams are counted
// under.
func watchSource(r *http.Request, peer *trust.Peer) string {
	if peer == nil {
		// No certificate: the caller's address, an IPv6 /64 as one.
		return "addr " + sourceKey(r.RemoteAddr)
	}
	// Only the mesh CA vouches for node names (Peer.MeshCA; a trust-dir
	// CA merely named localca does not): its certificates of node ct111
	// ("ct111.mesh") and of the agents it mints ("x@ct111") count as
	// "node ct111", the Node of the parsed identity, so a node gains no
	// streams by minting agent identities.
	if peer.MeshCA && peer.Identity.Node != "" &&
		(peer.Identity.Kind == identity.KindNode || peer.Identity.Kind == identity.KindAgent) {
		return "node " + peer.Identity.Node
	}
	// A partner entity's CA vouches for its own namespace only: every
	// certificate it signs counts as the entity, named with the backend
	// that admitted it so that two sources' entities never share a count.
	if peer.Entity != "" {
		return "entity " + peer.Backend + "/" + peer.Entity
	}
	// Any other certificate: its backend and its name (CN, or its one
	// SPIFFE ID) as the chain verified it.
	return "cert " + peer.Backend + "/" + peer.Name()
}

func resumePoint(r *http.Request) (int64, error) {
	v := r.Header.Get("Last-Event-ID")
	if q := r.URL.Query().Get("after"); q != "" {
		v = q
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errBadResume
	}
	return n, nil
}

var errBadResume = &resumeError{}

type resumeError struct{}

func (*resumeError) Error() string {
	return "Last-Event-ID / after must be the non-negative sequence number of the last event seen"
}
