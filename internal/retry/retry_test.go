package retry

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	lo, hi := time.Second, 10*time.Second
	zero := func(int64) int64 { return 0 }
	top := func(n int64) int64 { return n - 1 }
	for _, tt := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 500 * time.Millisecond, time.Second},
		{2, time.Second, 2 * time.Second},
		{3, 2 * time.Second, 4 * time.Second},
		{4, 4 * time.Second, 8 * time.Second},
		{5, 5 * time.Second, 10 * time.Second}, // capped
		{50, 5 * time.Second, 10 * time.Second},
	} {
		if got := Backoff(tt.attempt, lo, hi, zero); got != tt.min {
			t.Errorf("attempt %d, lowest draw: %s, want %s", tt.attempt, got, tt.min)
		}
		if got := Backoff(tt.attempt, lo, hi, top); got != tt.max {
			t.Errorf("attempt %d, highest draw: %s, want %s", tt.attempt, got, tt.max)
		}
	}
}

func TestSystemClock(t *testing.T) {
	c := SystemClock()
	if d := time.Since(c.Now()); d < 0 || d > time.Minute {
		t.Fatalf("SystemClock().Now() is %s away from time.Now", d)
	}
	select {
	case <-c.After(time.Millisecond):
	case <-time.After(5 * time.Second):
		t.Fatal("After(1ms) did not fire")
	}
}

func TestDefaults(t *testing.T) {
	var clock Clock
	var rnd func(int64) int64
	Defaults(&clock, &rnd)
	if clock == nil || rnd == nil {
		t.Fatalf("Defaults left clock %v, rand nil %v", clock, rnd == nil)
	}
	mine := func(int64) int64 { return 7 }
	rnd = mine
	Defaults(&clock, &rnd)
	if rnd(100) != 7 {
		t.Error("Defaults replaced a rand it was given")
	}
}
