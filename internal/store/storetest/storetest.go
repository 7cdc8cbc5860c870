// Package storetest checks that an implementation of store.Store keeps
// the promises the interface makes. Each implementation runs the same suite from its
// own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, dir string) store.Store {
//			s, err := sqlstore.OpenSQLite(t.Context(), filepath.Join(dir, "meshtrust.db"))
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// An Opener opens a store over the state kept under dir, a directory the
// suite made with t.TempDir. A dir the Opener has not seen before must give
// an empty store; opening a dir again after the store on it was closed must
// give a store with everything the closed one wrote, and opening a dir
// while a store on it is open must give another store on the same state
// (a replica). An implementation
// whose state is not in files (PostgreSQL) maps each dir to its own
// database or schema. The Opener fails t if it cannot open the store.
type Opener func(t *testing.T, dir string) store.Store

// Run runs the conformance suite against the stores open returns, each
// check in its own subtest. Run closes every store it opens.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		run  func(t *testing.T, open Opener)
	}{
		{"RecordCertRoundTrip", testRecordCertRoundTrip},
		{"CertNotFound", testCertNotFound},
		{"DuplicateSerial", testDuplicateSerial},
		{"CertsOrder", testCertsOrder},
		{"Revoke", testRevoke},
		{"RevokeTwice", testRevokeTwice},
		{"RevokeUnknown", testRevokeUnknown},
		{"CRLNumbers", testCRLNumbers},
		{"AuditChain", testAuditChain},
		{"ConcurrentWriters", testConcurrentWriters},
		{"CanceledContext", testCanceledContext},
		{"Closed", testClosed},

		{"EntityRoundTrip", testEntityRoundTrip},
		{"EntityExists", testEntityExists},
		{"EntityReregister", testEntityReregister},
		{"RegistryNotFound", testRegistryNotFound},
		{"AgentRoundTrip", testAgentRoundTrip},
		{"PutAgentsUpsert", testPutAgentsUpsert},
		{"PutAgentsBatch", testPutAgentsBatch},
		{"DeleteAgent", testDeleteAgent},
		{"RegistryConcurrent", testRegistryConcurrent},
		{"RegistryCanceledContext", testRegistryCanceledContext},
		{"RegistryClosed", testRegistryClosed},

		{"TokenRoundTrip", testTokenRoundTrip},
		{"TokenRefusals", testTokenRefusals},
		{"TokenExists", testTokenExists},
		{"TokenConcurrentUse", testTokenConcurrentUse},
		{"RevocationEvents", testRevocationEvents},
		{"RevocationEventsPage", testRevocationEventsPage},
		{"EntityRevokedTwice", testEntityRevokedTwice},
		{"FailedRevocationNoEvent", testFailedRevocationNoEvent},
		{"EnrollCanceledContext", testEnrollCanceledContext},
		{"EnrollClosed", testEnrollClosed},
		{"RevokeIdentity", testRevokeIdentity},
		{"KeyCompromise", testKeyCompromise},
		{"KeyCompromiseSameKey", testKeyCompromiseSameKey},
		{"AuthorizerRevoked", testAuthorizerRevoked},
		{"RevokeIdentityRace", testRevokeIdentityRace},
		{"LiveAgents", testLiveAgents},
		{"IssuanceBlock", testIssuanceBlock},

		{"ReplicaWriters", testReplicaWriters},
		{"ReplicaTokens", testReplicaTokens},
		{"ExclusiveCert", testExclusiveCert},
		{"AgentClaim", testAgentClaim},
		{"AgentOwnership", testAgentOwnership},

		{"CAState", testCAState},
		{"CAStateRace", testCAStateRace},
		{"StoreID", testStoreID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, open) })
	}
}

// openStore opens the store on dir and closes it when t ends, unless the
// test closed it first.
func openStore(t *testing.T, open Opener, dir string) store.Store {
	t.Helper()
	s := open(t, dir)
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// reopen closes s and opens the store on dir again.
func reopen(t *testing.T, open Opener, dir string, s store.Store) store.Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openStore(t, open, dir)
}

// epoch is the time the suite's records are made around. It has
// nanoseconds so that a store that rounds times fails.
func epoch() time.Time {
	return time.Date(2026, time.March, 1, 12, 0, 0, 123456789, time.UTC)
}

