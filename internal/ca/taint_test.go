package ca_test

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/openssltest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// TestTaintAndRevoke walks SPIRE's forced re-keying: prepare, activate,
// taint the old intermediate (its leaves renew soon, spread over the
// window), then revoke it once no leaf of it is live, or with force;
// after that neither the mesh's verifier nor OpenSSL with every CRL
// checked accepts a chain through it.
func TestTaintAndRevoke(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	old := f.activeIntermediate(t)
	oldID := hex.EncodeToString(old.SubjectKeyId)
	l1, l2 := f.sign(t, ca.NodeRequest("ct1")), f.sign(t, ca.NodeRequest("ct2"))
	f.clock.Advance(time.Hour)
	if _, err := ca.PrepareIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	next, err := ca.ActivateIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	nextID := hex.EncodeToString(next.SubjectKeyId)
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	l3 := f.sign(t, ca.NodeRequest("ct3"))

	for _, tc := range []struct {
		name string
		run  func() error
		want error
		msg  string
	}{
		{"taint the active one", func() error { _, err := ca.TaintIntermediate(ctx, f.cfg, f.store, nextID); return err }, ca.ErrIntermediateSlot, "activate a new one first"},
		{"taint an unknown one", func() error { _, err := ca.TaintIntermediate(ctx, f.cfg, f.store, "abcd"); return err }, ca.ErrUnknownIntermediate, "meshctl ca status"},
		{"revoke before the taint", func() error { _, err := ca.RevokeIntermediate(ctx, f.cfg, f.store, oldID, true); return err }, ca.ErrIntermediateSlot, "taint it first"},
	} {
		before, _ := f.store.CAState(ctx)
		if err := tc.run(); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.name, err, tc.want, tc.msg)
		}
		if after, _ := f.store.CAState(ctx); after.Version != before.Version {
			t.Errorf("%s changed the state", tc.name)
		}
	}

	normal := func(is *ca.Issued) time.Time {
		return f.ca.RenewAt(hex.EncodeToString(is.Cert.AuthorityKeyId), is.Record.Serial, is.Cert.NotBefore, is.Cert.NotAfter)
	}
	l1Normal := normal(l1)
	taintedAt := f.clock.Now()
	if _, err := ca.TaintIntermediate(ctx, f.cfg, f.store, strings.ToUpper(oldID)); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.TaintIntermediate(ctx, f.cfg, f.store, oldID); !errors.Is(err, ca.ErrIntermediateSlot) {
		t.Fatalf("second taint: %v", err)
	}
	if got := f.ca.TaintedIssuers(); len(got) != 0 {
		t.Fatalf("TaintedIssuers before the reload: %v", got)
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.ca.TaintedIssuers(); len(got) != 1 || !got[oldID].Equal(taintedAt) {
		t.Fatalf("TaintedIssuers = %v, want %s at %s", got, oldID, taintedAt)
	}
	window := f.ca.Config().TaintWindow
	if window != ca.DefaultTaintWindow {
		t.Fatalf("TaintWindow %s, want the default %s", window, ca.DefaultTaintWindow)
	}
	for _, is := range []*ca.Issued{l1, l2} {
		at := normal(is)
		if at.Before(taintedAt) || !at.Before(taintedAt.Add(window)) {
			t.Errorf("a leaf of the tainted intermediate renews at %s, want within %s of the taint at %s", at, window, taintedAt)
		}
		if !at.Equal(normal(is)) {
			t.Error("RenewAt is not deterministic")
		}
	}
	if at := normal(l1); !at.Before(l1Normal) {
		t.Errorf("RenewAt %s is not before the normal point %s", at, l1Normal)
	}
	if at, want := normal(l3), l3.Cert.NotBefore.Add(time.Minute).Add(f.ca.Config().RenewAfter); !at.Equal(want) {
		t.Errorf("a leaf of the new intermediate renews at %s, want %s", at, want)
	}
	// Spread: many serials do not all land on one instant.
	seen := map[time.Time]bool{}
	for i := range 50 {
		seen[f.ca.RenewAt(oldID, hex.EncodeToString([]byte{byte(i), 7}), l1.Cert.NotBefore, l1.Cert.NotAfter)] = true
	}
	if len(seen) < 40 {
		t.Errorf("50 serials renew at %d distinct times", len(seen))
	}
	events, err := f.store.Events(ctx, 0, 0)
	if err != nil || events[len(events)-1].Kind != store.EventCARotated || events[len(events)-1].IssuerKeyID != oldID {
		t.Fatalf("last event = %+v, %v; want ca.rotated of %s", events[len(events)-1], err, oldID)
	}

	// Before the revocation the mesh's verifier accepts l2 with the old
	// intermediate, and OpenSSL with every CRL.
	root, err := pemfile.ReadCert(f.rootPath())
	if err != nil {
		t.Fatal(err)
	}
	verify := func(is *ca.Issued, inter *x509.Certificate) error {
		_, err := trust.NewLocalCA(f.ca.TrustDomain(), root, f.ca.Intermediates()).Verify(ctx, []*x509.Certificate{is.Cert, inter}, f.clock.Now())
		return err
	}
	if err := verify(l2, old); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	oldCRLs, err := os.ReadFile(f.cfg.CRLPath())
	if err != nil {
		t.Fatal(err)
	}

	_, err = ca.RevokeIntermediate(ctx, f.cfg, f.store, oldID, false)
	if !errors.Is(err, ca.ErrLiveLeaves) || !strings.Contains(err.Error(), "2 live") {
		t.Fatalf("revoke with two live leaves: %v", err)
	}
	// ct2 renews onto the new intermediate: its old leaf, still valid, is
	// superseded, in use by no one, and no longer holds the revocation
	// back; ct1's is.
	f.clock.Advance(time.Minute)
	f.sign(t, ca.NodeRequest("ct2"))
	if _, err = ca.RevokeIntermediate(ctx, f.cfg, f.store, oldID, false); !errors.Is(err, ca.ErrLiveLeaves) || !strings.Contains(err.Error(), "1 live") {
		t.Fatalf("revoke with one live leaf: %v", err)
	}
	if ints, err := f.ca.IntermediateStatus(ctx); err != nil {
		t.Fatal(err)
	} else {
		for _, in := range ints {
			if in.KeyID == oldID && (in.LiveCerts != 1 || in.Superseded != 1) {
				t.Fatalf("the tainted intermediate counts %d live and %d superseded leaves, want 1 and 1", in.LiveCerts, in.Superseded)
			}
		}
	}
	rev, err := ca.RevokeIntermediate(ctx, f.cfg, f.store, oldID, true)
	if err != nil {
		t.Fatal(err)
	}
	if rev.LiveCerts != 1 || rev.RootCRL == nil || len(rev.RootCRL.RevokedCertificateEntries) != 1 ||
		rev.RootCRL.RevokedCertificateEntries[0].SerialNumber.Cmp(old.SerialNumber) != 0 {
		t.Fatalf("RevokeIntermediate = %+v", rev)
	}
	if err := rev.RootCRL.CheckSignatureFrom(root); err != nil {
		t.Fatalf("root CRL: %v", err)
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.ca.Intermediates() {
		if bytes.Equal(c.Raw, old.Raw) {
			t.Fatal("the revoked intermediate is still among the CA's intermediates")
		}
	}
	if bundle, err := os.ReadFile(f.cfg.BundlePath()); err != nil || bytes.Contains(bundle, pemfile.EncodeCerts(old)) {
		t.Fatalf("bundle.pem still holds the revoked intermediate (%v)", err)
	}
	if err := verify(l2, old); !errors.Is(err, trust.ErrUnknownAuthority) {
		t.Fatalf("after the revocation the mesh's verifier says %v to a chain through it", err)
	}
	if err := verify(l3, next); err != nil {
		t.Fatalf("after the revocation a leaf of the new intermediate: %v", err)
	}
	ints, err := f.ca.IntermediateStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, in := range ints {
		states[in.KeyID] = in.State
	}
	if states[oldID] != ca.StateRevoked || states[nextID] != ca.SlotActive {
		t.Fatalf("states = %v", states)
	}

	// OpenSSL checking every CRL of the chain (the old intermediate's last
	// CRL, and crl.pem with the root's) refuses l2 for its intermediate,
	// and accepts the new intermediate's leaf.
	openssltest.Bin(t)
	dir := t.TempDir()
	newCRLs, err := os.ReadFile(f.cfg.CRLPath())
	if err != nil {
		t.Fatal(err)
	}
	crls := writeFile(t, dir, "crls.pem", append(oldCRLs, newCRLs...))
	at := strconv.FormatInt(f.clock.Now().Unix(), 10) // openssl's now is the CA's
	oldPath := writeFile(t, dir, "old.pem", pemfile.EncodeCerts(old))
	out, err := openssltest.Verify(t, f.rootPath(), []string{oldPath}, leafFile(t, l2), "-attime", at, "-crl_check_all", "-CRLfile", crls)
	if err == nil || !strings.Contains(out, "certificate revoked") {
		t.Fatalf("openssl -crl_check_all on a leaf of the revoked intermediate: %v\n%s", err, out)
	}
	openssltest.RequireVerifies(t, f.rootPath(), []string{f.intPath()}, leafFile(t, l3), "-attime", at, "-crl_check_all", "-CRLfile", f.cfg.CRLPath())
}

// TestTaintReloadRace reads the taint state (RenewAt, TaintedIssuers,
// Intermediates) from many goroutines while others reload the CA as the
// state changes under them: under -race, and each reader sees either the
// state before the taint or after it, never a mix.
func TestTaintReloadRace(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	old := f.activeIntermediate(t)
	oldID := hex.EncodeToString(old.SubjectKeyId)
	leaf := f.sign(t, ca.NodeRequest("ct1"))
	f.rotate(t)
	normal := f.ca.RenewAt(oldID, leaf.Record.Serial, leaf.Cert.NotBefore, leaf.Cert.NotAfter)
	taintedAt := f.clock.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				at := f.ca.RenewAt(oldID, leaf.Record.Serial, leaf.Cert.NotBefore, leaf.Cert.NotAfter)
				tainted := f.ca.TaintedIssuers()
				if !at.Equal(normal) && (at.Before(taintedAt) || !at.Before(taintedAt.Add(ca.DefaultTaintWindow))) {
					errs <- fmt.Errorf("RenewAt %s is neither the normal point nor within the taint's window", at)
					return
				}
				if at2, ok := tainted[oldID]; ok && !at2.Equal(taintedAt) {
					errs <- fmt.Errorf("TaintedIssuers says %s, want %s", at2, taintedAt)
					return
				}
				if n := len(f.ca.Intermediates()); n != 2 {
					errs <- fmt.Errorf("%d intermediates, want 2", n)
					return
				}
			}
		}()
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				if err := f.ca.Reload(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	if _, err := ca.TaintIntermediate(ctx, f.cfg, f.store, oldID); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := f.ca.TaintedIssuers(); !got[oldID].Equal(taintedAt) {
		t.Fatalf("TaintedIssuers after the race: %v", got)
	}
}

