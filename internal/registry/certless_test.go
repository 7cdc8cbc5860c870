package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/store"
)

// newCertlessRegistry returns a registry over st that bounds the agents
// registered without a certificate by lim.
func newCertlessRegistry(t *testing.T, st Store, c *clocktest.Clock, lim CertlessLimits) *Registry {
	t.Helper()
	r, err := New(context.Background(), st, Config{Timeout: 20 * time.Second, Now: c.Now, Certless: &lim})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// certlessBody is a heartbeat body for id whose stored payload is about
// size bytes.
func certlessBody(id string, size int) []byte {
	pad := max(size-len(`{"agent_id":"","description":""}`)-len(id), 0)
	return fmt.Appendf(nil, `{"agent_id":%q,"description":%q}`, id, strings.Repeat("x", pad))
}

// held returns the record r holds for id.
func held(r *Registry, id string) (store.Agent, bool) {
	e := r.locked(id)
	if e == nil {
		return store.Agent{}, false
	}
	defer e.mu.Unlock()
	return e.rec, true
}

// wantRefused checks that err is the refusal sentinel with reason.
func wantRefused(t *testing.T, what string, err, sentinel error, reason string) {
	t.Helper()
	if !errors.Is(err, sentinel) || ReasonOf(err) != reason {
		t.Errorf("%s: %v (reason %q), want %v with reason %q", what, err, ReasonOf(err), sentinel, reason)
	}
}

// TestCertlessBounds: callers without a certificate register agents up to
// the bounds per source and in all, agents and payload bytes; past one
// they are refused with its reason and nothing changes. Deleting an agent,
// or a certificate taking it over, frees what it held.
func TestCertlessBounds(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	admit := true
	r := newCertlessRegistry(t, st, c, CertlessLimits{MaxAgents: 5, MaxAgentsPerSource: 3, MaxBytes: 1000, MaxBytesPerSource: 350, MaxPayload: 200,
		AdmitNew: func(string) bool { return admit }})
	hb := func(source, id string, size int) error {
		_, err := r.HeartbeatFrom(ctx, nil, source, certlessBody(id, size))
		return err
	}
	for i := range 3 {
		if err := hb("a", fmt.Sprint("a", i), 100); err != nil {
			t.Fatalf("source a's agent %d: %v", i, err)
		}
	}
	writes := st.writeCount()
	wantRefused(t, "a fourth agent of source a", hb("a", "a3", 100), ErrTooMany, "certless_source_agents")
	wantRefused(t, "a payload over 200 bytes", hb("b", "b0", 300), ErrTooLarge, "certless_payload")
	wantRefused(t, "source a's agent grown past 350 bytes for a", hb("a", "a0", 190), ErrTooLarge, "certless_source_bytes")
	if got := st.writeCount(); got != writes || r.Len() != 3 {
		t.Errorf("refusals wrote %d times and left %d agents, want none and 3", got-writes, r.Len())
	}
	if v, ok := held(r, "a0"); !ok || strings.Count(string(v.Payload), "x") > 100 {
		t.Errorf("a0 after its refused growth: %v %s", ok, v.Payload)
	}
	if n, b := r.CertlessUsage(); n != 3 || b != 300 {
		t.Errorf("usage %d agents, %d bytes, want 3 and 300", n, b)
	}
	// The same growth within the bounds is taken and charged.
	if err := hb("a", "a0", 150); err != nil {
		t.Fatal(err)
	}
	if n, b := r.CertlessUsage(); n != 3 || b != 350 {
		t.Errorf("usage after a0 grew: %d agents, %d bytes, want 3 and 350", n, b)
	}

	for i, id := range []string{"b0", "c0"} {
		if err := hb(string(rune('b'+i)), id, 100); err != nil {
			t.Fatal(err)
		}
	}
	wantRefused(t, "a sixth agent in all", hb("d", "d0", 10), ErrTooMany, "certless_agents")
	// A caller with a certificate is not held to the certless bounds.
	if _, err := heartbeat(t, r, peer(t, "opus@ct111", ""), `{"agent_id":"opus"}`); err != nil {
		t.Fatalf("a certificate's agent while the certless bounds are full: %v", err)
	}

	// Deletion frees a's slot; a certificate taking c0 over frees c0's.
	if err := r.Delete(ctx, nil, "a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := heartbeat(t, r, peer(t, "c0@ct111", ""), `{"agent_id":"c0"}`); err != nil {
		t.Fatal(err)
	}
	if n, b := r.CertlessUsage(); n != 3 || b != 350 {
		t.Errorf("usage after a delete and a takeover: %d agents, %d bytes, want 3 and 350", n, b)
	}
	if err := hb("a", "a3", 100); err != nil {
		t.Errorf("source a after one of its agents was deleted: %v", err)
	}
	// The rate of new ids (the server's limiter) is asked last.
	admit = false
	wantRefused(t, "a new id the rate refuses", hb("e", "e0", 10), ErrTooMany, "certless_rate")
	if err := hb("a", "a3", 100); err != nil {
		t.Errorf("a heartbeat of a held agent while new ids are refused: %v", err)
	}
}

// TestCertlessExpiry: an agent registered without a certificate and silent
// past the expiry is deleted from memory and the store, with an audit
// entry; one heard from, or owned by a certificate, is kept. At start, an
// expired one the store still holds is deleted, not loaded.
func TestCertlessExpiry(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	lim := CertlessLimits{Expiry: 10 * time.Minute}
	r := newCertlessRegistry(t, st, c, lim)
	for _, id := range []string{"quiet", "chatty"} {
		if _, err := r.HeartbeatFrom(ctx, nil, "a", certlessBody(id, 50)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := heartbeat(t, r, peer(t, "opus@ct111", ""), `{"agent_id":"opus"}`); err != nil {
		t.Fatal(err)
	}
	c.Advance(6 * time.Minute)
	if _, err := r.HeartbeatFrom(ctx, nil, "a", certlessBody("chatty", 50)); err != nil {
		t.Fatal(err)
	}
	c.Advance(5 * time.Minute)
	if n, err := r.Expire(ctx); err != nil || n != 1 {
		t.Fatalf("Expire: %d, %v; want quiet alone", n, err)
	}
	if _, ok := held(r, "quiet"); ok {
		t.Error("quiet is still held after it expired")
	}
	for _, id := range []string{"chatty", "opus"} {
		if _, ok := held(r, id); !ok {
			t.Errorf("%s was removed", id)
		}
	}
	recs, _ := st.Agents(ctx)
	for _, rec := range recs {
		if rec.ID == "quiet" {
			t.Error("quiet is still stored after it expired")
		}
	}
	if n, _ := r.CertlessUsage(); n != 1 {
		t.Errorf("%d certless agents counted after the expiry, want 1", n)
	}
	log := st.auditLog()
	if last := log[len(log)-1]; last.Action != "agent.expire" || last.Identity != "quiet" {
		t.Errorf("last audit entry %+v, want agent.expire of quiet", last)
	}

	// chatty's liveness is written at a quarter of the expiry, so a
	// restart keeps it; a stored agent silent past the expiry is dropped.
	r.shareLiveness()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.PutAgents(ctx, []store.Agent{{ID: "stale", Payload: []byte(`{"agent_id":"stale"}`), Status: StatusHealthy, LastSeen: c.Now().Add(-time.Hour), Version: 1}}); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	r2 := newCertlessRegistry(t, st, c, lim)
	if _, ok := held(r2, "stale"); ok {
		t.Error("an expired certless agent was loaded at start")
	}
	for _, id := range []string{"chatty", "opus"} {
		if _, ok := held(r2, id); !ok {
			t.Errorf("%s was not loaded at start", id)
		}
	}
	recs, _ = st.Agents(ctx)
	for _, rec := range recs {
		if rec.ID == "stale" {
			t.Error("the expired agent is still stored after the start")
		}
	}
	if n, _ := r2.CertlessUsage(); n != 1 {
		t.Errorf("%d certless agents counted after the restart, want 1 (chatty)", n)
	}
}

// TestCertlessConcurrent: many callers without a certificate register,
// from a few sources at once, more agents than the bounds allow; each
// source gets exactly its bound, the totals match what each goroutine
// was granted, and deleting everything gives every charge back.
func TestCertlessConcurrent(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	const sources, perSource, workers, tries = 4, 5, 4, 10
	r := newCertlessRegistry(t, st, c, CertlessLimits{MaxAgents: 100, MaxAgentsPerSource: perSource})
	granted := make([][]string, sources*workers)
	var wg sync.WaitGroup
	for g := range sources * workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := fmt.Sprint("s", g%sources)
			for i := range tries {
				id := fmt.Sprintf("g%d-%d", g, i)
				_, err := r.HeartbeatFrom(ctx, nil, src, certlessBody(id, 40))
				switch {
				case err == nil:
					granted[g] = append(granted[g], id)
				case ReasonOf(err) != "certless_source_agents":
					t.Errorf("%s: %v", id, err)
				}
			}
		}()
	}
	wg.Wait()
	bySource := map[int]int{}
	var bytes int64
	for g, ids := range granted {
		bySource[g%sources] += len(ids)
		for _, id := range ids {
			v, ok := held(r, id)
			if !ok {
				t.Errorf("%s was granted but is not held", id)
			}
			bytes += int64(len(v.Payload))
		}
	}
	for s := range sources {
		if bySource[s] != perSource {
			t.Errorf("source s%d was granted %d agents, want %d", s, bySource[s], perSource)
		}
	}
	if n, b := r.CertlessUsage(); n != sources*perSource || b != bytes {
		t.Errorf("usage %d agents, %d bytes; granted %d, %d", n, b, sources*perSource, bytes)
	}
	for g, ids := range granted {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, id := range ids {
				if err := r.Delete(ctx, nil, id); err != nil {
					t.Errorf("goroutine %d deleting %s: %v", g, id, err)
				}
			}
		}()
	}
	wg.Wait()
	if n, b := r.CertlessUsage(); n != 0 || b != 0 || r.Len() != 0 {
		t.Errorf("after deleting every agent: usage %d, %d bytes, %d agents", n, b, r.Len())
	}
}
