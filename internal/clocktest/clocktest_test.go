package clocktest_test

import (
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
)

// TestSet: Set moves the clock either way and fires a wait it passes.
func TestSet(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	c := clocktest.New(start)
	due := c.After(time.Minute)
	c.Set(start.Add(-time.Hour))
	if got := c.Now(); !got.Equal(start.Add(-time.Hour)) {
		t.Fatalf("Now after Set back = %s", got)
	}
	select {
	case <-due:
		t.Fatal("a wait fired when the clock went back")
	default:
	}
	c.Set(start.Add(time.Minute))
	select {
	case at := <-due:
		if !at.Equal(start.Add(time.Minute)) {
			t.Errorf("the wait fired at %s", at)
		}
	default:
		t.Fatal("the wait did not fire when Set passed it")
	}
}
