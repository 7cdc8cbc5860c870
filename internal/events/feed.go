// Package events is meshd's change feed. The store is the truth: every
// revocation, entity change and CA rotation is an event appended in the
// transaction that made it (store.Store's Events). A Feed reads those events
// in order, hands each to the subscribers registered with Handle (the
// revocation set and anchors, registry eviction, CRL re-signing, CA
// reload), and keeps the newest in memory for streams (the
// /revocations/watch route) to read without a query per subscriber.
//
// A process learns of events written by others (an offline meshctl,
// another replica) by polling, woken early by the store when it can tell
// (PostgreSQL's LISTEN/NOTIFY, see Config.Wake); a process that wrote one
// itself calls Poll before it answers, so its caller sees the effect.
//
// Seq numbers need not commit in order (a PostgreSQL sequence is drawn
// before commit): the Feed takes in every event once, in the order it
// finds them, and its cursor (every event at or below it has been taken
// in) moves past a missing Seq only once that Seq has been seen or has
// stayed missing for HoleTimeout (a transaction that rolled back).
//
// An event a handler fails to apply (a transient store error, say) is not
// applied: the Feed keeps it and calls that handler with it again, with
// backoff, until it succeeds (Pending counts what waits), so every process
// converges on the store's state without a restart.
package events

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/internal/store"
)

// Source is where events come from: the store.
type Source interface {
	Events(ctx context.Context, after int64, limit int) ([]store.Event, error)
}

// A Handler applies one event. It runs on the goroutine that polls, one
// event at a time, in feed order, with a context that the poller's caller
// cannot cancel halfway (an eviction half-written because an HTTP client
// went away would leave memory and store apart).
//
// An error means the event did not take effect: it is logged and the same
// handler is called with the same event again, with backoff, until it
// returns nil. Later events are applied meanwhile (a revocation never
// waits behind a store error), so a handler must be idempotent, and where
// order matters it decides from the store's current state rather than
// from the event alone.
type Handler func(ctx context.Context, e store.Event) error