// newCert returns a certificate record, distinct for each n, issued to cn
// at issuedAt.
func newCert(n int, cn string, issuedAt time.Time) store.Cert {
	serial := fmt.Sprintf("%x", 0x7a000+n)
	fp := sha256.Sum256([]byte(serial))
	return store.Cert{
		Serial:      serial,
		CommonName:  cn,
		Kind:        "agent",
		SANs:        []string{"DNS:" + serial + ".mesh", "URI:spiffe://mesh/agent/" + cn},
		NotBefore:   issuedAt.Add(-time.Minute),
		NotAfter:    issuedAt.Add(90 * 24 * time.Hour),
		Fingerprint: hex.EncodeToString(fp[:]),
		IssuerKeyID: "1c0ffee1",
		PEM:         []byte("-----BEGIN CERTIFICATE-----\n" + serial + "\n-----END CERTIFICATE-----\n"),
		IssuedAt:    issuedAt,
		KeyHash:     trust.KeyHash([]byte("key of " + serial)),
	}
}

// issueEntry returns the audit entry recorded with c.
func issueEntry(c store.Cert) store.AuditEntry {
	return store.AuditEntry{Time: c.IssuedAt, Action: "cert.issue", Identity: c.CommonName, Outcome: store.OutcomeOK, Detail: "serial " + c.Serial}
}

func mustRecord(t *testing.T, s store.Store, cs ...store.Cert) {
	t.Helper()
	for _, c := range cs {
		if err := s.RecordCert(t.Context(), c, issueEntry(c)); err != nil {
			t.Fatalf("RecordCert(%s): %v", c.Serial, err)
		}
	}
}

// certDiff describes how got differs from want, or returns "" if they are
// the same record. Times compare as instants, whatever their location.
func certDiff(want, got store.Cert) string {
	return recordDiff(want, got, func(c *store.Cert) []timeRef {
		return []timeRef{{"NotBefore", &c.NotBefore}, {"NotAfter", &c.NotAfter}, {"IssuedAt", &c.IssuedAt}}
	}, func(c *store.Cert) {
		if len(c.SANs) == 0 {
			c.SANs = nil
		}
	})
}

// checkCerts fails t unless got holds want's records in want's order.
func checkCerts(t *testing.T, what string, got, want []store.Cert) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s returned %d certificates %v, want %d %v", what, len(got), serials(got), len(want), serials(want))
	}
	for i := range want {
		if d := certDiff(want[i], got[i]); d != "" {
			t.Errorf("%s[%d] (serial %s): %s", what, i, want[i].Serial, d)
		}
	}
}

func serials(cs []store.Cert) []string {
	var s []string
	for _, c := range cs {
		s = append(s, c.Serial)
	}
	return s
}

// auditLog returns s's audit log after checking that its chain is intact.
func auditLog(t *testing.T, s store.Store) []store.AuditEntry {
	t.Helper()
	log, err := s.AuditLog(t.Context())
	if err != nil {
		t.Fatalf("AuditLog: %v", err)
	}
	if err := store.VerifyAuditChain(log); err != nil {
		t.Fatalf("VerifyAuditChain: %v", err)
	}
	return log
}

// checkEntry fails t unless got carries want's caller-supplied fields.
func checkEntry(t *testing.T, got, want store.AuditEntry) {
	t.Helper()
	if !got.Time.Equal(want.Time) || got.Action != want.Action || got.Identity != want.Identity ||
		got.Outcome != want.Outcome || got.Detail != want.Detail {
		t.Errorf("audit entry %d = {%s %q %q %q %q}, want {%s %q %q %q %q}", got.Seq,
			got.Time.Format(time.RFC3339Nano), got.Action, got.Identity, got.Outcome, got.Detail,
			want.Time.Format(time.RFC3339Nano), want.Action, want.Identity, want.Outcome, want.Detail)
	}
}

