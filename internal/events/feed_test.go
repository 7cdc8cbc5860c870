package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/store"
)

// memSource is a change feed whose events commit in the order the test
// says, not in Seq order, as PostgreSQL's can.
type memSource struct {
	mu  sync.Mutex
	evs []store.Event // committed, in Seq order
}

func (m *memSource) commit(seqs ...int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range seqs {
		m.evs = append(m.evs, store.Event{Seq: s, Kind: store.EventCertRevoked, Serial: fmt.Sprintf("%x", s)})
	}
	sort.Slice(m.evs, func(i, j int) bool { return m.evs[i].Seq < m.evs[j].Seq })
}

func (m *memSource) Events(_ context.Context, after int64, limit int) ([]store.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Event
	for _, e := range m.evs {
		if e.Seq > after && (limit <= 0 || len(out) < limit) {
			out = append(out, e)
		}
	}
	return out, nil
}

// recorder is a Handler that records the Seqs it applied.
type recorder struct {
	mu   sync.Mutex
	seqs []int64
}

func (r *recorder) handle(_ context.Context, e store.Event) error {
	r.mu.Lock()
	r.seqs = append(r.seqs, e.Seq)
	r.mu.Unlock()
	return nil
}

func (r *recorder) got() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seqs)
}

func newTestFeed(src Source, c *clocktest.Clock, page int) (*Feed, *recorder) {
	f := New(src, 0, Config{HoleTimeout: 10 * time.Second, Page: page, Tail: 8, Now: c.Now})
	rec := &recorder{}
	f.Handle(rec.handle)
	return f, rec
}

func poll(t *testing.T, f *Feed) int {
	t.Helper()
	n, err := f.Poll(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOutOfOrderCommits: an event that commits after a higher Seq is
// applied once, and the cursor never passes it until it is seen.
func TestOutOfOrderCommits(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f, rec := newTestFeed(src, c, 2)
	src.commit(1, 2, 4, 5) // 3 is drawn but not committed yet
	if n := poll(t, f); n != 4 {
		t.Fatalf("first poll applied %d, want 4", n)
	}
	if got := f.publishedCursor(); got != 2 {
		t.Fatalf("cursor = %d with Seq 3 missing, want 2", got)
	}
	poll(t, f) // nothing new: 4 and 5 are not applied twice
	src.commit(3)
	poll(t, f)
	if got, want := rec.got(), []int64{1, 2, 4, 5, 3}; !slices.Equal(got, want) {
		t.Errorf("applied %v, want %v (each once)", got, want)
	}
	if got := f.publishedCursor(); got != 5 {
		t.Errorf("cursor = %d once 3 committed, want 5", got)
	}
}

// TestHoleTimeout: a Seq that never commits (a rolled-back transaction)
// holds the cursor for HoleTimeout, then no longer.
func TestHoleTimeout(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f, _ := newTestFeed(src, c, 100)
	src.commit(1, 3)
	poll(t, f)
	c.Advance(9 * time.Second)
	poll(t, f)
	if got := f.publishedCursor(); got != 1 {
		t.Fatalf("cursor = %d before the hole timed out, want 1", got)
	}
	c.Advance(time.Second)
	poll(t, f)
	if got := f.publishedCursor(); got != 3 {
		t.Fatalf("cursor = %d after the hole timed out, want 3", got)
	}
}

// drain reads everything r has now.
func drain(t *testing.T, r *Reader) []Delivery {
	t.Helper()
	var out []Delivery
	for {
		ds, wake, err := r.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ds...)
		if len(ds) == 0 {
			select {
			case <-wake:
				continue // fell behind: the next call reads the store
			default:
				return out
			}
		}
	}
}

func seqs(ds []Delivery) []int64 {
	var out []int64
	for _, d := range ds {
		out = append(out, d.Event.Seq)
	}
	return out
}

// TestReaderResumeNeverSkips: a stream client that resumes after the last
// Resume it was given gets every event it had not seen, even when events
// committed out of order.
func TestReaderResumeNeverSkips(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f, _ := newTestFeed(src, c, 100)
	src.commit(1, 2, 4)
	poll(t, f)
	r := f.Reader(0)
	ds := drain(t, r)
	if got := seqs(ds); !slices.Equal(got, []int64{1, 2, 4}) {
		t.Fatalf("first read %v, want [1 2 4]", got)
	}
	resume := ds[len(ds)-1].Resume
	if resume != 2 {
		t.Fatalf("Resume after event 4 with 3 missing = %d, want 2", resume)
	}
	// The client goes away; 3 commits; the client comes back.
	src.commit(3)
	poll(t, f)
	again := drain(t, f.Reader(resume))
	if got := seqs(again); !slices.Contains(got, 3) {
		t.Errorf("resumed read %v misses 3", got)
	}
	if last := again[len(again)-1].Resume; last != 4 {
		t.Errorf("Resume at the end = %d, want 4", last)
	}
}

// TestReaderLive: a reader that caught up is fed from memory, and one
// that fell behind what memory keeps goes back to the store without a gap.
func TestReaderLive(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f, _ := newTestFeed(src, c, 100) // Tail: 8
	r := f.Reader(0)
	if ds := drain(t, r); len(ds) != 0 {
		t.Fatalf("empty feed gave %v", seqs(ds))
	}
	_, wake, _ := r.Next(t.Context())
	src.commit(1, 2)
	poll(t, f)
	select {
	case <-wake:
	default:
		t.Fatal("a poll that applied events did not wake the reader")
	}
	if got := seqs(drain(t, r)); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("live read %v, want [1 2]", got)
	}
	for s := int64(3); s <= 30; s++ {
		src.commit(s)
		poll(t, f)
	}
	got := seqs(drain(t, r))
	for s := int64(3); s <= 30; s++ {
		if !slices.Contains(got, s) {
			t.Fatalf("a reader that fell behind missed %d: %v", s, got)
		}
	}
}

