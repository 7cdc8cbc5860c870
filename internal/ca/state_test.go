package ca_test

import (
	"encoding/hex"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
)

// TestIntermediates lists the intermediates by slot through a rotation,
// newest first, and List says when each leaf is due to renew.
func TestIntermediates(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	first := hex.EncodeToString(f.activeIntermediate(t).SubjectKeyId)
	f.clock.Advance(time.Hour)
	prepared, err := ca.PrepareIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	second := hex.EncodeToString(prepared.SubjectKeyId)
	slots := func() []string {
		ints, err := ca.Intermediates(f.cfg)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, in := range ints {
			out = append(out, in.State+" "+in.KeyID)
		}
		return out
	}
	if got := slots(); len(got) != 2 || got[0] != "prepared "+second || got[1] != "active "+first {
		t.Fatalf("after prepare: %q", got)
	}
	if _, err := ca.ActivateIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	if got := slots(); len(got) != 2 || got[0] != "active "+second || got[1] != "retired "+first {
		t.Fatalf("after activate: %q", got)
	}

	leaf := f.sign(t, ca.NodeRequest("ct1"))
	all, err := f.ca.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range all {
		if l.Serial != leaf.Record.Serial {
			continue
		}
		lifetime := l.NotAfter.Sub(l.NotBefore)
		if l.RenewAt.Before(l.NotBefore.Add(lifetime/2)) || !l.RenewAt.Before(l.NotAfter) {
			t.Fatalf("a leaf of %s to %s renews at %s", l.NotBefore, l.NotAfter, l.RenewAt)
		}
		return
	}
	t.Fatal("List does not hold the leaf")
}
