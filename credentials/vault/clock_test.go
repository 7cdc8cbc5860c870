package vault_test

import (
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
)

// fakeClock is the tests' manual clock.
type fakeClock = clocktest.Clock

func newFakeClock() *fakeClock { return clocktest.New(time.Now()) }

// highest draws the top of every random range: the longest jitter, and
// backoffs of exactly 1 s, 2 s, 4 s...
func highest(n int64) int64 { return n - 1 }
