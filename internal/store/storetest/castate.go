package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// caState returns a state of n intermediates, the last active, the one
// before it tainted; from two on, with a root and the root it replaced.
func caState(n int) store.CAState {
	s := store.CAState{TrustDomain: "mesh.example"}
	if n > 1 {
		s.Roots = [][]byte{{0x30, 0x01, byte(n)}, {0x30, 0x02}}
	}
	for i := range n {
		in := store.CAIntermediate{KeyID: fmt.Sprintf("%02x", 0xa0+i), CertDER: []byte{0x30, byte(i)}, Slot: store.SlotRetired}
		if i == n-1 {
			in.Slot = store.SlotActive
			in.KeyRef = []byte("pkcs11:token=mesh;object=int\n")
		}
		if i == n-2 {
			in.TaintedAt = epoch()
		}
		if i == 0 && n > 2 {
			in.RevokedAt = epoch().Add(time.Hour)
		}
		s.Intermediates = append(s.Intermediates, in)
	}
	return s
}

func caEntry(what string) store.AuditEntry {
	return store.AuditEntry{Time: epoch(), Action: "ca.rotate-intermediate." + what, Outcome: store.OutcomeOK}
}

func caEvent(id string) store.Event {
	return store.Event{Kind: store.EventCARotated, IssuerKeyID: id}
}

// testCAState writes the CA's state by compare-and-set: the first write
// at version 0, every later one at the version read; a stale version or
// a malformed state writes nothing (no state, no event, no audit entry).
func testCAState(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openStore(t, open, dir)
	ctx := t.Context()
	if _, err := s.CAState(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("CAState of a new store = %v, want ErrNotFound", err)
	}
	if _, err := s.PutCAState(ctx, caState(1), 1, caEvent("a0"), caEntry("x")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("PutCAState at version 1 of a new store = %v, want ErrConflict", err)
	}
	v, err := s.PutCAState(ctx, caState(1), 0, caEvent("a0"), caEntry("issue"))
	if err != nil || v != 1 {
		t.Fatalf("first PutCAState = %d, %v; want 1", v, err)
	}
	three := caState(3)
	if v, err = s.PutCAState(ctx, three, 1, caEvent("a2"), caEntry("activate")); err != nil || v != 2 {
		t.Fatalf("second PutCAState = %d, %v; want 2", v, err)
	}
	bad := []struct {
		name string
		s    store.CAState
		prev int64
		want error
	}{
		{"stale version", caState(2), 1, store.ErrConflict},
		{"version 0 over a state", caState(2), 0, store.ErrConflict},
		{"two active", func() store.CAState { s := caState(2); s.Intermediates[0].Slot = store.SlotActive; return s }(), 2, nil},
		{"same key id twice", func() store.CAState { s := caState(2); s.Intermediates[0].KeyID = s.Intermediates[1].KeyID; return s }(), 2, nil},
		{"unknown slot", func() store.CAState { s := caState(2); s.Intermediates[0].Slot = "spare"; return s }(), 2, nil},
		{"no certificate", func() store.CAState { s := caState(2); s.Intermediates[0].CertDER = nil; return s }(), 2, nil},
		{"no trust domain", func() store.CAState { s := caState(2); s.TrustDomain = ""; return s }(), 2, nil},
		{"empty root", func() store.CAState { s := caState(2); s.Roots = append(s.Roots, nil); return s }(), 2, nil},
		{"same root twice", func() store.CAState { s := caState(2); s.Roots = append(s.Roots, s.Roots[0]); return s }(), 2, nil},
	}
	log := auditLog(t, s)
	events, err := s.Events(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range bad {
		_, err := s.PutCAState(ctx, tc.s, tc.prev, caEvent("a1"), caEntry("bad"))
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("PutCAState with %s = %v, want an error (%v)", tc.name, err, tc.want)
		}
	}
	if got := auditLog(t, s); len(got) != len(log) {
		t.Errorf("refused writes appended %d audit entries", len(got)-len(log))
	}
	if got, err := s.Events(ctx, 0, 0); err != nil || len(got) != len(events) {
		t.Errorf("refused writes appended events: %d, %v", len(got)-len(events), err)
	}
	if len(events) != 2 || events[1].Kind != store.EventCARotated || events[1].IssuerKeyID != "a2" || !events[1].Time.Equal(epoch()) {
		t.Errorf("events = %+v, want the two ca.rotated", events)
	}
	if len(log) != 2 || log[1].Action != "ca.rotate-intermediate.activate" {
		t.Errorf("audit log = %+v, want the two writes'", log)
	}
	s = reopen(t, open, dir, s)
	got, err := s.CAState(ctx)
	three.Version = 2
	if err != nil || !reflect.DeepEqual(got, three) {
		t.Fatalf("CAState after reopen = %+v, %v\nwant %+v", got, err, three)
	}
}

// testCAStateRace has many writers put the state at the version they all
// read: exactly one wins, the others get ErrConflict, and the stored
// state is the winner's.
func testCAStateRace(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	ctx := t.Context()
	if _, err := s.PutCAState(ctx, caState(1), 0, caEvent("a0"), caEntry("issue")); err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var (
		wg   sync.WaitGroup
		errs [writers]error
	)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := caState(2)
			st.Intermediates[0].KeyID = fmt.Sprintf("b%02d", i)
			_, errs[i] = s.PutCAState(ctx, st, 1, caEvent("a1"), caEntry("prepare"))
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both won", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrConflict):
			t.Fatalf("writer %d: %v, want ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer won")
	}
	got, err := s.CAState(ctx)
	if err != nil || got.Version != 2 || got.Intermediates[0].KeyID != fmt.Sprintf("b%02d", winner) {
		t.Fatalf("CAState = %+v, %v; want writer %d's at version 2", got, err, winner)
	}
	if log := auditLog(t, s); len(log) != 2 {
		t.Fatalf("%d audit entries, want 2 (the first write and the winner's)", len(log))
	}
}