func testRecordCertRoundTrip(t *testing.T, open Opener) {
	cet := time.FixedZone("CET", 3600)
	full := newCert(1, "opus@ct111", epoch())
	full.Kind = "node"
	full.SANs = []string{"DNS:ct111.mesh", "IP:10.0.0.7", "IP:fd00::7", "URI:spiffe://mesh/node/ct111", "DNS:xn--bcher-kva.mesh"}
	full.NotBefore = time.Date(2026, 2, 28, 23, 59, 59, 999999999, cet)
	full.NotAfter = time.Date(2262, 1, 1, 0, 0, 0, 1, time.UTC)
	full.PEM = append([]byte("-----BEGIN CERTIFICATE-----\n"), 0x00, 0xff, 0xfe, '\n')
	full.IssuedAt = time.Date(2026, 3, 1, 13, 0, 0, 7, cet)
	bare := newCert(2, "alice@external", epoch().Add(time.Second))
	bare.Kind = "external"
	bare.SANs = nil
	want := []store.Cert{full, bare}

	dir := t.TempDir()
	s := openStore(t, open, dir)
	mustRecord(t, s, want...)
	for _, phase := range []string{"before reopen", "after reopen"} {
		for _, c := range want {
			got, err := s.Cert(t.Context(), c.Serial)
			if err != nil {
				t.Fatalf("%s: Cert(%s): %v", phase, c.Serial, err)
			}
			if d := certDiff(c, got); d != "" {
				t.Errorf("%s: Cert(%s): %s", phase, c.Serial, d)
			}
			byName, err := s.CertsByName(t.Context(), c.CommonName)
			if err != nil {
				t.Fatalf("%s: CertsByName(%q): %v", phase, c.CommonName, err)
			}
			checkCerts(t, phase+": CertsByName", byName, []store.Cert{c})
		}
		all, err := s.Certs(t.Context())
		if err != nil {
			t.Fatalf("%s: Certs: %v", phase, err)
		}
		checkCerts(t, phase+": Certs", all, want)
		log := auditLog(t, s)
		if len(log) != len(want) {
			t.Fatalf("%s: audit log has %d entries, want %d", phase, len(log), len(want))
		}
		for i, c := range want {
			checkEntry(t, log[i], issueEntry(c))
		}
		s = reopen(t, open, dir, s)
	}
}

func testCertNotFound(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	mustRecord(t, s, newCert(1, "a", epoch()))
	if _, err := s.Cert(t.Context(), "ffff"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Cert(unknown serial) = %v, want an error wrapping store.ErrNotFound", err)
	}
	if got, err := s.CertsByName(t.Context(), "nobody"); err != nil || len(got) != 0 {
		t.Errorf("CertsByName(unknown name) = %v, %v; want no certificates and no error", serials(got), err)
	}
}

// A dupCase is a record a write must refuse, its key being taken.
type dupCase[R any] struct {
	name string
	dup  R
}

// sameKey returns the records a write must refuse once orig is stored:
// orig itself, and other, which is named name and shares orig's key.
func sameKey[R any](orig R, name string, other R) []dupCase[R] {
	return []dupCase[R]{{"same record", orig}, {name, other}}
}

func testDuplicateSerial(t *testing.T, open Opener) {
	orig := newCert(1, "a", epoch())
	other := newCert(2, "b", epoch().Add(time.Hour))
	other.Serial = orig.Serial
	for _, tt := range sameKey(orig, "other record, same serial", other) {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, open, t.TempDir())
			mustRecord(t, s, orig)
			a := store.AuditEntry{Time: epoch(), Action: "cert.issue", Identity: tt.dup.CommonName, Outcome: store.OutcomeOK, Detail: "duplicate"}
			if err := s.RecordCert(t.Context(), tt.dup, a); !errors.Is(err, store.ErrExists) {
				t.Fatalf("RecordCert(duplicate serial) = %v, want an error wrapping store.ErrExists", err)
			}
			all, err := s.Certs(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			checkCerts(t, "Certs after the duplicate", all, []store.Cert{orig})
			// The refused write's audit entry must not be appended.
			if log := auditLog(t, s); len(log) != 1 {
				t.Errorf("audit log has %d entries after a refused RecordCert, want 1", len(log))
			}
		})
	}
}

func testCertsOrder(t *testing.T, open Opener) {
	t0 := epoch()
	// Recorded in this order; IssuedAt deliberately not monotonic, and
	// a2 and a4 share an instant.
	a1 := newCert(1, "a", t0.Add(3*time.Second))
	b1 := newCert(2, "b", t0.Add(2*time.Second))
	a2 := newCert(3, "a", t0.Add(1*time.Second))
	a3 := newCert(4, "a", t0.Add(5*time.Second))
	a4 := newCert(5, "a", t0.Add(1*time.Second))
	s := openStore(t, open, t.TempDir())
	mustRecord(t, s, a1, b1, a2, a3, a4)

	tests := []struct {
		name string
		get  func() ([]store.Cert, error)
		want []store.Cert
	}{
		{`CertsByName("a")`, func() ([]store.Cert, error) { return s.CertsByName(t.Context(), "a") }, []store.Cert{a2, a4, a1, a3}},
		{`CertsByName("b")`, func() ([]store.Cert, error) { return s.CertsByName(t.Context(), "b") }, []store.Cert{b1}},
		{`CertsByName("nobody")`, func() ([]store.Cert, error) { return s.CertsByName(t.Context(), "nobody") }, nil},
		{"Certs", func() ([]store.Cert, error) { return s.Certs(t.Context()) }, []store.Cert{a2, a4, b1, a1, a3}},
	}
	for _, tt := range tests {
		got, err := tt.get()
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		checkCerts(t, tt.name, got, tt.want)
	}
}

