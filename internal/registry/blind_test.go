package registry

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// unreadable is a memStore whose Agents fails while down is set: the
// database of replicas, away.
type unreadable struct {
	*memStore
	down atomic.Bool
}

func (u *unreadable) Agents(ctx context.Context) ([]store.Agent, error) {
	if u.down.Load() {
		return nil, store.ErrUnavailable
	}
	return u.memStore.Agents(ctx)
}

// TestBlindReplicaNeverAnswersGone: while a replica cannot read the store,
// a HEAD for an agent it does not know, or whose liveness it could not
// merge, is "unavailable" (503), never "unknown" (410, register again),
// and it marks no agent unhealthy; once the store is back, both work as
// before.
func TestBlindReplicaNeverAnswersGone(t *testing.T) {
	ctx := context.Background()
	st := &unreadable{memStore: newMemStore()}
	c := newClock()
	a, b := newReplica(t, st, c), newReplica(t, st, c)
	opus, scout := peer(t, "opus@ct111", ""), peer(t, "scout@ct111", "")
	if _, err := a.heartbeatBody(ctx, opus, []byte(`{"agent_id":"opus","http_port":9000}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.heartbeatBody(ctx, scout, []byte(`{"agent_id":"scout","http_port":9001}`)); err != nil {
		t.Fatal(err)
	}
	mustSync(t, b) // B knows opus

	st.down.Store(true)
	if _, err := b.Sync(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Sync with the store away: %v, want ErrUnavailable", err)
	}
	// opus heartbeats to A only; B cannot see it, and must not mark it.
	c.Advance(30 * time.Second)
	if n := b.Sweep(); n != 0 {
		t.Errorf("a blind replica marked %d agents unhealthy", n)
	}
	if _, err := b.Check(opus, "opus"); err != nil {
		t.Errorf("HEAD opus on the blind replica: %v, want it served", err)
	}
	// An agent registered elsewhere since, unknown here.
	if _, err := b.Check(peer(t, "late@ct112", ""), "late"); !errors.Is(err, store.ErrUnavailable) || errors.Is(err, ErrUnknown) {
		t.Errorf("HEAD of an agent a blind replica does not know: %v, want ErrUnavailable", err)
	}

	st.down.Store(false)
	mustSync(t, b)
	if _, err := b.Check(peer(t, "late@ct112", ""), "late"); !errors.Is(err, ErrUnknown) {
		t.Errorf("HEAD of an unknown agent once the store is back: %v, want ErrUnknown", err)
	}
	c.Advance(30 * time.Second)
	if n := b.Sweep(); n == 0 {
		t.Errorf("once the store is back, silent agents are marked unhealthy again: none marked")
	}
}
