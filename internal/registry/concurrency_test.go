package registry

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

// TestChurnDoesNotDeadlock runs every kind of registry operation at once:
// heartbeats of agents that the sweeper keeps turning unhealthy (so their
// next heartbeat moves them in the capability index), flushes of those
// liveness changes, listings, HEADs, deletions, evictions and rotations.
// A deadlock shows as no operation finishing for a while; the test then
// fails with the goroutines' stacks instead of hanging. Once it is quiet
// and flushed, the store holds what memory holds: no batch undid a newer
// write or wrote back a deleted agent.
func TestChurnDoesNotDeadlock(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	st := newMemStore()
	r := newRegistry(t, st, c)
	const agents, rounds = 16, 500
	peers := make([]*trust.Peer, agents)
	for i := range peers {
		peers[i] = peer(t, fmt.Sprintf("a%d@n%d", i, i%3), "")
	}
	// Two bodies per agent that differ in what other agents can see.
	body := func(i, v int) []byte {
		return fmt.Appendf(nil, `{"agent_id":"a%d","tools":[{"function_name":"f","capability":"c%d","dependencies":[{"capability":"c%d"}]}]}`, i, v, (i+1)%agents)
	}
	var (
		wg       sync.WaitGroup
		finished atomic.Int64
		stop     = make(chan struct{})
		beating  sync.WaitGroup
		errs     = make(chan error, 16)
	)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	// The heartbeats run a fixed number of rounds; everything else runs
	// beside them until they are done.
	for g := range 4 {
		beating.Add(1)
		wg.Go(func() {
			defer beating.Done()
			for i := range rounds {
				a := (g*5 + i) % agents
				if _, err := r.heartbeatBody(ctx, peers[a], body(a, i/agents%2)); err != nil {
					fail(fmt.Errorf("heartbeat of a%d: %w", a, err))
				}
				finished.Add(1)
			}
		})
	}
	repeat := func(op func(i int)) {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				op(i)
				finished.Add(1)
			}
		})
	}
	repeat(func(int) {
		c.Advance(r.cfg.Timeout + time.Second)
		r.Sweep()
	})
	repeat(func(int) {
		if err := r.Flush(ctx); err != nil {
			fail(err)
		}
	})
	repeat(func(int) { r.List(Filter{}) })
	repeat(func(i int) {
		a := i % agents
		if _, err := r.Check(peers[a], fmt.Sprintf("a%d", a)); err != nil && !errors.Is(err, ErrUnknown) && !errors.Is(err, ErrEvicted) {
			fail(fmt.Errorf("HEAD of a%d: %w", a, err))
		}
	})
	repeat(func(i int) {
		a := i * 7 % agents
		if err := r.Delete(ctx, peers[a], fmt.Sprintf("a%d", a)); err != nil && !errors.Is(err, ErrUnknown) {
			fail(fmt.Errorf("delete of a%d: %w", a, err))
		}
	})
	repeat(func(i int) {
		if _, err := r.evictSerial(ctx, peers[i*5%agents].Serial, "revoked"); err != nil {
			fail(err)
		}
	})
	repeat(func(int) {
		if _, err := r.Rotate(ctx, ""); err != nil {
			fail(err)
		}
	})
	go func() {
		beating.Wait()
		close(stop)
	}()
	awaitProgress(t, &wg, &finished, 10*time.Second)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkIndex(t, r)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	checkStored(t, r, st)
}

// awaitProgress waits for wg, failing the test with every goroutine's
// stack if finished, the count of operations done, stays still for stall.
func awaitProgress(t *testing.T, wg *sync.WaitGroup, finished *atomic.Int64, stall time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	const checks = 10
	tick := time.NewTicker(stall / checks)
	defer tick.Stop()
	last, still := int64(-1), 0
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			if n := finished.Load(); n != last {
				last, still = n, 0
				continue
			}
			if still++; still < checks {
				continue
			}
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("deadlock: no registry operation finished in %v (%d done)\n%s", stall, last, stacks.String())
		}
	}
}

