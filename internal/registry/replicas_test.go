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
	"github.com/meshtrust/meshtrust/internal/store/storetest"
	"github.com/meshtrust/meshtrust/trust"
)

// lastAudit returns the last audit entry of memStore st about id.
func lastAudit(st *memStore, id string) store.AuditEntry {
	var last store.AuditEntry
	for _, a := range st.auditLog() {
		if a.Identity == id {
			last = a
		}
	}
	return last
}

// viewOf returns r's view of id.
func viewOf(r *Registry, id string) (View, bool) {
	for _, v := range r.List(Filter{}) {
		if v.ID == id {
			return v, true
		}
	}
	return View{}, false
}

// checkOwned fails t unless the store holds owner's record of id, without
// the endpoint evil.example, its audit log's last entry about id is
// owner's claim, and r, once synced, lists that record.
func checkOwned(t *testing.T, st *memStore, r *Registry, id, owner string) {
	t.Helper()
	rec, ok := storetest.StoredAgent(t, st, id)
	if !ok || rec.Owner != owner || strings.Contains(string(rec.Payload), "evil") {
		t.Errorf("the store holds %+v, want %s's record", rec, owner)
	}
	if last := lastAudit(st, id); last.Action != "agent.claim" || !strings.Contains(last.Detail, owner) {
		t.Errorf("the last audit entry of %s is %+v, want %s's claim", id, last, owner)
	}
	mustSync(t, r)
	if v, ok := viewOf(r, id); !ok || v.Owner != owner || v.Unauthenticated || strings.Contains(v.Endpoint, "evil") {
		t.Errorf("after a sync the replica lists %+v, want %s's record", v, owner)
	}
}

