package ca_test

import (
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
)

// TestCRLNeverExpiresWhileRunning: a process that keeps a CRLRefresher
// re-signs the CRL well before its next-update, with no revocation to
// prompt it, so crl.pem is valid at every moment of a month.
func TestCRLNeverExpiresWhileRunning(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	r := f.ca.NewCRLRefresher(nil)
	if did, err := r.Refresh(ctx); err != nil || did {
		t.Fatalf("Refresh of a fresh CRL = %v, %v; want nothing to do", did, err)
	}
	rebuilds := 0
	for step := 0; step < 30*24; step++ {
		f.clock.Advance(time.Hour)
		did, err := r.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if did {
			rebuilds++
		}
		for _, crl := range readCRLs(t, f.cfg.CRLPath()) {
			if !f.clock.Now().Before(crl.NextUpdate) {
				t.Fatalf("after %d hours crl.pem expired at %s", step+1, crl.NextUpdate)
			}
			if left := crl.NextUpdate.Sub(f.clock.Now()); left < ca.DefaultCRLValidity/2 {
				t.Fatalf("after %d hours the CRL has only %s left; want it re-signed well before next-update", step+1, left)
			}
		}
	}
	// 30 days at a third of 7 days each: about 13 rebuilds, not one per hour.
	if rebuilds < 10 || rebuilds > 15 {
		t.Errorf("%d rebuilds in 30 days, want one every %s", rebuilds, ca.DefaultCRLValidity/3)
	}
	if age := f.clock.Now().Sub(f.ca.CRLThisUpdate()); age > ca.DefaultCRLValidity/3+time.Hour {
		t.Errorf("CRL age %s", age)
	}
}

// TestCRLRefreshAfterForeignRevocation: a revocation the store holds but
// crl.pem does not list (written by a process that did not rebuild) is
// listed after a kick; a kick with nothing new rebuilds nothing.
func TestCRLRefreshAfterForeignRevocation(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	agent, err := f.ca.IssueAgent(ctx, "opus", "ct1")
	if err != nil {
		t.Fatal(err)
	}
	r := f.ca.NewCRLRefresher(nil)
	if _, _, err := f.store.Revoke(ctx, store.Revocation{Serial: agent.Record.Serial, Reason: 4}, store.AuditEntry{Action: "cert.revoke"}); err != nil {
		t.Fatal(err)
	}
	did, err := r.Refresh(ctx)
	if err != nil || !did {
		t.Fatalf("Refresh with an unlisted revocation = %v, %v; want a rebuild", did, err)
	}
	requireGoRevoked(t, f, agent.Cert)
	if did, err := r.Refresh(ctx); err != nil || did {
		t.Errorf("second Refresh = %v, %v; want nothing to do", did, err)
	}
}