// TestFeedStress polls, commits out of order and reads from many streams
// at once under the race detector: every stream sees every event.
func TestFeedStress(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f, rec := newTestFeed(src, c, 16)
	const total = 400
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // writer: commits pairs swapped, polls as it goes
		defer wg.Done()
		defer close(done)
		for s := int64(1); s <= total; s += 2 {
			src.commit(s + 1)
			if _, err := f.Poll(context.Background()); err != nil {
				t.Error(err)
			}
			src.commit(s)
		}
		for f.publishedCursor() < total {
			if _, err := f.Poll(context.Background()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := f.Reader(0)
			seen := map[int64]bool{}
			for len(seen) < total {
				ds, wake, err := r.Next(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				for _, d := range ds {
					seen[d.Event.Seq] = true
				}
				if len(ds) == 0 {
					select {
					case <-wake:
					case <-done:
						if f.publishedCursor() >= total {
							ds, _, _ := r.Next(context.Background())
							for _, d := range ds {
								seen[d.Event.Seq] = true
							}
							if len(ds) == 0 && len(seen) < total {
								t.Errorf("stream saw %d of %d events", len(seen), total)
								return
							}
						}
					case <-time.After(10 * time.Second):
						t.Errorf("stream stalled at %d of %d events", len(seen), total)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if got := rec.got(); len(got) != total {
		t.Errorf("handlers applied %d events, want %d exactly once each", len(got), total)
	}
}

// TestHandlersOutliveTheCaller: a caller whose context ends while its
// poll applies events (an HTTP client that went away) does not cut the
// handlers short, so no effect is left half-written while the cursor moves
// past its event.
func TestHandlersOutliveTheCaller(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f := New(src, 0, Config{Now: c.Now})
	ctx, cancel := context.WithCancel(context.Background())
	var errs []error
	f.Handle(func(hctx context.Context, e store.Event) error {
		if e.Seq == 1 {
			cancel() // the caller goes away mid-apply
		}
		errs = append(errs, hctx.Err())
		return nil
	})
	src.commit(1, 2, 3)
	if _, err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if len(errs) != 3 {
		t.Fatalf("handlers ran %d times, want 3", len(errs))
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("handler %d saw its context ended: %v", i+1, err)
		}
	}
	if got := f.publishedCursor(); got != 3 {
		t.Errorf("cursor = %d, want 3", got)
	}
}

// TestRunWakes: with Config.Wake, Run applies an event as soon as the wake
// channel fires, not at its next tick (an hour away here).
func TestRunWakes(t *testing.T) {
	src := &memSource{}
	wake := make(chan struct{}, 1)
	f := New(src, 0, Config{Wake: wake})
	applied := make(chan int64, 1)
	f.Handle(func(_ context.Context, e store.Event) error { applied <- e.Seq; return nil })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, time.Hour) }()
	defer func() { cancel(); <-done }()
	src.commit(1)
	wake <- struct{}{}
	select {
	case seq := <-applied:
		if seq != 1 {
			t.Fatalf("applied %d, want 1", seq)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the wake-up did not make Run poll")
	}
}

// flaky is a Handler that fails on the Seqs in fail, as many times as
// each says (a transient store error), then applies them; it records
// every Seq it applied.
type flaky struct {
	mu   sync.Mutex
	fail map[int64]int
	recorder
}

func (h *flaky) handle(ctx context.Context, e store.Event) error {
	h.mu.Lock()
	if h.fail[e.Seq] > 0 {
		h.fail[e.Seq]--
		h.mu.Unlock()
		return fmt.Errorf("apply %d: %w", e.Seq, errTransient)
	}
	h.mu.Unlock()
	return h.recorder.handle(ctx, e)
}

// left returns how many more times h fails on seq.
func (h *flaky) left(seq int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fail[seq]
}

var errTransient = errors.New("store briefly unreachable")

// TestFailedEventRetried: an event a handler fails on is not taken as
// applied by it: that handler alone is called with it again once its
// backoff is due, until it applies, and later events are not held up
// meanwhile.
func TestFailedEventRetried(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f := New(src, 0, Config{Now: c.Now, RetryMin: time.Second, RetryMax: 4 * time.Second,
		Rand: func(n int64) int64 { return n - 1 }}) // no jitter: each wait is its whole bound
	h := &flaky{fail: map[int64]int{2: 3}} // the first attempt and two retries fail
	other := &recorder{}
	f.Handle(h.handle)
	f.Handle(other.handle)

	src.commit(1, 2, 3)
	poll(t, f)
	if got, want := h.got(), []int64{1, 3}; !slices.Equal(got, want) {
		t.Fatalf("flaky handler applied %v, want %v", got, want)
	}
	if got := f.Pending(); got != 1 {
		t.Fatalf("Pending = %d, want 1 (Seq 2)", got)
	}
	// Retries wait 1s, then 2s, then 4s (the cap).
	for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		c.Advance(wait - time.Millisecond)
		poll(t, f)
		if got := h.left(2); got != 2-i {
			t.Fatalf("retry %d ran %v after the last attempt, before its backoff was due (%d failures left, want %d)", i+1, wait-time.Millisecond, got, 2-i)
		}
		c.Advance(time.Millisecond)
		src.commit(int64(10 + i))
		poll(t, f)
	}
	if got, want := h.got(), []int64{1, 3, 10, 11, 2, 12}; !slices.Equal(got, want) {
		t.Errorf("flaky handler applied %v, want %v (2 on its third retry, later events never held up)", got, want)
	}
	if got, want := other.got(), []int64{1, 2, 3, 10, 11, 12}; !slices.Equal(got, want) {
		t.Errorf("the handler that never failed applied %v, want %v (each once)", got, want)
	}
	if got := f.Pending(); got != 0 {
		t.Errorf("Pending = %d once applied, want 0", got)
	}
	if got := f.publishedCursor(); got != 3 {
		// 4..9 are a hole not waited out yet.
		t.Errorf("cursor = %d, want 3", got)
	}
}

// TestFeedRetryStress: pollers on many goroutines, a handler that fails
// on every third event twice before it applies it, and events committing
// as they poll. Each poller's Polls succeed, every event is applied by
// the flaky handler exactly once in the end, and nothing is left pending.
func TestFeedRetryStress(t *testing.T) {
	src, c := &memSource{}, clocktest.New(time.Unix(1000, 0))
	f := New(src, 0, Config{Now: c.Now, Page: 16, RetryMin: time.Millisecond, RetryMax: 4 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}) // a line per failure, hundreds
	const total = 300
	fail := map[int64]int{}
	for s := int64(3); s <= total; s += 3 {
		fail[s] = 2
	}
	h := &flaky{fail: fail}
	f.Handle(h.handle)
	var wg sync.WaitGroup
	polls := make([]int, 6)
	for g := range polls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				if g == 0 {
					src.commit(int64(3*i+1), int64(3*i+2), int64(3*i+3))
				}
				c.Advance(time.Millisecond) // a retry falls due every few polls
				if _, err := f.Poll(context.Background()); err != nil {
					t.Errorf("poller %d: %v", g, err)
					return
				}
				polls[g]++
			}
		}()
	}
	wg.Wait()
	for i := 0; f.Pending() > 0 && i < 100; i++ {
		c.Advance(10 * time.Millisecond)
		poll(t, f)
	}
	for g, n := range polls {
		if n != 100 {
			t.Errorf("poller %d completed %d polls, want 100", g, n)
		}
	}
	got := h.got()
	count := map[int64]int{}
	for _, s := range got {
		count[s]++
	}
	for s := int64(1); s <= total; s++ {
		if count[s] != 1 {
			t.Errorf("event %d applied %d times, want once", s, count[s])
		}
	}
	if f.Pending() != 0 || len(got) != total {
		t.Errorf("%d applied, %d pending; want %d and 0", len(got), f.Pending(), total)
	}
}