// revokeEntry returns the audit entry recorded with r.
func revokeEntry(r store.Revocation) store.AuditEntry {
	return store.AuditEntry{Time: r.RevokedAt, Action: "cert.revoke", Identity: r.CommonName, Outcome: store.OutcomeOK, Detail: "serial " + r.Serial}
}

func newRevocation(c store.Cert, reason int, at time.Time) store.Revocation {
	return store.Revocation{Serial: c.Serial, CommonName: c.CommonName, IssuerKeyID: c.IssuerKeyID, Reason: reason, RevokedAt: at}
}

// revocationDiff describes how got differs from want, or returns "" if
// they are the same record.
func revocationDiff(want, got store.Revocation) string {
	return recordDiff(want, got, func(r *store.Revocation) []timeRef { return []timeRef{{"RevokedAt", &r.RevokedAt}} }, nil)
}

func testRevoke(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openStore(t, open, dir)
	var cs []store.Cert
	for i := range 4 {
		cs = append(cs, newCert(i, fmt.Sprintf("agent%d@ct111", i), epoch().Add(time.Duration(i)*time.Second)))
	}
	mustRecord(t, s, cs...)

	// Revoke three of the four, not in recording order.
	var revoked []store.Revocation
	for i, c := range []store.Cert{cs[2], cs[0], cs[3]} {
		in := newRevocation(c, []int{1, 4, 0}[i], epoch().Add(time.Hour+time.Duration(i)*time.Nanosecond))
		got, _, err := s.Revoke(t.Context(), in, revokeEntry(in))
		if err != nil {
			t.Fatalf("Revoke(%s): %v", c.Serial, err)
		}
		if len(revoked) > 0 && got.Seq <= revoked[len(revoked)-1].Seq {
			t.Errorf("Revoke(%s) assigned Seq %d after Seq %d; want it to increase", c.Serial, got.Seq, revoked[len(revoked)-1].Seq)
		}
		in.Seq = got.Seq
		if in.Reason == store.ReasonKeyCompromise {
			in.KeyHash = c.KeyHash // the store blocks the key and says so
		}
		if d := revocationDiff(in, got); d != "" {
			t.Errorf("Revoke(%s) returned %s", c.Serial, d)
		}
		revoked = append(revoked, got)
	}

	s = reopen(t, open, dir, s)
	tests := []struct {
		after int64
		want  []store.Revocation
	}{
		{-1, revoked},
		{0, revoked},
		{revoked[0].Seq, revoked[1:]},
		{revoked[1].Seq, revoked[2:]},
		{revoked[2].Seq, nil},
		{revoked[2].Seq + 100, nil},
	}
	for _, tt := range tests {
		got, err := s.Revocations(t.Context(), tt.after)
		if err != nil {
			t.Fatalf("Revocations(%d): %v", tt.after, err)
		}
		if len(got) != len(tt.want) {
			t.Errorf("Revocations(%d) returned %d revocations, want %d", tt.after, len(got), len(tt.want))
			continue
		}
		for i := range got {
			if d := revocationDiff(tt.want[i], got[i]); d != "" {
				t.Errorf("Revocations(%d)[%d]: %s", tt.after, i, d)
			}
		}
	}

	log := auditLog(t, s)
	if len(log) != len(cs)+len(revoked) {
		t.Fatalf("audit log has %d entries, want %d", len(log), len(cs)+len(revoked))
	}
	for i, r := range revoked {
		checkEntry(t, log[len(cs)+i], revokeEntry(r))
	}
}

