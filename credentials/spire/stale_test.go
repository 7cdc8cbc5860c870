package spire_test

import (
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
)

// awaitStale waits for src.StaleSince to say stale (or current, when
// stale is false) and returns since.
func awaitStale(t *testing.T, src *spire.Source, stale bool) time.Time {
	t.Helper()
	bound := time.After(wait)
	for {
		since, changed := src.StaleSince()
		if since.IsZero() != stale {
			return since
		}
		select {
		case <-changed:
		case <-bound:
			t.Fatalf("StaleSince still %v after %s, want stale %v", since, wait, stale)
		}
	}
}

// TestStaleSince: the source is current while the Workload API stream is
// healthy, stale from the outage on (the stream breaking, not the quiet
// between updates), current again once the agent's next update is used,
// and stale for good once closed. The double stands in for the agent
// for what the real one cannot show: the client's retries, counted, so
// that the test knows the outage lasted several of them. The real
// agent's PermissionDenied (meshd's entry deleted) is the fault of
// internal/server's TestE2ERealSPIREStale.
func TestStaleSince(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	s.SetSVID(idA)
	src, retries := newSource(t, s)
	if since, _ := src.StaleSince(); !since.IsZero() {
		t.Fatalf("a fresh source is stale since %v", since)
	}

	before := time.Now()
	s.Stop()
	since := awaitStale(t, src, true)
	if since.Before(before) {
		t.Errorf("stale since %v, before the outage began at %v", since, before)
	}
	retries.WaitRetries(t, retries.Retries()+3)
	if again, _ := src.StaleSince(); !again.Equal(since) {
		t.Errorf("each failed retry moved StaleSince: %v, then %v; want the outage's start", since, again)
	}

	rotated := s.RotateSVID()
	s.Restart()
	awaitStale(t, src, false)
	// Current already holds the update that made the source current.
	if leaf := sourcetest.Current(t, src).Certificate.Leaf; !leaf.Equal(rotated.Certificates[0]) {
		t.Fatal("current again without the agent's new SVID")
	}

	src.Close()
	if since, _ := src.StaleSince(); since.IsZero() {
		t.Fatal("a closed source reports its credentials current")
	}
}
