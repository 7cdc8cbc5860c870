// Package eventually waits, in tests, for a condition that the code under
// test reaches on goroutines of its own: a watcher reloading a file, a
// feed applying an event, a backend learning a new bundle. It polls with a
// bound generous enough for a loaded two-core machine, because the bound
// only says when to give up: a test asserts the outcome, never how soon it
// came.
package eventually

import (
	"testing"
	"time"
)

// Bound is how long True and NoError wait before they fail the test.
const Bound = 30 * time.Second

// interval is the pause between two checks of a condition.
const interval = 5 * time.Millisecond

// True waits until cond returns true, failing tb with what if it has not
// within Bound.
func True(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	poll(tb, Bound, interval, what, cond)
}

// TrueWithin is True with another bound, for a condition that comes only
// after a process of its own takes its time: a real SPIRE agent rotates an
// X.509-SVID at half its lifetime, minutes away. A longer bound polls
// less often (a thousandth of the bound, 5 ms at least), so a wait of
// minutes does not spin on a shared machine.
func TrueWithin(tb testing.TB, bound time.Duration, what string, cond func() bool) {
	tb.Helper()
	poll(tb, bound, max(interval, bound/1000), what, cond)
}

func poll(tb testing.TB, bound, step time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(step)
	}
}

// NoError waits until cond returns nil, failing tb with what and cond's
// last error if it has not within Bound.
func NoError(tb testing.TB, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(Bound)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: still failing after %s: %v", what, Bound, err)
		}
		time.Sleep(interval)
	}
}