// TestReplicaOwnership drives, on three replicas of one store, the three
// sequences by which a replica holding an agent's record from before a
// release or a claim elsewhere used to write it back: the store ends with
// the owner its audit log names, and each replica converges on it.
func TestReplicaOwnership(t *testing.T) {
	ctx := context.Background()
	const id = "opus"
	body := func(host string, port int) []byte {
		return fmt.Appendf(nil, `{"agent_id":"opus","http_host":%q,"http_port":%d}`, host, 9000+port)
	}
	setup := func(t *testing.T) (*memStore, *clocktest.Clock, [3]*Registry) {
		st := newMemStore()
		c := newClock()
		return st, c, [3]*Registry{newReplica(t, st, c), newReplica(t, st, c), newReplica(t, st, c)}
	}
	syncAll := func(t *testing.T, rs [3]*Registry) {
		for _, r := range rs {
			mustSync(t, r)
		}
	}

	// squatThenRelease has squatter register id through B (rs[1]), every
	// replica sync, and an operator release the id through rs[2].
	squatThenRelease := func(t *testing.T, rs [3]*Registry) *trust.Peer {
		squatter := peer(t, "opus@ct666", "")
		if _, err := rs[1].heartbeatBody(ctx, squatter, body("squat.example", 1)); err != nil {
			t.Fatal(err)
		}
		syncAll(t, rs)
		if err := rs[2].Release(ctx, id, "an operator"); err != nil {
			t.Fatal(err)
		}
		return squatter
	}

	t.Run("ReleasedThenClaimedElsewhere", func(t *testing.T) {
		st, c, rs := setup(t)
		a, b := rs[0], rs[1]
		squatter, owner := squatThenRelease(t, rs), peer(t, "opus@ct111", "")
		// Later than a heartbeat timeout, so that even a replica that
		// keeps a record it did not find for that long has dropped it.
		c.Advance(25 * time.Second)
		mustSync(t, a)
		if _, err := a.heartbeatBody(ctx, owner, body("opus.example", 2)); err != nil {
			t.Fatalf("opus@ct111's claim after the release: %v", err)
		}
		// The squatter's heartbeat reaches B, which has not synced since.
		c.Advance(time.Millisecond)
		_, err := b.heartbeatBody(ctx, squatter, body("evil.example", 3))
		if !errors.Is(err, ErrForbidden) {
			t.Errorf("the squatter's heartbeat to a replica that had not synced = %v, want ErrForbidden", err)
		}
		checkOwned(t, st, b, id, "opus@ct111")
		if _, err := b.heartbeatBody(ctx, squatter, body("squat.example", 1)); !errors.Is(err, ErrForbidden) {
			t.Errorf("the squatter's heartbeat after B synced = %v, want ErrForbidden", err)
		}
	})

	t.Run("ReleasedNotResurrectedByFlush", func(t *testing.T) {
		st, c, rs := setup(t)
		b := rs[1]
		squatThenRelease(t, rs)
		// A routine flush on B, no heartbeat: the silent agent is marked
		// unhealthy, and the mark written.
		c.Advance(25 * time.Second)
		if n := b.Sweep(); n != 1 {
			t.Fatalf("B's sweep marked %d agents, want the released one it holds", n)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if rec, ok := storetest.StoredAgent(t, st, id); ok {
			t.Errorf("B's flush brought the released agent back: %+v", rec)
		}
		if last := lastAudit(st, id); last.Action != "agent.release" {
			t.Errorf("the last audit entry of %s is %+v, want the release", id, last)
		}
		mustSync(t, b)
		if b.Len() != 0 {
			t.Errorf("B holds %d agents after a sync, want none", b.Len())
		}
	})

	t.Run("CertlessCannotRevertClaim", func(t *testing.T) {
		st, c, rs := setup(t)
		a, b := rs[0], rs[1]
		owner := peer(t, "opus@ct111", "")
		// TLS auto: registered without a certificate through B.
		if _, err := b.heartbeatBody(ctx, nil, body("opus.example", 1)); err != nil {
			t.Fatal(err)
		}
		syncAll(t, rs)
		c.Advance(time.Millisecond)
		if _, err := a.heartbeatBody(ctx, owner, body("opus.example", 2)); err != nil {
			t.Fatalf("the certificate's claim: %v", err)
		}
		c.Advance(time.Millisecond)
		_, err := b.heartbeatBody(ctx, nil, body("evil.example", 3))
		if !errors.Is(err, ErrForbidden) {
			t.Errorf("a certless heartbeat to B after a certificate claimed the id = %v, want ErrForbidden", err)
		}
		checkOwned(t, st, b, id, "opus@ct111")
	})

	t.Run("DeletedElsewhereRegistersAnew", func(t *testing.T) {
		st, c, rs := setup(t)
		a, b := rs[0], rs[1]
		owner := peer(t, "opus@ct111", "")
		if _, err := b.heartbeatBody(ctx, owner, body("opus.example", 1)); err != nil {
			t.Fatal(err)
		}
		syncAll(t, rs)
		if err := a.Delete(ctx, owner, id); err != nil {
			t.Fatal(err)
		}
		// B still holds the record: a change it is sent is a claim
		// anew, audited, not a write over the deleted record.
		c.Advance(time.Millisecond)
		res, err := b.heartbeatBody(ctx, owner, body("opus.example", 2))
		if err != nil || !res.Created {
			t.Fatalf("heartbeat to B after a delete on A = %+v, %v; want a new registration", res, err)
		}
		if rec, ok := storetest.StoredAgent(t, st, id); !ok || rec.Owner != "opus@ct111" {
			t.Errorf("the store holds %+v, %v; want the new registration", rec, ok)
		}
		if last := lastAudit(st, id); last.Action != "agent.claim" {
			t.Errorf("the last audit entry of %s is %+v, want the new claim", id, last)
		}
	})
}

// TestReplicaOwnershipStress: two certificates heartbeat for one id
// through two replicas while an operator releases it through a third and
// every replica syncs and flushes, under -race. A heartbeat succeeds only
// for the owner the store held when it was written, so after the last
// release and the last claim the store's owner is the one its audit log
// last granted the id to, and every replica lists that owner once synced.
func TestReplicaOwnershipStress(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	rs := [3]*Registry{newReplica(t, st, c), newReplica(t, st, c), newReplica(t, st, c)}
	peers := []*trust.Peer{peer(t, "opus@ct111", ""), peer(t, "opus@ct666", "")}
	const rounds = 40
	var wg sync.WaitGroup
	got := make([][2]int, len(peers)) // per certificate: accepted, refused
	for i, p := range peers {
		wg.Go(func() {
			for n := range rounds {
				body := fmt.Appendf(nil, `{"agent_id":"opus","http_port":%d}`, 9000+n)
				_, err := rs[(i+n)%2].heartbeatBody(ctx, p, body)
				switch {
				case err == nil:
					got[i][0]++
				case errors.Is(err, ErrForbidden):
					got[i][1]++
				default:
					t.Errorf("%s: %v", p.Name(), err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds / 4 {
			if err := rs[2].Release(ctx, "opus", "an operator"); err != nil && !errors.Is(err, ErrUnknown) {
				t.Error(err)
			}
			mustSync(t, rs[2])
		}
	})
	for _, r := range rs[:2] {
		wg.Go(func() {
			for range rounds {
				if _, err := r.Sync(ctx); err != nil {
					t.Error(err)
				}
				r.Sweep()
				if err := r.Flush(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for i, p := range peers {
		if got[i][0]+got[i][1] != rounds {
			t.Errorf("%s: %d heartbeats accepted and %d refused, want %d answered", p.Name(), got[i][0], got[i][1], rounds)
		}
	}
	if got[0][0]+got[1][0] == 0 {
		t.Error("no heartbeat was accepted")
	}
	rec, held := storetest.StoredAgent(t, st, "opus")
	last := lastAudit(st, "opus")
	switch {
	case !held && last.Action != "agent.release":
		t.Errorf("the store holds no opus, but the last audit entry about it is %+v", last)
	case held && (last.Action != "agent.claim" || !strings.Contains(last.Detail, rec.Owner)):
		t.Errorf("the store holds opus owned by %q, but the last audit entry about it is %+v", rec.Owner, last)
	}
	for i, r := range rs {
		mustSync(t, r)
		v, listed := viewOf(r, "opus")
		if listed != held || held && v.Owner != rec.Owner {
			t.Errorf("replica %d lists opus as %+v (%v) after a sync; the store holds %+v (%v)", i, v, listed, rec, held)
		}
	}
}
