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

// The checks below open one directory several times at once: several
// stores on one state, as replicas of meshd are on one PostgreSQL (or two
// processes on one SQLite file). What one store checks in a write must
// hold against the writes of the others.

// openReplicas opens dir n times.
func openReplicas(t *testing.T, open Opener, dir string, n int) []store.Store {
	t.Helper()
	var out []store.Store
	for range n {
		out = append(out, openStore(t, open, dir))
	}
	return out
}

// testReplicaWriters has writers on three stores of one state record
// certificates (some with one serial drawn twice), revoke them, take CRL
// numbers and append audit entries at once; the serials stay unique, the
// CRL numbers distinct and growing, the audit chain unbroken, and the
// feed holds each revocation once.
func testReplicaWriters(t *testing.T, open Opener) {
	const replicas, writers, each = 3, 4, 6
	rs := openReplicas(t, open, t.TempDir(), replicas)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		won     = map[string]int{}
		numbers []int64
	)
	for r, s := range rs {
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					// Every replica draws the same serials: one wins each.
					c := newCert(w*each+i, fmt.Sprintf("agent%d@ct111", w), epoch().Add(time.Duration(r)*time.Second))
					err := s.RecordCert(t.Context(), c, issueEntry(c))
					switch {
					case errors.Is(err, store.ErrExists):
					case err != nil:
						t.Errorf("replica %d: RecordCert(%s): %v", r, c.Serial, err)
					default:
						mu.Lock()
						won[c.Serial]++
						mu.Unlock()
						if _, _, err := s.Revoke(t.Context(), newRevocation(c, 4, c.IssuedAt), revokeEntry(newRevocation(c, 4, c.IssuedAt))); err != nil {
							t.Errorf("replica %d: Revoke(%s): %v", r, c.Serial, err)
						}
					}
					n, err := s.NextCRLNumber(t.Context(), "1c0ffee1")
					if err != nil {
						t.Errorf("replica %d: NextCRLNumber: %v", r, err)
						continue
					}
					mu.Lock()
					numbers = append(numbers, n)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if len(won) != writers*each {
		t.Errorf("%d serials recorded, want %d", len(won), writers*each)
	}
	for serial, n := range won {
		if n != 1 {
			t.Errorf("serial %s recorded %d times across replicas", serial, n)
		}
	}
	slices.Sort(numbers)
	for i, n := range numbers {
		if n != int64(i+1) {
			t.Fatalf("CRL numbers across replicas are %v, want 1 to %d each once", numbers, len(numbers))
		}
	}
	for r, s := range rs {
		log := auditLog(t, s)
		if err := store.VerifyAuditChain(log); err != nil {
			t.Errorf("replica %d reads a broken chain: %v", r, err)
		}
		if want := 2 * len(won); len(log) != want {
			t.Errorf("replica %d reads %d audit entries, want %d (one issue and one revocation per serial)", r, len(log), want)
		}
		evs, err := s.Events(t.Context(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != len(won) {
			t.Errorf("replica %d reads %d events, want %d", r, len(evs), len(won))
		}
	}
}

// testReplicaTokens has callers on three stores of one state spend the
// same join tokens: each enrolls its node once.
func testReplicaTokens(t *testing.T, open Opener) {
	const tokens, callers = 4, 8
	rs := openReplicas(t, open, t.TempDir(), 3)
	var toks []store.JoinToken
	for i := range tokens {
		toks = append(toks, newToken(i, fmt.Sprintf("ct%d", 300+i), epoch()))
	}
	mustPutToken(t, rs[0], toks...)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins = map[string]int{}
	)
	for _, s := range rs {
		for range callers {
			for _, tok := range toks {
				wg.Go(func() {
					_, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, epoch(), enrollEntry(tok.NodeID, epoch()))
					switch {
					case errors.Is(err, store.ErrTokenUsed):
					case err != nil:
						t.Errorf("UseToken(%s): %v", tok.NodeID, err)
					default:
						mu.Lock()
						wins[tok.NodeID]++
						mu.Unlock()
					}
				})
			}
		}
	}
	wg.Wait()
	for _, tok := range toks {
		if wins[tok.NodeID] != 1 {
			t.Errorf("the token for %s enrolled it %d times across replicas, want once", tok.NodeID, wins[tok.NodeID])
		}
	}
}