// TestRenewedInTheSameSecond: a leaf renewed onto the new intermediate
// within the second of its first issuance (one NotAfter, as NotAfter has
// whole seconds) supersedes it, so the old intermediate holds no leaf in
// use and revokes without force.
func TestRenewedInTheSameSecond(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	oldID := hex.EncodeToString(f.activeIntermediate(t).SubjectKeyId)
	first := f.sign(t, ca.NodeRequest("ct9"))
	f.rotate(t)
	second := f.sign(t, ca.NodeRequest("ct9"))
	if !first.Cert.NotAfter.Equal(second.Cert.NotAfter) {
		t.Fatalf("NotAfter %s and %s: the clock moved", first.Cert.NotAfter, second.Cert.NotAfter)
	}
	if _, err := ca.TaintIntermediate(ctx, f.cfg, f.store, oldID); err != nil {
		t.Fatal(err)
	}
	ints, err := f.ca.IntermediateStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range ints {
		if in.KeyID == oldID && (in.LiveCerts != 0 || in.Superseded != 1) {
			t.Fatalf("the old intermediate counts %d live and %d superseded leaves, want 0 and 1", in.LiveCerts, in.Superseded)
		}
	}
	if _, err := ca.RevokeIntermediate(ctx, f.cfg, f.store, oldID, false); err != nil {
		t.Fatalf("revoke without force: %v", err)
	}
}

// rotate prepares and activates a new intermediate and reloads the CA.
func (f *fixture) rotate(t testing.TB) {
	t.Helper()
	ctx := t.Context()
	if _, err := ca.PrepareIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.ActivateIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
}
