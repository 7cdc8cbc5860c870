package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/eventually"
)

// stream is an open GET /console/events, read a line at a time.
type stream struct {
	resp   *http.Response
	lines  chan string
	cancel context.CancelFunc
}

// openStream opens the live stream with ck; it returns the answer's
// status, and the stream if it is 200.
func (h *harness) openStream(ck *http.Cookie) (int, *stream) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.URL+"/console/events", nil)
	if err != nil {
		h.t.Fatal(err)
	}
	req.AddCookie(ck)
	resp, err := h.cli.Do(req)
	if err != nil {
		cancel()
		h.t.Fatalf("GET /console/events: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return resp.StatusCode, nil
	}
	s := &stream{resp: resp, lines: make(chan string, 100), cancel: cancel}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	h.t.Cleanup(s.close)
	return resp.StatusCode, s
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the stream's next line, or ok false once it ended.
func (s *stream) next(t *testing.T) (string, bool) {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		return l, ok
	case <-time.After(eventually.Bound):
		t.Fatalf("no line on the live stream within %s", eventually.Bound)
		return "", false
	}
}

// until reads lines up to and including one for which match is true,
// failing if the stream ends first.
func (s *stream) until(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	for {
		l, ok := s.next(t)
		if !ok {
			t.Fatalf("the live stream ended before %s", what)
		}
		if match(l) {
			return l
		}
	}
}

// drain reads until the stream ends.
func (s *stream) drain(t *testing.T) []string {
	t.Helper()
	var got []string
	for {
		l, ok := s.next(t)
		if !ok {
			return got
		}
		got = append(got, l)
	}
}

// TestEventsDeliver: an event the backend watches reaches the page as a
// "change" event with its fields as JSON.
func TestEventsDeliver(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, nil)
	ck := h.login("alice.mesh")
	code, s := h.openStream(ck)
	if code != http.StatusOK {
		t.Fatalf("GET /console/events = %d", code)
	}
	if ct := s.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	eventually.True(t, "the stream watches the backend", func() bool { return be.Watchers() == 1 })
	be.send(console.Event{Kind: "registered", Subject: "opus@ct111</script>", Detail: "node ct111", At: t0})
	s.until(t, "the change event", func(l string) bool { return l == "event: change" })
	data, _ := s.next(t)
	var got struct{ Kind, Subject, Detail string }
	if err := json.Unmarshal([]byte(strings.TrimPrefix(data, "data: ")), &got); err != nil {
		t.Fatalf("data line %q: %v", data, err)
	}
	if got.Kind != "registered" || got.Subject != "opus@ct111</script>" || got.Detail != "node ct111" {
		t.Errorf("event = %+v", got)
	}
	// The stream's end releases the backend's watch.
	s.close()
	eventually.True(t, "the watch ends with the stream", func() bool { return be.Watchers() == 0 })
}

// TestEventsEndWithSession: a live stream ends, with an "expired" event,
// when its session is logged out, and when it times out (noticed at a
// heartbeat, which is a comment the stream carries meanwhile).
func TestEventsEndWithSession(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, func(c *console.Config) {
		c.Heartbeat = 10 * time.Millisecond
		c.IdleTimeout = 10 * time.Minute
	})
	ck := h.login("alice.mesh")
	_, s := h.openStream(ck)
	s.until(t, "a heartbeat", func(l string) bool { return l == ": keep-alive" })
	h.post("/console/logout", ck, url.Values{"csrf": {h.csrf(ck)}}, nil)
	if got := s.drain(t); !contains(got, "event: expired") {
		t.Errorf("after logout the stream ended with %q, want an expired event", got)
	}

	ck = h.login("alice.mesh")
	_, s = h.openStream(ck)
	s.until(t, "a heartbeat", func(l string) bool { return l == ": keep-alive" })
	h.clock.Advance(10 * time.Minute)
	if got := s.drain(t); !contains(got, "event: expired") {
		t.Errorf("after the idle timeout the stream ended with %q, want an expired event", got)
	}
	eventually.True(t, "the streams are released", func() bool { _, _, n := h.c.Counts(); return n == 0 })
	if code, _ := h.openStream(ck); code != http.StatusUnauthorized {
		t.Errorf("a stream of the ended session = %d, want 401", code)
	}
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// TestEventsCaps: a session holds at most StreamsPerSession streams and
// the console at most MaxStreams; one more is 429 and holds no watch; a
// closed stream frees its place.
func TestEventsCaps(t *testing.T) {
	be := &fakeBackend{}
	h := newHarness(t, be, func(c *console.Config) { c.StreamsPerSession, c.MaxStreams = 2, 3 })
	a, b := h.login("alice.mesh"), h.login("bob.mesh")
	_, a1 := h.openStream(a)
	h.openStream(a)
	if code, _ := h.openStream(a); code != http.StatusTooManyRequests {
		t.Errorf("a third stream of one session = %d, want 429", code)
	}
	h.openStream(b)
	if code, _ := h.openStream(b); code != http.StatusTooManyRequests {
		t.Errorf("a fourth stream in all = %d, want 429", code)
	}
	eventually.True(t, "three watches", func() bool { return be.Watchers() == 3 })
	if _, _, n := h.c.Counts(); n != 3 {
		t.Errorf("%d streams counted, want 3", n)
	}
	a1.close()
	eventually.True(t, "the closed stream's place is free", func() bool { _, _, n := h.c.Counts(); return n == 2 })
	if code, _ := h.openStream(b); code != http.StatusOK {
		t.Errorf("a stream after one closed = %d, want 200", code)
	}
}
