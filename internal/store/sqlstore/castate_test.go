package sqlstore

import (
	"bytes"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// TestCAStateWithoutRoots: a state document written before the roots were
// recorded in it (no "roots" key) reads as a state with none, and the next
// compare-and-set write adds them.
func TestCAStateWithoutRoots(t *testing.T) {
	s, path := openTest(t)
	ctx := t.Context()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	const legacy = `{"trust_domain":"mesh.example","intermediates":[{"key_id":"a0","cert_der":"MAA=","slot":"active"}]}`
	if _, err := rawDB(t, path).Exec(`INSERT INTO ca_state (id, version, document, updated_at) VALUES (1, 7, ?, 0)`, legacy); err != nil {
		t.Fatal(err)
	}
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	got, err := s.CAState(ctx)
	if err != nil || got.Version != 7 || got.Roots != nil || got.InSlot(store.SlotActive) != "a0" {
		t.Fatalf("CAState of a document without roots = %+v, %v; want version 7, a0 active, no roots", got, err)
	}
	got.Roots = [][]byte{{0x30, 0x01}}
	e := store.AuditEntry{Time: time.Unix(1_700_000_000, 0), Action: "ca.state.roots", Outcome: store.OutcomeOK}
	if _, err := s.PutCAState(ctx, got, 7, store.Event{Kind: store.EventCARotated, IssuerKeyID: "a0"}, e); err != nil {
		t.Fatal(err)
	}
	if got, err = s.CAState(ctx); err != nil || got.Version != 8 || len(got.Roots) != 1 || !bytes.Equal(got.Roots[0], []byte{0x30, 0x01}) {
		t.Fatalf("CAState after recording the root = %+v, %v", got, err)
	}
}
