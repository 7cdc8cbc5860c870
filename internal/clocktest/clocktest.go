// Package clocktest is a clock for tests: its time moves only when the
// test advances it, and every wait on it is reported, so a test knows when
// the code under test has come round to waiting again. It satisfies the
// Clock interfaces of credentials, trust/watch and internal/retry.
package clocktest

import (
	"sync"
	"testing"
	"time"
)

// Clock is a manual clock. The zero value is not usable; call New.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	waits   chan time.Duration
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// New returns a Clock at start.
func New(start time.Time) *Clock {
	return &Clock{now: start, waits: make(chan time.Duration, 1000)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives once the clock has been advanced
// by d, and reports d on Waits.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	c.mu.Unlock()
	c.waits <- d
	return ch
}

// Advance moves the clock by d and fires the waits that are due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.moveTo(c.now.Add(d))
}

// Set moves the clock to t, forward or back, and fires the waits that are
// due.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.moveTo(t)
}

// moveTo moves the clock to t and fires the waits that are due; c.mu is
// held.
func (c *Clock) moveTo(t time.Time) {
	c.now = t
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}

// Waits receives the duration of every After call, in order.
func (c *Clock) Waits() <-chan time.Duration { return c.waits }

// NextWait returns the duration of the next After call, failing t if none
// comes within the real time given.
func (c *Clock) NextWait(t testing.TB, within time.Duration) time.Duration {
	t.Helper()
	select {
	case d := <-c.waits:
		return d
	case <-time.After(within):
		t.Fatalf("nothing waited on the clock within %s", within)
		return 0
	}
}

// Step lets the next wait pass and returns how long it was.
func (c *Clock) Step(t testing.TB, within time.Duration) time.Duration {
	t.Helper()
	d := c.NextWait(t, within)
	c.Advance(d)
	return d
}
