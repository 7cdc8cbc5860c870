package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestDeleteRacesHeartbeat deletes an agent over and over while its own
// heartbeats, each with a new description, keep registering it again. Run
// under -race: dropping an entry reads its registration, which a heartbeat
// that looked the entry up before the drop may be writing. Afterwards the
// store holds what memory holds: no heartbeat wrote through an entry that
// had been deleted.
func TestDeleteRacesHeartbeat(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	r := newRegistry(t, st, &clock{t: time.Unix(1_800_000_000, 0)})
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
	checkConsistent(t, r, st)
}

// checkConsistent checks, with the registry quiet, that memory and the
// store hold the same agents and that the capability index holds only
// registered entries.
func checkConsistent(t *testing.T, r *Registry, st *memStore) {
	t.Helper()
	r.mu.RLock()
	defer r.mu.RUnlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	for id, e := range r.agents {
		if e.gone {
			t.Errorf("agent %q: a dropped entry is still in the map", id)
		}
		if rec, ok := st.agents[id]; !ok || string(rec.Payload) != string(e.rec.Payload) {
			t.Errorf("agent %q: memory holds %s, the store %s (stored: %v)", id, e.rec.Payload, rec.Payload, ok)
		}
	}
	for id := range st.agents {
		if r.agents[id] == nil {
			t.Errorf("agent %q is stored but not registered", id)
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

// TestDeleteOfStaleEntry gives Delete's second half an entry that, after
// it was looked up, was deleted and replaced by a newer registration of
// the same id from another certificate: what a DELETE that lost a race to
// another DELETE and a re-registration sees. The newer agent is judged on
// its own owner, and stays registered and stored.
func TestDeleteOfStaleEntry(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	r := newRegistry(t, st, &clock{t: time.Unix(1_800_000_000, 0)})
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
	if v := r.List(Filter{}, true); len(v) != 1 || v[0].Owner != second.Name() {
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
