package agent_test

import (
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/meshapi"
)

// rescheduling is a Source that records the RenewBy meshd asked for.
type rescheduling struct {
	*credentials.Holder
	by chan time.Time
}

func (s *rescheduling) RenewBy(at time.Time) { s.by <- at }

// TestRenewAfterHeader: a heartbeat answer with Meshtrust-Renew-After is
// passed on to a Rescheduler Source, clamped into the certificate's life;
// answers without it pass nothing (MCP Mesh's registry, meshd while no
// intermediate is tainted).
func TestRenewAfterHeader(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	clk := newFakeClock()
	creds := p.agent("opus", "ct111")
	leaf := creds.Certificate.Leaf
	at := leaf.NotBefore.Add(time.Hour).UTC()
	f.script(nil, []reply{{status: 200, header: map[string]string{meshapi.HeaderRenewAfter: at.Format(time.RFC3339)}},
		{status: 200, header: map[string]string{meshapi.HeaderRenewAfter: "2999-01-01T00:00:00Z"}}})
	src := &rescheduling{Holder: holder(t, creds), by: make(chan time.Time, 10)}
	r := start(t, f.url, src, clk, nil)
	r.registered(t)
	select {
	case got := <-src.by:
		t.Fatalf("RenewBy(%s) after an answer without the header", got)
	default:
	}
	clk.Step(t, wait) // HEAD with the header
	select {
	case got := <-src.by:
		if !got.Equal(at) {
			t.Fatalf("RenewBy(%s), want %s", got, at)
		}
	case <-time.After(wait):
		t.Fatal("no RenewBy after the header")
	}
	clk.Step(t, wait) // a time past the certificate's expiry
	select {
	case got := <-src.by:
		if !got.Equal(leaf.NotAfter) {
			t.Fatalf("RenewBy(%s), want it clamped to NotAfter %s", got, leaf.NotAfter)
		}
	case <-time.After(wait):
		t.Fatal("no RenewBy after the second header")
	}
}

// TestRenewAfterRotator: a Source that can only Rotate is rotated once
// the time meshd named has come, once per generation of credentials.
func TestRenewAfterRotator(t *testing.T) {
	p := newPKI(t)
	f := newFakeRegistry(t, p)
	clk := newFakeClock()
	old := p.agent("opus", "ct111")
	src := &rotating{Holder: holder(t, old), asked: make(chan struct{}, 10)}
	src.rotate = func() error { return src.Set(p.agent("opus", "ct111")) }
	// Due already: the agent's clock is past the header's time, which is
	// within the certificate's life.
	clk.Set(old.Certificate.Leaf.NotBefore.Add(time.Hour))
	due := old.Certificate.Leaf.NotBefore.Add(time.Minute).UTC().Format(time.RFC3339)
	f.script(nil, []reply{{status: 200, header: map[string]string{meshapi.HeaderRenewAfter: due}}})
	r := start(t, f.url, src, clk, nil)
	r.registered(t)
	clk.Step(t, wait) // HEAD with the header: rotate
	select {
	case <-src.asked:
	case <-time.After(wait):
		t.Fatal("the agent did not rotate its Source once meshd's renewal time had come")
	}
	r.registered(t) // the fresh credentials, registered
	clk.Step(t, wait)
	clk.Step(t, wait)
	if n := len(src.asked); n != 0 {
		t.Fatalf("%d more rotations after the fresh credentials", n)
	}
}