// failingSource is a change feed whose reads fail while down is set.
type failingSource struct {
	memSource
	mu   sync.Mutex
	down bool
}

func (s *failingSource) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

func (s *failingSource) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down {
		return nil, errors.New("database unreachable")
	}
	return s.memSource.Events(ctx, after, limit)
}

// TestSynced: Synced reports the last poll that read the store, and the
// cursor then; a failing poll moves neither.
func TestSynced(t *testing.T) {
	src, c := &failingSource{}, clocktest.New(time.Unix(1000, 0))
	f := New(src, 5, Config{Now: c.Now})
	if at, cur := f.Synced(); !at.Equal(time.Unix(1000, 0)) || cur != 5 {
		t.Fatalf("a new feed: Synced = %v, %d; want its creation time and the cursor it was given (5)", at, cur)
	}
	src.commit(6, 7)
	c.Advance(time.Second)
	poll(t, f)
	if at, cur := f.Synced(); !at.Equal(time.Unix(1001, 0)) || cur != 7 {
		t.Fatalf("after a poll: Synced = %v, %d; want 1001s and 7", at, cur)
	}
	src.setDown(true)
	src.commit(8)
	c.Advance(time.Minute)
	if _, err := f.Poll(t.Context()); err == nil {
		t.Fatal("a poll of a store that is down succeeded")
	}
	if at, cur := f.Synced(); !at.Equal(time.Unix(1001, 0)) || cur != 7 {
		t.Errorf("after a failed poll: Synced = %v, %d; want the last good poll's (1001s, 7)", at, cur)
	}
	src.setDown(false)
	poll(t, f)
	if at, cur := f.Synced(); !at.Equal(time.Unix(1061, 0)) || cur != 8 {
		t.Errorf("once the store is back: Synced = %v, %d; want 1061s and 8", at, cur)
	}
}

