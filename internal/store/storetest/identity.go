package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// revokeIdentity revokes the identity name at at with reason.
func revokeIdentity(t *testing.T, s store.Store, name string, reason int, at time.Time) []store.Revocation {
	t.Helper()
	_, revs, err := s.RevokeIdentity(t.Context(), store.IdentityRevocation{Name: name, Reason: reason, RevokedAt: at},
		store.AuditEntry{Time: at, Action: "identity.revoke", Identity: name, Outcome: store.OutcomeOK})
	if err != nil {
		t.Fatalf("RevokeIdentity(%q): %v", name, err)
	}
	return revs
}

// serials returns the serials of revs.
func revokedSerials(revs []store.Revocation) map[string]bool {
	out := make(map[string]bool)
	for _, r := range revs {
		out[r.Serial] = true
	}
	return out
}

// testRevokeIdentity checks that revoking an identity revokes its live
// certificates (a node's, its agents' too) and refuses every later one
// until it is reinstated, and that each step is in the feed.
func testRevokeIdentity(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	node := newCert(1, "ct200.mesh", at)
	agent := newCert(2, "opus@ct200", at)
	other := newCert(3, "opus@ct201", at)       // same agent name, another node
	lookalike := newCert(4, "xopus@ct2000", at) // a node id that only starts alike
	expired := newCert(5, "sage@ct200", at)
	expired.NotAfter = at.Add(time.Minute)
	mustRecord(t, s, node, agent, other, lookalike, expired)

	revs := revokeIdentity(t, s, "ct200.mesh", 0, at.Add(time.Hour))
	if got, want := revokedSerials(revs), map[string]bool{node.Serial: true, agent.Serial: true}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("revoking node ct200 revoked %v, want the node's and its live agent's: %v", got, want)
	}
	if _, _, err := s.RevokeIdentity(t.Context(), store.IdentityRevocation{Name: "ct200.mesh"}, store.AuditEntry{Action: "identity.revoke"}); !errors.Is(err, store.ErrExists) {
		t.Errorf("second RevokeIdentity = %v, want ErrExists", err)
	}

	refused := []struct {
		name string
		c    store.Cert
		want error
	}{
		{"the node again", newCert(10, "ct200.mesh", at.Add(2*time.Hour)), store.ErrIdentityRevoked},
		{"an agent of the node", newCert(11, "new@ct200", at.Add(2*time.Hour)), store.ErrIdentityRevoked},
	}
	for _, tt := range refused {
		if err := s.RecordCert(t.Context(), tt.c, issueEntry(tt.c)); !errors.Is(err, tt.want) {
			t.Errorf("RecordCert(%s) = %v, want %v", tt.name, err, tt.want)
		}
		if _, err := s.Cert(t.Context(), tt.c.Serial); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("refused %s was recorded: %v", tt.name, err)
		}
	}
	// Names that are not the node's are unaffected.
	mustRecord(t, s, newCert(12, "opus@ct201", at.Add(2*time.Hour)), newCert(13, "x@ct2000", at.Add(2*time.Hour)))

	ids, err := s.RevokedIdentities(t.Context())
	if err != nil || len(ids) != 1 || ids[0].Name != "ct200.mesh" || !ids[0].RevokedAt.Equal(at.Add(time.Hour)) {
		t.Errorf("RevokedIdentities = %+v, %v; want ct200.mesh at %s", ids, err, fmtTime(at.Add(time.Hour)))
	}

	if err := s.ReinstateIdentity(t.Context(), "opus@ct200", at, store.AuditEntry{Action: "identity.reinstate"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("reinstating an identity that is not revoked = %v, want ErrNotFound", err)
	}
	if err := s.ReinstateIdentity(t.Context(), "ct200.mesh", at.Add(3*time.Hour), store.AuditEntry{Action: "identity.reinstate", Identity: "ct200.mesh"}); err != nil {
		t.Fatalf("ReinstateIdentity: %v", err)
	}
	mustRecord(t, s, newCert(14, "ct200.mesh", at.Add(4*time.Hour)), newCert(15, "opus@ct200", at.Add(4*time.Hour)))
	// The certificates revoked with the identity stay revoked.
	all, err := s.Revocations(t.Context(), 0)
	if err != nil || len(all) != 2 {
		t.Errorf("Revocations after reinstating = %+v, %v; want the two revoked with the node", all, err)
	}

	evs := allEvents(t, s)
	var kinds []store.EventKind
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	want := []store.EventKind{store.EventCertRevoked, store.EventCertRevoked, store.EventIdentityRevoked, store.EventIdentityReinstated}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("feed kinds = %v, want %v", kinds, want)
	}
	if err := store.VerifyAuditChain(auditLog(t, s)); err != nil {
		t.Errorf("audit chain: %v", err)
	}
}

