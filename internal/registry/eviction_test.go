package registry

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

func TestEvictIdentity(t *testing.T) {
	tests := []struct {
		name string
		want []string
	}{
		{"a@ct200", []string{"a"}},
		// A node covers its agents, whichever CA issued their certificates.
		{"ct200.mesh", []string{"a", "acme-y", "b"}},
		// Not the agents of a node whose id only starts the same.
		{"ct20.mesh", []string{"d"}},
		{"acme-x", []string{"acme-x"}},
		{"ct999.mesh", nil},
		{"alice@external", nil},
		{"ct200", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			st := newMemStore()
			r := newRegistry(t, st, newClock())
			peers := map[string]*trust.Peer{
				"a": peer(t, "a@ct200", ""), "b": peer(t, "b@ct200", ""), "c": peer(t, "c@ct201", ""), "d": peer(t, "d@ct20", ""),
				"acme-x": peer(t, "acme-x", "acme"), "acme-y": peer(t, "acme-y@ct200", "acme"),
			}
			for id, p := range peers {
				if _, err := heartbeat(t, r, p, `{"agent_id":"`+id+`"}`); err != nil {
					t.Fatal(err)
				}
			}
			ev, err := r.EvictIdentity(ctx, tt.name, "identity revoked")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ev {
				got = append(got, e.AgentID)
				if want := peers[e.AgentID]; e.CertSerial != want.Serial || e.CertFingerprint != want.Fingerprint {
					t.Errorf("evicted %+v, want the certificate of %s", e, want.Name())
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("evicted %q, want %q", got, tt.want)
			}
			for id, p := range peers {
				_, err := r.Check(p, id)
				stored := st.agents[id].Status
				if slices.Contains(tt.want, id) {
					if !errors.Is(err, ErrEvicted) || stored != StatusEvicted {
						t.Errorf("evicted agent %q: HEAD %v, stored status %q", id, err, stored)
					}
				} else if err != nil || stored != StatusHealthy {
					t.Errorf("agent %q, not evicted: HEAD %v, stored status %q", id, err, stored)
				}
			}
			if again, err := r.EvictIdentity(ctx, tt.name, "identity revoked"); err != nil || len(again) != 0 {
				t.Errorf("evicting %q again: %v, %v; want nothing new", tt.name, again, err)
			}
		})
	}
}

// TestEvictionWriteRetried: an eviction whose store write fails (a
// transient error; memStore's fail is the one fault doubled) is refused
// at once from memory and written by the flushes that follow, however
// many fail, until one succeeds.
func TestEvictionWriteRetried(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	r := newRegistry(t, st, newClock())
	p := peer(t, "a@ct200", "")
	if _, err := heartbeat(t, r, p, `{"agent_id":"a"}`); err != nil {
		t.Fatal(err)
	}
	down := errors.New("store briefly unreachable")
	st.mu.Lock()
	st.fail = down
	st.mu.Unlock()
	ev, err := r.EvictIdentity(ctx, "a@ct200", "identity revoked")
	if !errors.Is(err, down) || len(ev) != 1 {
		t.Fatalf("eviction with the store down: %v, %v; want agent a evicted and the store's error", ev, err)
	}
	if _, err := r.Check(p, "a"); !errors.Is(err, ErrEvicted) {
		t.Errorf("HEAD of a while its eviction is unwritten: %v, want ErrEvicted", err)
	}
	for range 3 {
		if err := r.Flush(ctx); !errors.Is(err, down) {
			t.Fatalf("flush with the store down: %v", err)
		}
	}
	st.mu.Lock()
	st.fail = nil
	st.mu.Unlock()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	got := st.agents["a"]
	st.mu.Unlock()
	if got.Status != StatusEvicted || got.Reason != "identity revoked" {
		t.Errorf("stored a once the store is back: status %q reason %q, want evicted (identity revoked)", got.Status, got.Reason)
	}
}

// TestOnChange: registrations, a return from unhealthy, evictions and
// removals are told to Config.OnChange, once each, after they are made.
func TestOnChange(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	var got []string
	r, err := New(ctx, newMemStore(), Config{Timeout: 20 * time.Second, Now: c.Now, OnChange: func(ch Change) {
		got = append(got, ch.Kind+" "+ch.AgentID)
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := peer(t, "a@ct200", ""), peer(t, "b@ct200", "")
	for _, hb := range []struct {
		p  *trust.Peer
		id string
	}{{a, "a"}, {b, "b"}, {a, "a"}} {
		if _, err := heartbeat(t, r, hb.p, `{"agent_id":"`+hb.id+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(time.Minute)
	if n := r.Sweep(); n != 2 {
		t.Fatalf("Sweep marked %d, want 2", n)
	}
	if _, err := heartbeat(t, r, a, `{"agent_id":"a"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := r.EvictIdentity(ctx, "b@ct200", "revoked"); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, a, "a"); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got[2:4])
	want := []string{"registered a", "registered b", "unhealthy a", "unhealthy b", "registered a", "evicted b", "removed a"}
	if !slices.Equal(got, want) {
		t.Fatalf("OnChange got %q, want %q", got, want)
	}
}
