package ca_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/clocktest"
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
	agent, err := f.ca.Sign(ctx, ca.AgentRequest("opus", "ct1"), ca.WithGeneratedKey())
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

// signBeside signs crl.pem as another process beside f's CA would, with
// the CRL validity validity (`meshctl --crl-validity 3s ca crl`, a meshd
// started with a shorter setting), and returns the CRLs it wrote.
func signBeside(t *testing.T, f *fixture, validity time.Duration) []*x509.RevocationList {
	t.Helper()
	cfg := f.cfg
	cfg.CRLValidity = validity
	other, err := ca.Open(t.Context(), cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	crls, err := other.RebuildCRL(t.Context())
	if err != nil || len(crls) == 0 {
		t.Fatalf("RebuildCRL beside the refresher = %d CRLs, %v", len(crls), err)
	}
	return crls
}

// TestCRLRefreshBeforeServedNextUpdate: a CRL signed beside the refresher
// with a shorter validity than its own is re-signed before its own
// next-update, not a third of the refresher's validity after the CRL the
// refresher last signed, so crl.pem is never served expired.
func TestCRLRefreshBeforeServedNextUpdate(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	r := f.ca.NewCRLRefresher(nil)
	if _, err := f.ca.RebuildCRL(ctx); err != nil {
		t.Fatal(err)
	}
	short := signBeside(t, f, 3*time.Second)
	for step := 1; step <= 10; step++ {
		f.clock.Advance(time.Second)
		if _, err := r.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		for _, crl := range readCRLs(t, f.cfg.CRLPath()) {
			if !f.clock.Now().Before(crl.NextUpdate) {
				t.Fatalf("%ds after a CRL valid until %s was signed beside the refresher, crl.pem is served expired (next-update %s)",
					step, short[0].NextUpdate.Format(time.RFC3339), crl.NextUpdate.Format(time.RFC3339))
			}
		}
	}
	for _, crl := range readCRLs(t, f.cfg.CRLPath()) {
		if left := crl.NextUpdate.Sub(f.clock.Now()); left < ca.DefaultCRLValidity/2 {
			t.Errorf("the re-signed CRL has %s left; want the refresher's own validity (%s)", left, ca.DefaultCRLValidity)
		}
	}
}

// TestCRLRefresherRunSeesCRLSignedBeside: a running refresher, with no
// kick and no revocation, notices a CRL signed beside it with a 3s
// validity and re-signs it before that CRL's next-update. The clock is
// the injected one: the test learns that Run came round to waiting again
// from the clock, never from the wall clock.
func TestCRLRefresherRunSeesCRLSignedBeside(t *testing.T) {
	clk := clocktest.New(time.Now().UTC().Truncate(time.Second))
	f := newCA(t, caOptions{mod: func(c *ca.Config) { c.Now, c.After = clk.Now, clk.After }})
	ctx, cancel := context.WithCancel(t.Context())
	r := f.ca.NewCRLRefresher(nil)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	wait := clk.NextWait(t, 10*time.Second)
	short := signBeside(t, f, 3*time.Second)
	expires := short[0].NextUpdate
	for range 10 {
		if !clk.Now().Add(wait).Before(expires) {
			t.Fatalf("the refresher sleeps %s at %s while crl.pem, signed beside it, expires at %s",
				wait, clk.Now().Format(time.RFC3339), expires.Format(time.RFC3339))
		}
		clk.Advance(wait)
		wait = clk.NextWait(t, 10*time.Second) // Run has refreshed, or found nothing due
		crls := readCRLs(t, f.cfg.CRLPath())
		if len(crls) > 0 && crls[0].NextUpdate.After(expires) {
			return // re-signed with the refresher's own validity
		}
	}
	t.Fatalf("crl.pem, signed beside the refresher to expire at %s, was not re-signed", expires.Format(time.RFC3339))
}

// TestCRLDueConcurrent: refreshers' Due, read from many goroutines while
// CRLs are signed beside them and by them, each time sees either the
// refresher's own schedule or the short CRL's, never a torn or zero
// reading, and once the short CRL is written every goroutine sees it due.
func TestCRLDueConcurrent(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	r := f.ca.NewCRLRefresher(nil)
	if _, err := f.ca.RebuildCRL(ctx); err != nil {
		t.Fatal(err)
	}
	own := r.Due()
	if own <= 0 || own > ca.DefaultCRLValidity/3 {
		t.Fatalf("Due of a fresh CRL = %s, want within a third of %s", own, ca.DefaultCRLValidity)
	}
	const readers = 8
	var (
		wg      sync.WaitGroup
		written = make(chan struct{})
		bad     = make([]string, readers)
	)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-written:
					if d := r.Due(); d > 0 {
						bad[i] = fmt.Sprintf("after the 3s CRL was written, Due = %s", d)
					}
					return
				default:
				}
				if d := r.Due(); d != own && d > 0 {
					bad[i] = fmt.Sprintf("read %d: Due = %s, want %s (own schedule) or due now", n, d, own)
					return
				}
				if n >= 200 {
					<-written
				}
			}
		}()
	}
	// The refresher's own CA rebuilds (at the same instant, so on the same
	// schedule) while the readers read; then the short CRL is written.
	for range 3 {
		if _, err := f.ca.RebuildCRL(ctx); err != nil {
			t.Fatal(err)
		}
	}
	signBeside(t, f, 3*time.Second)
	close(written)
	wg.Wait()
	for i, b := range bad {
		if b != "" {
			t.Errorf("reader %d: %s", i, b)
		}
	}
}