// hangingSource is a store behind a cut link: a read neither answers nor
// fails until its context ends.
type hangingSource struct{ memSource }

func (s *hangingSource) Events(ctx context.Context, _ int64, _ int) ([]store.Event, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestReadAtAndFailing: ReadAt is when the last good read began, and a
// read that fails or hangs past PollTimeout sets Failing and moves it not;
// the next good read clears Failing.
func TestReadAtAndFailing(t *testing.T) {
	src, c := &failingSource{}, clocktest.New(time.Unix(1000, 0))
	f := New(src, 0, Config{Now: c.Now})
	if !f.ReadAt().Equal(time.Unix(1000, 0)) || f.Failing() {
		t.Fatalf("a new feed: ReadAt %v, Failing %v; want its creation time, false", f.ReadAt(), f.Failing())
	}
	src.setDown(true)
	c.Advance(time.Second)
	if _, err := f.Poll(t.Context()); err == nil {
		t.Fatal("a poll of a store that is down succeeded")
	}
	if !f.ReadAt().Equal(time.Unix(1000, 0)) || !f.Failing() {
		t.Errorf("after a failed poll: ReadAt %v, Failing %v; want 1000s, true", f.ReadAt(), f.Failing())
	}
	src.setDown(false)
	poll(t, f)
	if !f.ReadAt().Equal(time.Unix(1001, 0)) || f.Failing() {
		t.Errorf("after a good poll: ReadAt %v, Failing %v; want 1001s, false", f.ReadAt(), f.Failing())
	}

	h := New(&hangingSource{}, 0, Config{PollTimeout: 10 * time.Millisecond, Now: c.Now})
	c.Advance(time.Second)
	if _, err := h.Poll(t.Context()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a poll of a store that never answers: %v, want it abandoned at PollTimeout", err)
	}
	if !h.ReadAt().Equal(time.Unix(1001, 0)) || !h.Failing() {
		t.Errorf("after an abandoned poll: ReadAt %v, Failing %v; want 1001s (its creation), true", h.ReadAt(), h.Failing())
	}
}

// TestFreshnessStress: readers load ReadAt and Failing while polls read a
// store that comes and goes; each reader sees ReadAt never move back, and
// the last poll's outcome at the end.
func TestFreshnessStress(t *testing.T) {
	src := &failingSource{}
	f := New(src, 0, Config{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			var last time.Time
			for {
				select {
				case <-stop:
					return
				default:
				}
				at := f.ReadAt()
				f.Failing()
				if at.Before(last) {
					errs <- fmt.Errorf("ReadAt moved back from %v to %v", last, at)
					return
				}
				last = at
			}
		})
	}
	for i := range 2000 {
		src.setDown(i%3 == 0)
		src.commit(int64(i + 1))
		f.Poll(t.Context())
	}
	src.setDown(false)
	poll(t, f)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if f.Failing() {
		t.Error("Failing after a good poll")
	}
}