// testKeyCompromise checks that a keyCompromise revocation blocks the key,
// and that another reason does not.
func testKeyCompromise(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	stolen, superseded := newCert(1, "opus@ct111", at), newCert(2, "sage@ct111", at)
	mustRecord(t, s, stolen, superseded)
	mustRevoke(t, s, stolen, store.ReasonKeyCompromise, at.Add(time.Hour))
	mustRevoke(t, s, superseded, 4, at.Add(time.Hour))

	again := newCert(3, "other@ct112", at.Add(2*time.Hour))
	again.KeyHash = stolen.KeyHash
	if err := s.RecordCert(t.Context(), again, issueEntry(again)); !errors.Is(err, store.ErrKeyBlocked) {
		t.Errorf("RecordCert with the compromised key = %v, want ErrKeyBlocked", err)
	}
	reused := newCert(4, "sage@ct111", at.Add(2*time.Hour))
	reused.KeyHash = superseded.KeyHash
	mustRecord(t, s, reused) // superseded, not compromised: the key may renew
	keys, err := s.BlockedKeys(t.Context())
	if err != nil || len(keys) != 1 || keys[0] != stolen.KeyHash {
		t.Errorf("BlockedKeys = %v, %v; want [%s]", keys, err, stolen.KeyHash)
	}
}

// testAuthorizerRevoked checks that a certificate asked for by the holder
// of a revoked certificate is refused.
func testAuthorizerRevoked(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	parent := newCert(1, "ct111.mesh", at)
	mustRecord(t, s, parent)
	child := newCert(2, "ct111.mesh", at.Add(time.Minute))
	child.AuthorizedBy = parent.Serial
	mustRecord(t, s, child)
	mustRevoke(t, s, parent, 4, at.Add(time.Hour))
	late := newCert(3, "opus@ct111", at.Add(2*time.Hour))
	late.AuthorizedBy = parent.Serial
	if err := s.RecordCert(t.Context(), late, issueEntry(late)); !errors.Is(err, store.ErrAuthorizerRevoked) {
		t.Errorf("RecordCert authorized by a revoked certificate = %v, want ErrAuthorizerRevoked", err)
	}
	got, err := s.Cert(t.Context(), child.Serial)
	if err != nil || got.AuthorizedBy != parent.Serial {
		t.Errorf("Cert(child).AuthorizedBy = %q, %v; want %q", got.AuthorizedBy, err, parent.Serial)
	}
}

// testRevokeIdentityRace records certificates of one identity from many
// goroutines while it is revoked: once RevokeIdentity returns, every
// certificate of the identity that was recorded is revoked, and none is
// recorded after.
func testRevokeIdentityRace(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	const writers, each = 16, 20
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		recorded []string
		start    = make(chan struct{})
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range each {
				c := newCert(1000+w*each+i, "opus@ct111", at)
				err := s.RecordCert(t.Context(), c, issueEntry(c))
				if err == nil {
					mu.Lock()
					recorded = append(recorded, c.Serial)
					mu.Unlock()
				} else if !errors.Is(err, store.ErrIdentityRevoked) {
					t.Errorf("RecordCert: %v", err)
				}
			}
		}()
	}
	close(start)
	revokeIdentity(t, s, "opus@ct111", 0, at.Add(time.Hour))
	wg.Wait()
	revs, err := s.Revocations(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	revoked := revokedSerials(revs)
	for _, serial := range recorded {
		if !revoked[serial] {
			t.Errorf("certificate %s of opus@ct111 was recorded but is not revoked", serial)
		}
	}
}

