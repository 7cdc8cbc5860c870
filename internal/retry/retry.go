// Package retry holds what the mesh's long-running clients share to wait
// and retry: an injectable clock, and jittered exponential backoff.
package retry

import (
	"math/rand/v2"
	"time"
)

// Clock tells the time and waits. Clients take one so that tests move
// time instead of sleeping.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

// SystemClock returns the real clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Defaults sets what a client's configuration left nil: *clock to
// SystemClock, *rnd (Backoff's rand) to math/rand/v2's Int64N.
func Defaults(clock *Clock, rnd *func(n int64) int64) {
	if *clock == nil {
		*clock = SystemClock()
	}
	if *rnd == nil {
		*rnd = rand.Int64N
	}
}

// Backoff returns the delay before retry number attempt (1, 2, ...):
// doubling from lo, capped at hi, its upper half drawn with rand (which
// returns a number in [0, n)) so that many clients do not retry in step.
func Backoff(attempt int, lo, hi time.Duration, rand func(n int64) int64) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	half := d / 2
	return half + time.Duration(rand(int64(half)+1))
}