// TestDeleteRacesHeartbeat deletes an agent over and over while its own
// heartbeats, each with a new description, keep registering it again. Run
// under -race: dropping an entry reads its registration, which a heartbeat
// that looked the entry up before the drop may be writing. Afterwards the
// store holds what memory holds: no heartbeat wrote through an entry that
// had been deleted.
func TestDeleteRacesHeartbeat(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	r := newRegistry(t, st, newClock())
	p := peer(t, "opus@ct111", "")
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := range 2000 {
				reg, payload, err := ParseRegistration(fmt.Appendf(nil, `{"agent_id":"opus","description":"%d-%d","tools":[{"function_name":"f","capability":"c"}]}`, g, i))
				if err == nil {
					_, err = r.Heartbeat(ctx, p, reg, payload)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 2000 {
			if err := r.Delete(ctx, p, "opus"); err != nil && !errors.Is(err, ErrUnknown) {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkIndex(t, r)
	checkStored(t, r, st)
}

// checkIndex checks, with the registry quiet, that the map holds no
// dropped entry, that Len counts it, and that the capability index holds
// only the entries in the map.
func checkIndex(t *testing.T, r *Registry) {
	t.Helper()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id, e := range r.agents {
		if e.gone {
			t.Errorf("agent %q: a dropped entry is still in the map", id)
		}
	}
	if int(r.count.Load()) != len(r.agents) {
		t.Errorf("Len %d, %d entries", r.count.Load(), len(r.agents))
	}
	for c, m := range r.providers {
		for id, e := range m {
			if r.agents[id] != e {
				t.Errorf("capability %q is offered by a dropped entry of %q", c, id)
			}
		}
	}
}

// checkStored checks, with the registry quiet and its liveness flushed,
// that memory and the store hold the same agents with the same records.
func checkStored(t *testing.T, r *Registry, st *memStore) {
	t.Helper()
	r.mu.RLock()
	defer r.mu.RUnlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	for id, e := range r.agents {
		rec, ok := st.agents[id]
		if !ok {
			t.Errorf("agent %q is registered but not stored", id)
			continue
		}
		if got, want := storedRecord(rec), storedRecord(e.rec); !reflect.DeepEqual(got, want) {
			t.Errorf("agent %q: the store holds\n%s\nmemory\n%s", id, fmtRecord(got), fmtRecord(want))
		}
	}
	for id := range st.agents {
		if r.agents[id] == nil {
			t.Errorf("agent %q is stored but not registered", id)
		}
	}
}

// TestDeleteOfStaleEntry gives Delete's second half an entry that, after
// it was looked up, was deleted and replaced by a newer registration of
// the same id from another certificate: what a DELETE that lost a race to
// another DELETE and a re-registration sees. The newer agent is judged on
// its own owner, and stays registered and stored.
func TestDeleteOfStaleEntry(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	r := newRegistry(t, st, newClock())
	first, second := peer(t, "opus@ct111", ""), peer(t, "opus@ct112", "")
	if _, err := heartbeat(t, r, first, `{"agent_id":"opus"}`); err != nil {
		t.Fatal(err)
	}
	stale := r.lookup("opus")
	if err := r.Delete(ctx, first, "opus"); err != nil {
		t.Fatal(err)
	}
	if _, err := heartbeat(t, r, second, `{"agent_id":"opus"}`); err != nil {
		t.Fatalf("a freed id taken by another node's agent: %v", err)
	}
	if err := r.deleteEntry(ctx, first, "opus", stale); !errors.Is(err, ErrForbidden) || ReasonOf(err) != "owned_by_other" {
		t.Errorf("delete through a stale entry: %v (reason %q), want ErrForbidden owned_by_other", err, ReasonOf(err))
	}
	if got := st.agents["opus"].Owner; got != second.Name() {
		t.Errorf("stored owner of opus %q, want the newer registration's %q", got, second.Name())
	}
	if v := r.List(Filter{}); len(v) != 1 || v[0].Owner != second.Name() {
		t.Errorf("registry after a stale delete: %+v", v)
	}
	// Once the newer agent is gone too, the stale entry names nothing.
	if err := r.Delete(ctx, second, "opus"); err != nil {
		t.Fatal(err)
	}
	if err := r.deleteEntry(ctx, first, "opus", stale); !errors.Is(err, ErrUnknown) {
		t.Errorf("delete through a stale entry of a deleted agent: %v, want ErrUnknown", err)
	}
}
