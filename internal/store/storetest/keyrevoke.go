package storetest

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// sharedKeyPEM returns a certificate in PEM form for a new key, and that
// key's KeyHash: the key several records below share.
func sharedKeyPEM(t *testing.T) ([]byte, string) {
	t.Helper()
	cert := pkitest.NewRoot(t, "test root").Leaf(t, "legacy@ct111", pkitest.Validity(epoch().Add(-time.Hour), epoch().Add(90*24*time.Hour)))
	return pkitest.CertPEM(cert), trust.KeyHash(cert.RawSubjectPublicKeyInfo)
}

// testKeyCompromiseSameKey checks that revoking one certificate for
// keyCompromise revokes, in the same transaction, every other unexpired,
// unrevoked certificate of its key (a same-key renewal, another identity's,
// one recorded without its key's hash), each with keyCompromise, its own
// event and audit entry, and leaves the rest alone; and that revoking an
// identity for keyCompromise does the same for each of its keys.
func testKeyCompromiseSameKey(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	legacyPEM, key := sharedKeyPEM(t)
	withKey := func(c store.Cert, h string) store.Cert { c.KeyHash = h; return c }

	stolen := withKey(newCert(1, "opus@ct111", at), key)
	renewal := withKey(newCert(2, "opus@ct111", at.Add(time.Minute)), key)
	other := withKey(newCert(3, "sage@ct112", at.Add(2*time.Minute)), key)
	legacy := withKey(newCert(4, "legacy@ct111", at.Add(3*time.Minute)), "")
	legacy.PEM = legacyPEM
	expired := withKey(newCert(5, "opus@ct111", at.Add(-100*24*time.Hour)), key)
	superseded := withKey(newCert(6, "opus@ct111", at.Add(4*time.Minute)), key)
	unrelated := newCert(7, "opus@ct111", at.Add(5*time.Minute))
	unparsable := withKey(newCert(8, "old@ct111", at.Add(6*time.Minute)), "") // a record whose PEM holds no key
	mustRecord(t, s, stolen, renewal, other, legacy, expired, superseded, unrelated, unparsable)
	mustRevoke(t, s, superseded, 4, at.Add(30*time.Minute))
	auditBefore := len(auditLog(t, s))

	r := newRevocation(stolen, store.ReasonKeyCompromise, at.Add(time.Hour))
	got, sameKey, err := s.Revoke(t.Context(), r, revokeEntry(r))
	if err != nil {
		t.Fatalf("Revoke(%s, keyCompromise): %v", stolen.Serial, err)
	}
	if got.Serial != stolen.Serial || got.KeyHash != key {
		t.Errorf("Revoke returned %+v, want serial %s blocking key %s", got, stolen.Serial, key)
	}
	var gotSerials []string
	for _, rv := range sameKey {
		gotSerials = append(gotSerials, rv.Serial)
		if rv.Reason != store.ReasonKeyCompromise || rv.KeyHash != key || !rv.RevokedAt.Equal(r.RevokedAt) || rv.Seq <= got.Seq {
			t.Errorf("same-key revocation %+v: want reason keyCompromise, key %s, revoked at %s, Seq after %d", rv, key, fmtTime(r.RevokedAt), got.Seq)
		}
	}
	want := []string{renewal.Serial, other.Serial, legacy.Serial}
	if !slices.Equal(gotSerials, want) {
		t.Errorf("Revoke(keyCompromise) also revoked %v, want the key's other live certificates, oldest first: %v", gotSerials, want)
	}

	all, err := s.Revocations(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	listed := revokedSerials(all)
	for _, c := range []store.Cert{stolen, renewal, other, legacy, superseded} {
		if !listed[c.Serial] {
			t.Errorf("Revocations lacks %s (%s), a certificate of the compromised key", c.Serial, c.CommonName)
		}
	}
	for _, c := range []store.Cert{expired, unrelated, unparsable} {
		if listed[c.Serial] {
			t.Errorf("Revocations lists %s (%s), which is expired or of another key", c.Serial, c.CommonName)
		}
	}
	for _, rv := range all {
		if rv.Serial == superseded.Serial && rv.Reason != 4 {
			t.Errorf("the certificate revoked earlier as superseded was revoked again: %+v", rv)
		}
	}

	evs := allEvents(t, s)
	var evSerials []string
	for _, e := range evs {
		if e.Kind == store.EventCertRevoked && e.KeyHash == key {
			evSerials = append(evSerials, e.Serial)
		}
	}
	if want := []string{stolen.Serial, renewal.Serial, other.Serial, legacy.Serial}; !slices.Equal(evSerials, want) {
		t.Errorf("keyCompromise events name %v, want one for each certificate of the key: %v", evSerials, want)
	}
	log := auditLog(t, s)
	if got := len(log) - auditBefore; got != 4 {
		t.Errorf("the keyCompromise revocation appended %d audit entries, want 4 (the request's and one per certificate it reached)", got)
	}
	if err := store.VerifyAuditChain(log); err != nil {
		t.Errorf("audit chain: %v", err)
	}

	// Another reason revokes one certificate only.
	k2 := trust.KeyHash([]byte("second key"))
	first, second := withKey(newCert(10, "a@ct120", at), k2), withKey(newCert(11, "a@ct120", at.Add(time.Minute)), k2)
	mustRecord(t, s, first, second)
	r = newRevocation(first, 4, at.Add(time.Hour))
	if _, sameKey, err := s.Revoke(t.Context(), r, revokeEntry(r)); err != nil || len(sameKey) != 0 {
		t.Errorf("Revoke(superseded) = %+v, %v; want the one certificate only", sameKey, err)
	}

	// An identity revoked for keyCompromise takes its keys' other
	// certificates with it, each once.
	k3 := trust.KeyHash([]byte("third key"))
	mine, mineAgain, theirs := withKey(newCert(20, "b@ct121", at), k3), withKey(newCert(21, "b@ct121", at.Add(time.Minute)), k3), withKey(newCert(22, "c@ct122", at), k3)
	mustRecord(t, s, mine, mineAgain, theirs)
	revs := revokeIdentity(t, s, "b@ct121", store.ReasonKeyCompromise, at.Add(time.Hour))
	if got, want := revokedSerials(revs), revokedSerials([]store.Revocation{{Serial: mine.Serial}, {Serial: mineAgain.Serial}, {Serial: theirs.Serial}}); len(revs) != 3 || !maps.Equal(got, want) {
		t.Errorf("RevokeIdentity(keyCompromise) revoked %+v, want %s, %s and %s once each", revs, mine.Serial, mineAgain.Serial, theirs.Serial)
	}
}

// allEvents returns the whole change feed of s.
func allEvents(t *testing.T, s store.Store) []store.Event {
	t.Helper()
	evs, err := s.Events(t.Context(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}