func testRevokeTwice(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newCert(1, "a", epoch())
	mustRecord(t, s, c)
	r := newRevocation(c, 1, epoch().Add(time.Hour))
	first, _, err := s.Revoke(t.Context(), r, revokeEntry(r))
	if err != nil {
		t.Fatalf("first Revoke: %v", err)
	}
	again := newRevocation(c, 4, epoch().Add(2*time.Hour))
	if _, _, err := s.Revoke(t.Context(), again, revokeEntry(again)); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second Revoke = %v, want an error wrapping store.ErrExists", err)
	}
	got, err := s.Revocations(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || revocationDiff(first, got[0]) != "" {
		t.Errorf("Revocations after a refused second Revoke = %+v, want only %+v", got, first)
	}
	if log := auditLog(t, s); len(log) != 2 {
		t.Errorf("audit log has %d entries after a refused Revoke, want 2", len(log))
	}
}

func testRevokeUnknown(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newCert(1, "a", epoch())
	r := newRevocation(c, 1, epoch())
	if _, _, err := s.Revoke(t.Context(), r, revokeEntry(r)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Revoke(unrecorded serial) = %v, want an error wrapping store.ErrNotFound", err)
	}
	if got, err := s.Revocations(t.Context(), 0); err != nil || len(got) != 0 {
		t.Errorf("Revocations after a refused Revoke = %+v, %v; want none", got, err)
	}
	if log := auditLog(t, s); len(log) != 0 {
		t.Errorf("audit log has %d entries after a refused Revoke, want 0", len(log))
	}
}

func testCRLNumbers(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openStore(t, open, dir)
	steps := []struct {
		issuer string // "" reopens the store
		want   int64
	}{
		{"aa01", 1},
		{"aa01", 2},
		{"bb02", 1},
		{"aa01", 3},
		{"bb02", 2},
		{"", 0},
		{"aa01", 4},
		{"bb02", 3},
		{"cc03", 1},
	}
	for i, st := range steps {
		if st.issuer == "" {
			s = reopen(t, open, dir, s)
			continue
		}
		got, err := s.NextCRLNumber(t.Context(), st.issuer)
		if err != nil {
			t.Fatalf("step %d: NextCRLNumber(%s): %v", i, st.issuer, err)
		}
		if got != st.want {
			t.Errorf("step %d: NextCRLNumber(%s) = %d, want %d", i, st.issuer, got, st.want)
		}
	}
}

func testAuditChain(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openStore(t, open, dir)
	at := func(i int) time.Time { return epoch().Add(time.Duration(i) * time.Millisecond) }
	c := newCert(1, "opus@ct111", at(1))
	r := newRevocation(c, 1, at(2))

	var want []store.AuditEntry
	appendEntry := func(e store.AuditEntry) {
		t.Helper()
		want = append(want, e)
		// The store assigns Seq, PrevHash and Hash whatever the caller says.
		e.Seq, e.PrevHash, e.Hash = 42, "bogus", "bogus"
		if err := s.Append(t.Context(), e); err != nil {
			t.Fatalf("Append(%s): %v", e.Action, err)
		}
	}
	appendEntry(store.AuditEntry{Time: at(0), Action: "ca.init", Identity: "root", Outcome: store.OutcomeOK, Detail: "key ceremony"})
	mustRecord(t, s, c)
	want = append(want, issueEntry(c))
	if _, _, err := s.Revoke(t.Context(), r, revokeEntry(r)); err != nil {
		t.Fatal(err)
	}
	want = append(want, revokeEntry(r))
	appendEntry(store.AuditEntry{Time: at(3), Action: "cert.issue", Identity: "mallory@ct111", Outcome: store.OutcomeRefused, Detail: "not on the allow list"})
	s = reopen(t, open, dir, s)
	// The chain continues across a reopen.
	appendEntry(store.AuditEntry{Time: at(4).In(time.FixedZone("X", -7*3600)), Action: "crl.publish", Outcome: store.OutcomeError, Detail: "disk full: \x00 \u00e9 \n"})
	appendEntry(store.AuditEntry{Time: at(5), Action: "ca.rotate", Outcome: store.OutcomeOK})

	log := auditLog(t, s)
	if len(log) != len(want) {
		t.Fatalf("audit log has %d entries, want %d", len(log), len(want))
	}
	for i := range want {
		checkEntry(t, log[i], want[i])
	}
}

