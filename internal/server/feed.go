package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// feed is the revocation feed as subscribers see it: the store's
// revocation events, the most recent of them kept in memory so a thousand
// subscribers woken by one revocation read memory, not the database.
type feed struct {
	mu     sync.Mutex
	tail   []store.RevocationEvent // the newest events, in Seq order
	last   int64                   // highest Seq seen
	wake   chan struct{}           // closed and replaced when events arrive
	maxLen int
}

func newFeed() *feed {
	return &feed{wake: make(chan struct{}), maxLen: 4096}
}

// publish appends events (in Seq order, newer than any seen) and wakes the
// subscribers.
func (f *feed) publish(evs []store.RevocationEvent) {
	if len(evs) == 0 {
		return
	}
	f.mu.Lock()
	for _, e := range evs {
		if e.Seq <= f.last {
			continue
		}
		f.tail = append(f.tail, e)
		f.last = e.Seq
	}
	if over := len(f.tail) - f.maxLen; over > 0 {
		f.tail = append(f.tail[:0:0], f.tail[over:]...)
	}
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

// since returns the events after seq that memory holds, whether memory
// covers everything after seq, and a channel closed on the next publish.
func (f *feed) since(seq int64) ([]store.RevocationEvent, bool, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	covered := len(f.tail) == 0 && seq >= f.last || len(f.tail) > 0 && seq >= f.tail[0].Seq-1
	var out []store.RevocationEvent
	if covered {
		for i := len(f.tail) - 1; i >= 0 && f.tail[i].Seq > seq; i-- {
			out = append(out, f.tail[i])
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out, covered, f.wake
}

func toWire(e store.RevocationEvent) meshapi.RevocationEvent {
	w := meshapi.RevocationEvent{Seq: e.Seq, Serial: e.Serial, IssuerKeyID: e.IssuerKeyID, CommonName: e.CommonName, Entity: e.Entity, Time: e.Time.UTC()}
	if e.Entity != "" {
		w.Reason = "entity revoked"
	} else {
		w.Reason = ca.Reason(e.Reason).String()
	}
	return w
}

// keepAlive is how often an idle stream gets a comment line.
const keepAlive = 15 * time.Second

// serveWatch streams the revocation feed as server-sent events,
// starting after Last-Event-ID or ?after=.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request) {
	after, err := resumePoint(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, meshapi.ErrorResponse{Error: err.Error(), Timestamp: now(s)})
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	s.metrics.watchers.Inc()
	defer s.metrics.watchers.Dec()
	ticker := time.NewTicker(keepAlive)
	defer ticker.Stop()
	ctx := r.Context()
	for {
		evs, covered, wake := s.feed.since(after)
		if !covered {
			if evs, err = s.st.RevocationEvents(ctx, after, 1000); err != nil {
				return
			}
		}
		for _, e := range evs {
			data, _ := json.Marshal(toWire(e))
			if _, err := w.Write([]byte("id: " + strconv.FormatInt(e.Seq, 10) + "\nevent: revocation\ndata: " + string(data) + "\n\n")); err != nil {
				return
			}
			after = e.Seq
		}
		if len(evs) > 0 {
			if err := rc.Flush(); err != nil {
				return
			}
			if !covered {
				continue // more may be waiting in the store
			}
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

// pollFeed reads new revocation events from the store, applies them
// (revocations made by another process, or another replica, arrive this
// way) and publishes them to subscribers. It returns how many were new.
func (s *Server) pollFeed(ctx context.Context) (int, error) {
	s.feedMu.Lock()
	defer s.feedMu.Unlock()
	n := 0
	for {
		evs, err := s.st.RevocationEvents(ctx, s.feedSeq, 1000)
		if err != nil {
			return n, err
		}
		if len(evs) == 0 {
			return n, nil
		}
		for _, e := range evs {
			if e.Entity != "" {
				// An entity registered again since this event (a replay at
				// start-up) is trusted: its current record decides.
				if cur, err := s.st.Entity(ctx, e.Entity); err == nil && !cur.Revoked() {
					s.feedSeq = e.Seq
					continue
				}
				s.entityEffects[e.Entity] = s.applyEntityRevocation(ctx, e.Entity, e.Time)
			} else {
				s.applyRevocation(ctx, store.Revocation{Serial: e.Serial, CommonName: e.CommonName, IssuerKeyID: e.IssuerKeyID, Reason: e.Reason, RevokedAt: e.Time})
			}
			s.feedSeq = e.Seq
		}
		s.feed.publish(evs)
		n += len(evs)
	}
}

// entityEffect returns and forgets what the last application of name's
// revocation did.
func (s *Server) entityEffect(name string) effect {
	s.feedMu.Lock()
	defer s.feedMu.Unlock()
	eff := s.entityEffects[name]
	delete(s.entityEffects, name)
	return eff
}
