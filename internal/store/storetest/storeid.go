package storetest

import (
	"testing"

	"github.com/meshtrust/meshtrust/internal/store"
)

// testStoreID: a store has one id, 32 lowercase hex digits, that every
// opening of its state reads (a replica, a reopening, a write between) and
// that no other store has.
func testStoreID(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openStore(t, open, dir)
	id := s.ID()
	if !store.ValidID(id) {
		t.Fatalf("ID() = %q, want 32 lowercase hex digits", id)
	}
	if got := s.ID(); got != id {
		t.Fatalf("ID() = %q, then %q", id, got)
	}
	replica := openStore(t, open, dir)
	if got := replica.ID(); got != id {
		t.Errorf("a replica's ID() = %q, want the store's %q", got, id)
	}
	mustRecord(t, s, newCert(1, "a", epoch()))
	s = reopen(t, open, dir, s)
	if got := s.ID(); got != id {
		t.Errorf("ID() after reopening = %q, want %q", got, id)
	}
	other := openStore(t, open, t.TempDir())
	if got := other.ID(); got == id || !store.ValidID(got) {
		t.Errorf("another store's ID() = %q, want 32 lowercase hex digits other than %q", got, id)
	}
}