func testConcurrentWriters(t *testing.T, open Opener) {
	const writers, perWriter, crls = 32, 50, 50
	s := openStore(t, open, t.TempDir())

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		acked []store.Cert
	)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				c := newCert(w*perWriter+i, fmt.Sprintf("agent%d@ct%d", i, w), epoch().Add(time.Duration(i)*time.Second))
				if err := s.RecordCert(t.Context(), c, issueEntry(c)); err != nil {
					t.Errorf("RecordCert(%s): %v", c.Serial, err)
					continue
				}
				mu.Lock()
				acked = append(acked, c)
				mu.Unlock()
			}
		})
	}
	// CRL numbers drawn while the writers run still count up by one.
	var numbers []int64
	wg.Go(func() {
		for range crls {
			n, err := s.NextCRLNumber(t.Context(), "aa01")
			if err != nil {
				t.Errorf("NextCRLNumber: %v", err)
				return
			}
			numbers = append(numbers, n)
		}
	})
	wg.Wait()

	for i, n := range numbers {
		if n != int64(i+1) {
			t.Fatalf("NextCRLNumber returned %v under concurrent writes, want 1 to %d in order", numbers, crls)
		}
	}
	if len(acked) != writers*perWriter {
		t.Fatalf("%d of %d writes were acknowledged", len(acked), writers*perWriter)
	}
	for _, c := range acked {
		got, err := s.Cert(t.Context(), c.Serial)
		if err != nil {
			t.Fatalf("Cert(%s) of an acknowledged write: %v", c.Serial, err)
		}
		if d := certDiff(c, got); d != "" {
			t.Errorf("Cert(%s): %s", c.Serial, d)
		}
	}
	all, err := s.Certs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(acked) {
		t.Errorf("Certs returned %d certificates, want %d", len(all), len(acked))
	}
	// One audit entry per certificate, each for its own certificate.
	log := auditLog(t, s)
	var details, wantDetails []string
	for _, e := range log {
		details = append(details, e.Detail)
	}
	for _, c := range acked {
		wantDetails = append(wantDetails, issueEntry(c).Detail)
	}
	slices.Sort(details)
	slices.Sort(wantDetails)
	if !slices.Equal(details, wantDetails) {
		t.Errorf("audit log has %d entries that do not match the %d acknowledged writes one to one", len(log), len(acked))
	}
}

func testCanceledContext(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	c := newCert(1, "a", epoch())
	if err := s.RecordCert(ctx, c, issueEntry(c)); !errors.Is(err, context.Canceled) {
		t.Errorf("RecordCert with a canceled context = %v, want context.Canceled", err)
	}
	if err := s.Append(ctx, issueEntry(c)); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a canceled context = %v, want context.Canceled", err)
	}
	if _, err := s.Cert(t.Context(), c.Serial); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Cert after a canceled RecordCert = %v, want store.ErrNotFound", err)
	}
	if log := auditLog(t, s); len(log) != 0 {
		t.Errorf("audit log has %d entries after canceled writes, want 0", len(log))
	}
}

// namedCall is one store call a test makes in a state where it must fail.
type namedCall struct {
	name string
	call func() error
}

// checkCalls fails t unless every call fails with an error wrapping want;
// how says in what state they were made ("after Close").
func checkCalls(t *testing.T, how string, want error, calls []namedCall) {
	t.Helper()
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, want) {
			t.Errorf("%s %s = %v, want an error wrapping %v", c.name, how, err, want)
		}
	}
}

func testClosed(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newCert(1, "a", epoch())
	mustRecord(t, s, c)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := t.Context()
	r := newRevocation(c, 1, epoch())
	calls := []namedCall{
		{"RecordCert", func() error { return s.RecordCert(ctx, newCert(2, "b", epoch()), issueEntry(c)) }},
		{"Cert", func() error { _, err := s.Cert(ctx, c.Serial); return err }},
		{"CertsByName", func() error { _, err := s.CertsByName(ctx, c.CommonName); return err }},
		{"Certs", func() error { _, err := s.Certs(ctx); return err }},
		{"Revoke", func() error { _, _, err := s.Revoke(ctx, r, revokeEntry(r)); return err }},
		{"Revocations", func() error { _, err := s.Revocations(ctx, 0); return err }},
		{"NextCRLNumber", func() error { _, err := s.NextCRLNumber(ctx, "aa01"); return err }},
		{"Append", func() error { return s.Append(ctx, issueEntry(c)) }},
		{"AuditLog", func() error { _, err := s.AuditLog(ctx); return err }},
		{"CAState", func() error { _, err := s.CAState(ctx); return err }},
		{"PutCAState", func() error { _, err := s.PutCAState(ctx, caState(1), 0, caEvent("a0"), caEntry("issue")); return err }},
		{"Close", s.Close},
	}
	checkCalls(t, "after Close", store.ErrClosed, calls)
}