// testExclusiveCert checks Cert.Exclusive: refused with ErrLiveCert while
// the name holds an unexpired, unrevoked certificate, recorded once it
// does not; and among exclusive records raced from three stores of one
// state, one wins.
func testExclusiveCert(t *testing.T, open Opener) {
	rs := openReplicas(t, open, t.TempDir(), 3)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []store.Cert
	)
	for r, s := range rs {
		for i := range 4 {
			wg.Go(func() {
				c := newCert(r*4+i, "ct400.mesh", epoch())
				c.Kind, c.Exclusive = "node", true
				err := s.RecordCert(t.Context(), c, issueEntry(c))
				switch {
				case errors.Is(err, store.ErrLiveCert):
				case err != nil:
					t.Errorf("RecordCert(%s): %v", c.Serial, err)
				default:
					mu.Lock()
					wins = append(wins, c)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d exclusive certificates for one node recorded across replicas, want 1", len(wins))
	}
	// Not exclusive: recorded beside the live one (a renewal).
	renewal := newCert(100, "ct400.mesh", epoch().Add(time.Minute))
	mustRecord(t, rs[1], renewal)
	// Once both are revoked, an exclusive one is recorded again.
	for _, c := range []store.Cert{wins[0], renewal} {
		if _, _, err := rs[2].Revoke(t.Context(), newRevocation(c, 4, epoch()), revokeEntry(newRevocation(c, 4, epoch()))); err != nil {
			t.Fatal(err)
		}
	}
	again := newCert(101, "ct400.mesh", epoch().Add(2*time.Minute))
	again.Exclusive = true
	if err := rs[0].RecordCert(t.Context(), again, issueEntry(again)); err != nil {
		t.Fatalf("exclusive RecordCert after the live certificates were revoked: %v", err)
	}
	// An expired certificate does not count either.
	later := newCert(102, "ct401.mesh", epoch())
	later.NotAfter = epoch().Add(time.Second)
	mustRecord(t, rs[0], later)
	next := newCert(103, "ct401.mesh", epoch().Add(time.Hour))
	next.Exclusive = true
	if err := rs[1].RecordCert(t.Context(), next, issueEntry(next)); err != nil {
		t.Fatalf("exclusive RecordCert after the name's certificate expired: %v", err)
	}
}

// testAgentClaim checks that PutAgentAudited is a conditional claim: one
// owner wins an agent id claimed from three stores of one state by
// different owners, the losers write nothing (no record, no audit entry),
// and the winner's further claims and an unowned record's claim succeed.
func testAgentClaim(t *testing.T, open Opener) {
	rs := openReplicas(t, open, t.TempDir(), 3)
	base := newAgent(1, epoch())
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
	)
	for r, s := range rs {
		for i := range 3 {
			wg.Go(func() {
				ag := base
				ag.Owner = fmt.Sprintf("claimer%d@ct%d", i, 100+r)
				ag.Version = 1
				a := store.AuditEntry{Time: epoch(), Action: "agent.claim", Identity: ag.ID, Outcome: store.OutcomeOK, Detail: ag.Owner}
				err := s.PutAgentAudited(t.Context(), ag, a)
				switch {
				case errors.Is(err, store.ErrAgentOwned):
				case err != nil:
					t.Errorf("PutAgentAudited(%s): %v", ag.Owner, err)
				default:
					mu.Lock()
					wins = append(wins, ag.Owner)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("agent id %s granted to %v across replicas, want exactly one owner", base.ID, wins)
	}
	got, err := rs[2].Agents(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Owner != wins[0] {
		t.Fatalf("the stored agents are %+v, want the one of %s", got, wins[0])
	}
	if log := auditLog(t, rs[0]); len(log) != 1 || log[0].Detail != wins[0] {
		t.Errorf("audit log %+v, want the winning claim alone", log)
	}
	// The owner claims again (a new source binding, say): allowed.
	again := got[0]
	again.Version++
	if err := rs[1].PutAgentAudited(t.Context(), again, store.AuditEntry{Time: epoch(), Action: "agent.claim", Identity: again.ID, Outcome: store.OutcomeOK}); err != nil {
		t.Errorf("the owner's own claim: %v", err)
	}
	// Another entity, or another trust source, is another owner too.
	for _, change := range []func(*store.Agent){
		func(a *store.Agent) { a.Entity = "other-corp" },
		func(a *store.Agent) { a.Source = "filestore" },
	} {
		other := again
		change(&other)
		other.Version++
		if err := rs[0].PutAgentAudited(t.Context(), other, store.AuditEntry{Time: epoch(), Action: "agent.claim", Identity: other.ID, Outcome: store.OutcomeOK}); !errors.Is(err, store.ErrAgentOwned) {
			t.Errorf("claim by owner %q entity %q source %q: %v, want ErrAgentOwned", other.Owner, other.Entity, other.Source, err)
		}
	}
	// A record without an owner (TLS off) is claimed by the first
	// certificate.
	free := newAgent(2, epoch())
	free.Owner, free.Entity, free.Source = "", "", ""
	mustClaim(t, rs[0], free)
	claimed := newAgent(2, epoch())
	claimed.Version = 1
	if err := rs[1].PutAgentAudited(t.Context(), claimed, store.AuditEntry{Time: epoch(), Action: "agent.claim", Identity: claimed.ID, Outcome: store.OutcomeOK}); err != nil {
		t.Errorf("claim of an unowned record: %v", err)
	}
}

// testAgentOwnership checks, across three stores of one state, that an
// agent's ownership changes only through the claim: PutAgents and
// UpdateAgent of a record authorised against an ownership the store no
// longer holds (the id released and claimed by another, or an unowned
// record claimed by a certificate) write nothing, and neither inserts the
// record of an id released or deleted meanwhile. Each sequence is one a
// replica can run into with a record it read before another replica
// wrote; the store and the audit log agree at the end of each.
func testAgentOwnership(t *testing.T, open Opener) {
	at := func(d time.Duration) time.Time { return epoch().Add(d) }
	owned := func(id, owner string, version int64) store.Agent {
		ag := newAgent(1, epoch())
		ag.ID, ag.Owner, ag.Entity, ag.Source, ag.Version = id, owner, "", "localca", version
		ag.Payload = fmt.Appendf(nil, `{"agent_id":%q,"http_host":"%s.example","http_port":9000}`, id, owner)
		return ag
	}
	claim := func(t *testing.T, s store.Store, ag store.Agent) store.AuditEntry {
		t.Helper()
		a := store.AuditEntry{Time: epoch(), Action: "agent.claim", Identity: ag.ID, Outcome: store.OutcomeOK, Detail: "owner " + ag.Owner}
		if err := s.PutAgentAudited(t.Context(), ag, a); err != nil {
			t.Fatalf("claim of %s by %q: %v", ag.ID, ag.Owner, err)
		}
		return a
	}
	release := func(t *testing.T, s store.Store, id string) store.AuditEntry {
		t.Helper()
		a := markEntry("agent.release", id, at(time.Minute))
		if err := s.DeleteAgent(t.Context(), id, a); err != nil {
			t.Fatalf("release of %s: %v", id, err)
		}
		return a
	}

	t.Run("ReleasedAndClaimedByAnother", func(t *testing.T) {
		rs := openReplicas(t, open, t.TempDir(), 3)
		squatter := owned("opus", "opus@ct666", 10)
		log := []store.AuditEntry{claim(t, rs[0], squatter), release(t, rs[1], "opus")}
		owner := owned("opus", "opus@ct111", 20)
		log = append(log, claim(t, rs[0], owner))
		// Replica C still holds the squatter's record: its newer heartbeat
		// and its flush must not take the id back.
		late := squatter
		late.Version = 30
		late.Payload = []byte(`{"agent_id":"opus","http_host":"evil.example","http_port":9000}`)
		if err := rs[2].UpdateAgent(t.Context(), late); !errors.Is(err, store.ErrAgentOwned) {
			t.Errorf("UpdateAgent of the squatter's record after opus@ct111 claimed the id = %v, want ErrAgentOwned", err)
		}
		mustPutAgents(t, rs[2], late)
		checkAgents(t, "after the squatter's writes", rs[1], []store.Agent{owner})
		checkLog(t, "after the squatter's writes", rs[1], log)
	})

	t.Run("ReleasedNotInsertedAgain", func(t *testing.T) {
		rs := openReplicas(t, open, t.TempDir(), 3)
		squatter := owned("opus", "opus@ct666", 10)
		log := []store.AuditEntry{claim(t, rs[0], squatter), release(t, rs[1], "opus")}
		// A liveness flush of the record replica C held: no row comes back.
		late := squatter
		late.Version, late.Status = 11, "unhealthy"
		mustPutAgents(t, rs[2], late)
		if err := rs[2].UpdateAgent(t.Context(), late); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UpdateAgent of a released agent = %v, want ErrNotFound", err)
		}
		checkAgents(t, "after the flush of a released agent", rs[0], nil)
		checkLog(t, "after the flush of a released agent", rs[0], log)
	})

	t.Run("CertificateClaimKept", func(t *testing.T) {
		rs := openReplicas(t, open, t.TempDir(), 3)
		// Registered without a certificate (TLS auto), then claimed by one.
		certless := owned("opus", "", 10)
		certless.Source = ""
		log := []store.AuditEntry{claim(t, rs[0], certless)}
		cert := owned("opus", "opus@ct111", 20)
		log = append(log, claim(t, rs[1], cert))
		// A certless heartbeat to a replica that still holds the certless
		// record cannot revert the claim or move the endpoint.
		evil := certless
		evil.Version = 30
		evil.Payload = []byte(`{"agent_id":"opus","http_host":"evil.example","http_port":9000}`)
		if err := rs[2].UpdateAgent(t.Context(), evil); !errors.Is(err, store.ErrAgentOwned) {
			t.Errorf("certless UpdateAgent after a certificate's claim = %v, want ErrAgentOwned", err)
		}
		mustPutAgents(t, rs[2], evil)
		checkAgents(t, "after the certless writes", rs[0], []store.Agent{cert})
		checkLog(t, "after the certless writes", rs[0], log)
	})

	t.Run("ClaimOverNewerRecord", func(t *testing.T) {
		rs := openReplicas(t, open, t.TempDir(), 2)
		// The certless record changed on one replica at a later version
		// than another's claim carries (their clocks differ): the claim,
		// audited, is what the store holds, one version past the record.
		certless := owned("opus", "", 50)
		certless.Source = ""
		log := []store.AuditEntry{claim(t, rs[0], certless)}
		cert := owned("opus", "opus@ct111", 20)
		log = append(log, claim(t, rs[1], cert))
		want := cert
		want.Version = 51
		checkAgents(t, "after a claim older than the record", rs[0], []store.Agent{want})
		// The owner's own claim, older than the record, changes nothing
		// (ownership kept): the version rule of every other write.
		stale := cert
		stale.Version, stale.Status = 21, "unhealthy"
		log = append(log, claim(t, rs[0], stale))
		checkAgents(t, "after the owner's stale claim", rs[0], []store.Agent{want})
		checkLog(t, "after the claims", rs[1], log)
	})

	t.Run("UpdateOfSameOwnership", func(t *testing.T) {
		rs := openReplicas(t, open, t.TempDir(), 2)
		ag := owned("opus", "opus@ct111", 10)
		log := []store.AuditEntry{claim(t, rs[0], ag)}
		next := ag
		next.Version, next.Payload = 11, []byte(`{"agent_id":"opus","http_port":9001}`)
		if err := rs[1].UpdateAgent(t.Context(), next); err != nil {
			t.Fatalf("UpdateAgent by the owner: %v", err)
		}
		// An older one is left out without an error, as in PutAgents.
		if err := rs[0].UpdateAgent(t.Context(), ag); err != nil {
			t.Errorf("UpdateAgent of an older record = %v, want nil (left out)", err)
		}
		// Another entity or source is another ownership, even under the
		// same owner name.
		for _, change := range []func(*store.Agent){
			func(a *store.Agent) { a.Entity = "partner-corp" },
			func(a *store.Agent) { a.Source = "filestore" },
		} {
			other := next
			other.Version = 12
			change(&other)
			if err := rs[0].UpdateAgent(t.Context(), other); !errors.Is(err, store.ErrAgentOwned) {
				t.Errorf("UpdateAgent as entity %q source %q = %v, want ErrAgentOwned", other.Entity, other.Source, err)
			}
		}
		checkAgents(t, "after the updates", rs[1], []store.Agent{next})
		checkLog(t, "after the updates", rs[1], log)
	})
}