// Config configures a Feed. Zero values select the defaults.
type Config struct {
	// HoleTimeout is how long a missing Seq below events already seen is
	// waited for before the cursor moves past it; default 10s.
	HoleTimeout time.Duration
	// Page is how many events one store read returns at most; default 1000.
	Page int
	// Tail is how many events taken in memory keeps for streams; default
	// 4096.
	Tail int
	// Wake, if set, receives a value when the feed may have grown (a
	// PostgreSQL NOTIFY from any replica's write, or a listener that
	// reconnected and may have missed some): Run polls then rather than
	// at its next tick. It is a wake-up only; what the store's feed holds
	// is the truth, and Run keeps polling every interval without it.
	Wake <-chan struct{}
	// RetryMin and RetryMax bound the backoff between attempts to apply
	// an event a handler failed on: doubling from RetryMin (default
	// 100ms) up to RetryMax (default 30s), jittered. A retry runs at the
	// first poll once it is due.
	RetryMin, RetryMax time.Duration
	// PollTimeout bounds each read of the store by Poll: a read it does not
	// answer within it (a network partition, where a query hangs rather
	// than fails) is abandoned and counts as failed, and the next poll
	// reads afresh, so a link that returns is used at once; default 1s.
	PollTimeout time.Duration
	Now         func() time.Time
	// Rand returns a number in [0, n) for the jitter; default math/rand.
	Rand   func(n int64) int64
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.HoleTimeout <= 0 {
		c.HoleTimeout = 10 * time.Second
	}
	if c.Page <= 0 {
		c.Page = 1000
	}
	if c.Tail <= 0 {
		c.Tail = 4096
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = max(30*time.Second, c.RetryMin)
	}
	if c.PollTimeout <= 0 {
		c.PollTimeout = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Int64N
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Feed reads the change feed and fans it out.
//
// Lock order: pollMu, then mu. pollMu serialises Poll (reading, applying,
// advancing the cursor); mu guards what streams read (the tail, the wake
// channel, the published cursor) and is never held while a handler runs.
type Feed struct {
	cfg      Config
	src      Source
	handlers []Handler

	pollMu sync.Mutex
	// Under pollMu: every event with Seq <= cursor has been taken in
	// (handed to every handler; those a handler failed on wait in
	// retries); seen holds the Seqs above it that have been too, and
	// missing the Seqs between cursor and the highest seen that have not,
	// with when each was first found missing.
	cursor  int64
	seen    map[int64]bool
	missing map[int64]time.Time
	// retries are the events some handler has not applied yet, oldest
	// first.
	retries []*retrying
	// pending mirrors len(retries) for Pending, which takes no lock a
	// handler may hold up.
	pending atomic.Int64
	// polled is when the last Poll that read the store without an error
	// began its read, in Unix nanoseconds: every event committed before
	// it has been taken in, so this is how current this process's trust
	// state is (Synced, ReadAt). failing is set while the last Poll
	// failed to read the store.
	polled  atomic.Int64
	failing atomic.Bool

	mu   sync.Mutex
	tail []entry // events taken in, oldest first
	next uint64  // the index the next event taken in gets
	pub  int64   // cursor as streams see it
	wake chan struct{}
}

// retrying is an event that the handlers at failed have yet to apply.
type retrying struct {
	ev      store.Event
	failed  []int // indexes into handlers
	attempt int   // failed attempts so far
	due     time.Time
}

// entry is one event taken in in memory.
type entry struct {
	idx uint64
	ev  store.Event
	// pos is the cursor once ev was taken in: a stream that has sent ev
	// (and every entry before it) resumes correctly after pos.
	pos int64
}

// New returns a Feed over src whose cursor starts at after: events at or
// below it are taken as applied (0 applies the whole feed).
func New(src Source, after int64, cfg Config) *Feed {
	f := &Feed{cfg: cfg.withDefaults(), src: src, cursor: after, pub: after,
		seen: map[int64]bool{}, missing: map[int64]time.Time{}, wake: make(chan struct{})}
	// The caller read after from the store: the feed is current as of now.
	f.polled.Store(f.cfg.Now().UnixNano())
	return f
}

// Handle registers h for every event applied from now on. Register
// handlers before the first Poll.
func (f *Feed) Handle(h Handler) {
	f.pollMu.Lock()
	f.handlers = append(f.handlers, h)
	f.pollMu.Unlock()
}

// Pending returns how many events some handler has failed to apply and
// will be retried.
func (f *Feed) Pending() int { return int(f.pending.Load()) }

// Synced returns when Poll last read the store without an error (or when
// the Feed was made), and the cursor then: every event at or below it has
// been taken in.
func (f *Feed) Synced() (at time.Time, cursor int64) {
	f.mu.Lock()
	cursor = f.pub
	f.mu.Unlock()
	return time.Unix(0, f.polled.Load()), cursor
}

// ReadAt returns when the last successful read of the store began (or
// when the Feed was made): every event committed before it has been taken
// in. It is one atomic load, for the hot path's staleness gate.
func (f *Feed) ReadAt() time.Time { return time.Unix(0, f.polled.Load()) }

// Failing reports whether the last Poll failed to read the store (the
// database away, or a read that outlived PollTimeout). One atomic load.
func (f *Feed) Failing() bool { return f.failing.Load() }

// Poll retries the events whose retry is due, reads the events the feed
// has not taken in, applies them and publishes them to streams. It
// returns how many new events it took in. Concurrent calls are
// serialised, so a caller that wrote an event and then polls returns only
// once every handler has applied it or failed to (then it is retried).
func (f *Feed) Poll(ctx context.Context) (int, error) {
	f.pollMu.Lock()
	defer f.pollMu.Unlock()
	apply := context.WithoutCancel(ctx)
	f.retryDue(apply)
	n := 0
	// Taken before the first read: what committed before it is in the
	// reads that follow, and what committed after may not be.
	start := f.cfg.Now().UnixNano()
	for {
		rctx, cancel := context.WithTimeout(ctx, f.cfg.PollTimeout)
		evs, err := f.src.Events(rctx, f.cursor, f.cfg.Page)
		cancel()
		if err != nil {
			f.failing.Store(true)
			return n, fmt.Errorf("read the change feed after %d: %w", f.cursor, err)
		}
		var fresh []store.Event
		for _, e := range evs {
			if e.Seq > f.cursor && !f.seen[e.Seq] {
				fresh = append(fresh, e)
			}
		}
		for _, e := range fresh {
			var failed []int
			for i, h := range f.handlers {
				if err := h(apply, e); err != nil {
					failed = append(failed, i)
					f.cfg.Logger.Error("applying a change event failed; it will be retried until it applies", "seq", e.Seq, "kind", e.Kind, "err", err)
				}
			}
			if len(failed) > 0 {
				f.hold(&retrying{ev: e, failed: failed})
			}
			f.seen[e.Seq] = true
			delete(f.missing, e.Seq)
		}
		f.advance(evs)
		f.publish(fresh)
		n += len(fresh)
		// A full page may have more behind it; a page of only events
		// seen before (above a hole) has nothing new.
		if len(evs) < f.cfg.Page || len(fresh) == 0 {
			f.polled.Store(max(f.polled.Load(), start))
			f.failing.Store(false)
			return n, nil
		}
	}
}

// hold schedules r's next attempt and keeps it among the retries.
func (f *Feed) hold(r *retrying) {
	r.attempt++
	r.due = f.cfg.Now().Add(retry.Backoff(r.attempt, f.cfg.RetryMin, f.cfg.RetryMax, f.cfg.Rand))
	f.retries = append(f.retries, r)
	f.pending.Store(int64(len(f.retries)))
}

// retryDue calls each handler that failed on a held event again, once
// its retry is due, oldest event first; what fails again waits longer.
func (f *Feed) retryDue(ctx context.Context) {
	if len(f.retries) == 0 {
		return
	}
	now := f.cfg.Now()
	held := f.retries
	f.retries = nil
	for _, r := range held {
		if now.Before(r.due) {
			f.retries = append(f.retries, r)
			continue
		}
		var failed []int
		for _, i := range r.failed {
			if err := f.handlers[i](ctx, r.ev); err != nil {
				failed = append(failed, i)
				f.cfg.Logger.Warn("applying a change event failed again; retrying", "seq", r.ev.Seq, "kind", r.ev.Kind, "attempt", r.attempt+1, "err", err)
			}
		}
		if len(failed) == 0 {
			f.cfg.Logger.Info("change event applied after a retry", "seq", r.ev.Seq, "kind", r.ev.Kind, "attempts", r.attempt+1)
			continue
		}
		r.failed = failed
		r.attempt++
		r.due = now.Add(retry.Backoff(r.attempt, f.cfg.RetryMin, f.cfg.RetryMax, f.cfg.Rand))
		f.retries = append(f.retries, r)
	}
	f.pending.Store(int64(len(f.retries)))
}

// advance notes the Seqs missing below the highest seen one and moves
// the cursor over every seen Seq, and over every missing one waited for
// longer than HoleTimeout.
func (f *Feed) advance(evs []store.Event) {
	now := f.cfg.Now()
	if len(evs) > 0 {
		top := evs[len(evs)-1].Seq
		for seq := f.cursor + 1; seq < top; seq++ {
			if !f.seen[seq] {
				if _, ok := f.missing[seq]; !ok {
					f.missing[seq] = now
				}
			}
		}
	}
	for {
		seq := f.cursor + 1
		if f.seen[seq] {
			delete(f.seen, seq)
		} else if since, ok := f.missing[seq]; ok && now.Sub(since) >= f.cfg.HoleTimeout {
			f.cfg.Logger.Warn("change feed: giving up on a missing event (a transaction that rolled back)", "seq", seq)
			delete(f.missing, seq)
		} else {
			return
		}
		f.cursor = seq
	}
}

// publish appends evs to the tail and wakes the streams.
func (f *Feed) publish(evs []store.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, e := range evs {
		pos := f.cursor
		if i < len(evs)-1 && e.Seq < pos {
			// Within one batch the cursor after the batch covers events
			// not sent yet: resume at the event itself until the last.
			pos = e.Seq
		}
		f.tail = append(f.tail, entry{idx: f.next, ev: e, pos: pos})
		f.next++
	}
	if over := len(f.tail) - f.cfg.Tail; over > 0 {
		f.tail = append(f.tail[:0:0], f.tail[over:]...)
	}
	f.pub = f.cursor
	if len(evs) > 0 {
		close(f.wake)
		f.wake = make(chan struct{})
	}
}

// Delivery is one event for a stream, with the position the stream's
// client resumes after once it has it.
type Delivery struct {
	Event store.Event
	// Resume is the Seq to resume after: every event at or below it has
	// been sent. It can lag Event.Seq when events commit out of order, so
	// a resumed stream may repeat an event, never miss one.
	Resume int64
}

// Reader follows the feed for one stream, starting after a Seq. It is not
// safe for concurrent use.
type Reader struct {
	f *Feed
	// While store is true the reader catches up from the store, reading
	// after Seq after; then it reads memory from entry idx on.
	store bool
	after int64
	idx   uint64
	// floor and base bound the Resume of what the store gives: the
	// position the catch-up started from, and the feed's cursor then.
	floor, base int64
	// last is the last Resume handed out.
	last int64
}

// Reader returns a Reader of the events after Seq after.
func (f *Feed) Reader(after int64) *Reader {
	r := &Reader{f: f, last: after}
	r.restart(after)
	return r
}

// restart makes r read the store from after on, then memory from the
// entry that was next when it started, so nothing applied meanwhile is
// missed (it may be sent twice). The caller holds f.mu, or owns r alone.
func (r *Reader) restart(after int64) {
	r.f.mu.Lock()
	r.restartLocked(after)
	r.f.mu.Unlock()
}

func (r *Reader) restartLocked(after int64) {
	r.store, r.after, r.floor, r.idx, r.base = true, after, after, r.f.next, r.f.pub
}

// Next returns the next events for the stream, or none and a channel
// closed when there may be more.
func (r *Reader) Next(ctx context.Context) ([]Delivery, <-chan struct{}, error) {
	if r.store {
		evs, err := r.f.src.Events(ctx, r.after, r.f.cfg.Page)
		if err != nil {
			return nil, nil, err
		}
		out := make([]Delivery, 0, len(evs))
		for _, e := range evs {
			// Past the feed's cursor, an event below this one may not have
			// committed when the store was read: resume no further than
			// the cursor.
			out = append(out, r.deliver(e, max(r.floor, min(e.Seq, r.base))))
		}
		if len(evs) > 0 {
			r.after = evs[len(evs)-1].Seq
		}
		if len(evs) < r.f.cfg.Page {
			r.store = false
		}
		if len(out) > 0 {
			return out, nil, nil
		}
	}
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	if len(r.f.tail) > 0 && r.idx < r.f.tail[0].idx {
		// Fell behind what memory keeps: back to the store, from the last
		// position handed out.
		r.restartLocked(r.last)
		return nil, closed, nil
	}
	var out []Delivery
	for _, e := range r.f.tail {
		if e.idx >= r.idx {
			out = append(out, r.deliver(e.ev, e.pos))
		}
	}
	r.idx = r.f.next
	return out, r.f.wake, nil
}

// deliver returns e for the stream with a Resume that never goes back.
func (r *Reader) deliver(e store.Event, resume int64) Delivery {
	r.last = max(r.last, resume)
	return Delivery{Event: e, Resume: r.last}
}

// closed is a channel that is always ready.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Run polls every interval, and whenever Config.Wake fires, until ctx
// ends.
func (f *Feed) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.cfg.Wake:
		}
		// One line when polling starts failing (the database went away)
		// and one when it works again, not one per interval.
		_, err := f.Poll(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil && !failing:
			f.cfg.Logger.Warn("change feed poll failed; retrying every interval", "err", err)
			failing = true
		case err == nil && failing:
			f.cfg.Logger.Info("change feed poll works again")
			failing = false
		}
	}
}
