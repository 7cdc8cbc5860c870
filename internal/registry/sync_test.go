package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/trust"
)

// newReplica is a registry that shares st with other processes.
func newReplica(t *testing.T, st Store, c *clocktest.Clock) *Registry {
	t.Helper()
	r, err := New(context.Background(), st, Config{Timeout: 20 * time.Second, Now: c.Now, SyncInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustSync(t *testing.T, r *Registry) int {
	t.Helper()
	n, err := r.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func statusOf(r *Registry, id string) string {
	for _, v := range r.List(Filter{}) {
		if v.ID == id {
			return v.Status
		}
	}
	return ""
}

// TestSyncAcrossReplicas: an agent registered on replica A is listed by B
// after B syncs; its heartbeats to A keep it healthy on B through shared
// liveness (one write per share interval, not per heartbeat); a change on
// A reaches B by version; a deletion on A leaves B.
func TestSyncAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	a, b := newReplica(t, st, c), newReplica(t, st, c)
	opus := peer(t, "opus@ct111", "")
	body := []byte(`{"agent_id":"opus","http_port":9000,"tools":[{"function_name":"f","capability":"weather"}]}`)
	if _, err := a.heartbeatBody(ctx, opus, body); err != nil {
		t.Fatal(err)
	}
	if n := mustSync(t, b); n != 1 || statusOf(b, "opus") != StatusHealthy {
		t.Fatalf("after a sync B changed %d entries and lists opus as %q, want it healthy", n, statusOf(b, "opus"))
	}
	if n := mustSync(t, b); n != 0 {
		t.Errorf("a second sync with nothing new changed %d entries", n)
	}

	// A minute of heartbeats to A, every 5s: B never finds opus silent.
	st.mu.Lock()
	writes := st.writes
	st.mu.Unlock()
	for range 12 {
		c.Advance(5 * time.Second)
		if _, err := a.heartbeatBody(ctx, opus, body); err != nil {
			t.Fatal(err)
		}
		a.shareLiveness()
		if err := a.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		mustSync(t, b)
		b.Sweep()
		if got := statusOf(b, "opus"); got != StatusHealthy {
			t.Fatalf("B lists opus as %q while it heartbeats to A", got)
		}
	}
	st.mu.Lock()
	shared := st.writes - writes
	st.mu.Unlock()
	if shared > 12 || shared < 6 {
		t.Errorf("a minute of heartbeats every 5s wrote liveness %d times, want one per 5s share interval at most", shared)
	}

	// Silent on A too: B marks it unhealthy after the timeout.
	c.Advance(25 * time.Second)
	mustSync(t, b)
	if b.Sweep() != 1 || statusOf(b, "opus") != StatusUnhealthy {
		t.Errorf("opus silent for 25s is %q on B, want unhealthy", statusOf(b, "opus"))
	}

	// A change on A (a new port), a moment later, reaches B: versions
	// among replicas are clocks, so B's older mark cannot undo it.
	c.Advance(time.Millisecond)
	body2 := []byte(`{"agent_id":"opus","http_port":9001}`)
	if _, err := a.heartbeatBody(ctx, opus, body2); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil { // B's unhealthy mark, older than A's change
		t.Fatal(err)
	}
	mustSync(t, b)
	if got := statusOf(b, "opus"); got != StatusHealthy {
		t.Errorf("after opus re-registered on A, B lists it as %q", got)
	}
	if v := b.List(Filter{}); len(v) != 1 || v[0].Endpoint != a.List(Filter{})[0].Endpoint {
		t.Errorf("B lists %+v, A %+v: they disagree", v, a.List(Filter{}))
	}

	// Deleted on A: gone from B once its registration is older than the
	// timeout (a claim in flight on B is never dropped).
	if err := a.Delete(ctx, opus, "opus"); err != nil {
		t.Fatal(err)
	}
	mustSync(t, b)
	if b.Len() != 0 {
		t.Errorf("B holds %d agents after opus was deleted on A", b.Len())
	}
}

// TestSyncStress: heartbeats of many agents spread over two replicas
// while both sync and flush, under -race; afterwards both list every
// agent healthy.
func TestSyncStress(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	rs := []*Registry{newReplica(t, st, c), newReplica(t, st, c)}
	const agents, rounds = 16, 30
	peers := make([]*trust.Peer, agents)
	for i := range peers {
		peers[i] = peer(t, fmt.Sprintf("a%d@ct111", i), "")
	}
	var wg sync.WaitGroup
	for i := range agents {
		wg.Go(func() {
			body := fmt.Appendf(nil, `{"agent_id":"a%d","http_port":%d}`, i, 9000+i)
			for n := range rounds {
				r := rs[(i+n)%2] // each heartbeat to either replica
				if _, err := r.heartbeatBody(ctx, peers[i], body); err != nil {
					t.Errorf("a%d: %v", i, err)
					return
				}
			}
		})
	}
	for _, r := range rs {
		wg.Go(func() {
			for range rounds {
				if _, err := r.Sync(ctx); err != nil {
					t.Error(err)
				}
				r.shareLiveness()
				if err := r.Flush(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for i, r := range rs {
		mustSync(t, r)
		if r.Len() != agents {
			t.Errorf("replica %d holds %d agents, want %d", i, r.Len(), agents)
		}
		for _, v := range r.List(Filter{}) {
			if v.Status != StatusHealthy {
				t.Errorf("replica %d lists %s as %s", i, v.ID, v.Status)
			}
		}
	}
}