// testIssuanceBlock checks that IssuanceBlock names a revoked identity,
// or the revoked node of an agent, and a blocked key, and nothing else.
func testIssuanceBlock(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	leaked := newCert(1, "leak@ct300", at)
	mustRecord(t, s, leaked)
	mustRevoke(t, s, leaked, store.ReasonKeyCompromise, at.Add(time.Second))
	for _, name := range []string{"gone@ct301", "ct302.mesh"} {
		if _, _, err := s.RevokeIdentity(t.Context(), store.IdentityRevocation{Name: name, Reason: 1, RevokedAt: at}, store.AuditEntry{Action: "identity.revoke"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		cn, keyHash, revoked string
		blocked              bool
	}{
		{"ok@ct301", "k1", "", false},
		{"gone@ct301", "k1", "gone@ct301", false},
		{"any@ct302", "k1", "ct302.mesh", false},
		{"ct302.mesh", "k1", "ct302.mesh", false},
		{"ok@ct301", leaked.KeyHash, "", true},
		{"gone@ct301", leaked.KeyHash, "gone@ct301", true},
		{"ct303.mesh", "", "", false},
	} {
		revoked, blocked, err := s.IssuanceBlock(t.Context(), tc.cn, tc.keyHash)
		if err != nil {
			t.Fatal(err)
		}
		if revoked != tc.revoked || blocked != tc.blocked {
			t.Errorf("IssuanceBlock(%s, %.8s) = %q, %v; want %q, %v", tc.cn, tc.keyHash, revoked, blocked, tc.revoked, tc.blocked)
		}
	}
}

// testLiveAgents checks that a node's live agent identities are listed
// once each, without expired or revoked certificates or other nodes'.
func testLiveAgents(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	at := epoch()
	opus1, opus2 := newCert(1, "opus@ct200", at), newCert(2, "opus@ct200", at) // a renewal: one identity
	sage := newCert(3, "sage@ct200", at)
	old := newCert(4, "old@ct200", at)
	old.NotAfter = at.Add(time.Minute)
	gone := newCert(5, "gone@ct200", at)
	other := newCert(6, "opus@ct2000", at)
	node := newCert(7, "ct200.mesh", at)
	// One live certificate is enough, whichever it is: an older one when
	// the newest is revoked, a newer one when the oldest has expired.
	back1, back2 := newCert(8, "back@ct200", at), newCert(9, "back@ct200", at.Add(time.Second))
	late1, late2 := newCert(10, "late@ct200", at), newCert(11, "late@ct200", at.Add(time.Second))
	late1.NotAfter = at.Add(time.Minute)
	mustRecord(t, s, opus1, opus2, sage, old, gone, other, node, back1, back2, late1, late2)
	mustRevoke(t, s, gone, 4, at.Add(time.Second))
	mustRevoke(t, s, back2, 4, at.Add(time.Second))
	got, err := s.LiveAgents(t.Context(), "ct200", at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"back@ct200", "late@ct200", "opus@ct200", "sage@ct200"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("LiveAgents(ct200) = %v, want %v", got, want)
	}
	// HasLiveCert agrees with LiveAgents on each name, and holds for a
	// node's own certificate too.
	for _, cn := range []string{"back@ct200", "late@ct200", "opus@ct200", "sage@ct200", "old@ct200", "gone@ct200", "none@ct200", "ct200.mesh"} {
		live, err := s.HasLiveCert(t.Context(), cn, at.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if want := slices.Contains(got, cn) || cn == "ct200.mesh"; live != want {
			t.Errorf("HasLiveCert(%s) = %v, want %v", cn, live, want)
		}
	}
}
