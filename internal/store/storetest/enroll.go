package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// openEnroll is openStore for enrollment's checks.
func openEnroll(t *testing.T, open Opener, dir string) store.Store {
	t.Helper()
	return openStore(t, open, dir)
}

// reopenEnroll closes s and opens the store on dir again.
func reopenEnroll(t *testing.T, open Opener, dir string, s store.Store) store.Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openEnroll(t, open, dir)
}

// newToken returns a join token, distinct for each n, for node, created at
// createdAt and valid for an hour.
func newToken(n int, node string, createdAt time.Time) store.JoinToken {
	h := sha256.Sum256(fmt.Appendf(nil, "join token %d", n))
	return store.JoinToken{
		Hash:      hex.EncodeToString(h[:]),
		NodeID:    node,
		CreatedAt: createdAt,
		ExpiresAt: createdAt.Add(time.Hour),
	}
}

// tokenEntry returns the audit entry recorded with the creation of tok. It
// names the node, never the token or its hash.
func tokenEntry(tok store.JoinToken) store.AuditEntry {
	return store.AuditEntry{Time: tok.CreatedAt, Action: "token.create", Identity: tok.NodeID, Outcome: store.OutcomeOK,
		Detail: "expires " + tok.ExpiresAt.UTC().Format(time.RFC3339Nano)}
}

// enrollEntry returns the audit entry recorded with node's use of a token
// at t.
func enrollEntry(node string, t time.Time) store.AuditEntry {
	return store.AuditEntry{Time: t, Action: "node.enroll", Identity: node, Outcome: store.OutcomeOK, Detail: "join token"}
}

func mustPutToken(t *testing.T, s store.Store, toks ...store.JoinToken) {
	t.Helper()
	for _, tok := range toks {
		if err := s.PutToken(t.Context(), tok, tokenEntry(tok)); err != nil {
			t.Fatalf("PutToken(node %q): %v", tok.NodeID, err)
		}
	}
}

// mustUseToken uses tok for its node at at and checks that the store
// returns tok, used at at.
func mustUseToken(t *testing.T, s store.Store, tok store.JoinToken, at time.Time) store.JoinToken {
	t.Helper()
	got, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, at, enrollEntry(tok.NodeID, at))
	if err != nil {
		t.Fatalf("UseToken(node %q, at %s): %v", tok.NodeID, fmtTime(at), err)
	}
	tok.UsedAt = at
	if d := tokenDiff(tok, got); d != "" {
		t.Errorf("UseToken(node %q) returned %s", tok.NodeID, d)
	}
	return got
}

// tokenDiff describes how got differs from want, or returns "" if they are
// the same record.
func tokenDiff(want, got store.JoinToken) string {
	return recordDiff(want, got, func(tok *store.JoinToken) []timeRef {
		return []timeRef{{"CreatedAt", &tok.CreatedAt}, {"ExpiresAt", &tok.ExpiresAt}, {"UsedAt", &tok.UsedAt}}
	}, nil)
}

func testTokenRoundTrip(t *testing.T, open Opener) {
	cet := time.FixedZone("CET", 3600)
	tok := newToken(1, "ct112", time.Date(2026, 3, 1, 13, 0, 0, 7, cet))
	tok.ExpiresAt = time.Date(2026, 3, 1, 14, 0, 0, 999999999, cet)
	other := newToken(2, "ct113", epoch())

	dir := t.TempDir()
	s := openEnroll(t, open, dir)
	mustPutToken(t, s, tok, other)
	log := []store.AuditEntry{tokenEntry(tok), tokenEntry(other)}
	// The token survives a reopen unused, and its use survives another.
	s = reopenEnroll(t, open, dir, s)
	at := tok.ExpiresAt.Add(-time.Nanosecond).In(time.FixedZone("X", -7*3600))
	mustUseToken(t, s, tok, at)
	log = append(log, enrollEntry(tok.NodeID, at))
	s = reopenEnroll(t, open, dir, s)
	if _, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, at, enrollEntry(tok.NodeID, at)); !errors.Is(err, store.ErrTokenUsed) {
		t.Errorf("UseToken(token used before a reopen) = %v, want an error wrapping store.ErrTokenUsed", err)
	}
	// Using one token leaves the other as it was.
	mustUseToken(t, s, other, epoch())
	log = append(log, enrollEntry(other.NodeID, epoch()))
	checkLog(t, "after the uses", s, log)
}

// testTokenRefusals checks each way UseToken refuses a token, and that a
// refusal writes nothing: no audit entry, and the token stays as it was,
// which a later use shows.
func testTokenRefusals(t *testing.T, open Opener) {
	tok := newToken(1, "ct112", epoch())
	unknown := newToken(2, "ct112", epoch())
	usedAt := epoch().Add(time.Minute)
	tests := []struct {
		name string
		// used has the token used at usedAt before the refused call.
		used       bool
		hash, node string
		now        time.Time
		want       error
		// then is a time at which the token, still unused, must enroll
		// its node after the refusal; zero for a used token.
		then time.Time
	}{
		{"unknown hash", false, unknown.Hash, tok.NodeID, epoch(), store.ErrNotFound, epoch()},
		{"wrong node", false, tok.Hash, "ct113", epoch(), store.ErrTokenNode, epoch()},
		{"empty node", false, tok.Hash, "", epoch(), store.ErrTokenNode, epoch()},
		{"exactly at expiry", false, tok.Hash, tok.NodeID, tok.ExpiresAt, store.ErrTokenExpired, tok.ExpiresAt.Add(-time.Nanosecond)},
		{"after expiry", false, tok.Hash, tok.NodeID, tok.ExpiresAt.Add(24 * time.Hour), store.ErrTokenExpired, epoch()},
		{"expired, wrong node", false, tok.Hash, "ct113", tok.ExpiresAt, store.ErrTokenExpired, epoch()},
		{"used", true, tok.Hash, tok.NodeID, usedAt.Add(time.Minute), store.ErrTokenUsed, time.Time{}},
		{"used, wrong node", true, tok.Hash, "ct113", usedAt.Add(time.Minute), store.ErrTokenUsed, time.Time{}},
		{"used, expired", true, tok.Hash, tok.NodeID, tok.ExpiresAt, store.ErrTokenUsed, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openEnroll(t, open, dir)
			mustPutToken(t, s, tok)
			log := []store.AuditEntry{tokenEntry(tok)}
			if tt.used {
				mustUseToken(t, s, tok, usedAt)
				log = append(log, enrollEntry(tok.NodeID, usedAt))
			}
			refused := enrollEntry(tt.node, tt.now)
			got, err := s.UseToken(t.Context(), tt.hash, tt.node, tt.now, refused)
			if !errors.Is(err, tt.want) {
				t.Fatalf("UseToken = %v, want an error wrapping %v", err, tt.want)
			}
			if got != (store.JoinToken{}) {
				t.Errorf("UseToken refused the token but returned %+v, want the zero JoinToken", got)
			}
			s = reopenEnroll(t, open, dir, s)
			checkLog(t, "after the refusal", s, log)

			if tt.then.IsZero() {
				// Still used, and still refused without an entry.
				if _, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, usedAt, enrollEntry(tok.NodeID, usedAt)); !errors.Is(err, store.ErrTokenUsed) {
					t.Errorf("UseToken again = %v, want an error wrapping store.ErrTokenUsed", err)
				}
				checkLog(t, "after a second refusal", s, log)
				return
			}
			// The refusal did not spend the token.
			mustUseToken(t, s, tok, tt.then)
			checkLog(t, "after the token's use", s, append(log, enrollEntry(tok.NodeID, tt.then)))
		})
	}
}

func testTokenExists(t *testing.T, open Opener) {
	orig := newToken(1, "ct112", epoch())
	other := newToken(1, "ct113", epoch().Add(time.Hour))
	used := orig
	used.UsedAt = epoch().Add(time.Minute)
	tests := []struct {
		name string
		dup  store.JoinToken
	}{
		{"same record", orig},
		{"other node, same hash", other},
		{"used record, same hash", used},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openEnroll(t, open, t.TempDir())
			mustPutToken(t, s, orig)
			if err := s.PutToken(t.Context(), tt.dup, tokenEntry(tt.dup)); !errors.Is(err, store.ErrExists) {
				t.Fatalf("PutToken(recorded hash) = %v, want an error wrapping store.ErrExists", err)
			}
			checkLog(t, "after the refused PutToken", s, []store.AuditEntry{tokenEntry(orig)})
			// The recorded token is unchanged: still unused, still for its node.
			if _, err := s.UseToken(t.Context(), orig.Hash, other.NodeID, epoch(), enrollEntry(other.NodeID, epoch())); !errors.Is(err, store.ErrTokenNode) {
				t.Errorf("UseToken(for the duplicate's node) = %v, want an error wrapping store.ErrTokenNode", err)
			}
			mustUseToken(t, s, orig, epoch())
		})
	}
}

// testTokenConcurrentUse has many callers race to use the same tokens:
// each token must enroll its node exactly once.
func testTokenConcurrentUse(t *testing.T, open Opener) {
	const tokens, callers = 8, 32
	s := openEnroll(t, open, t.TempDir())
	var toks []store.JoinToken
	for i := range tokens {
		toks = append(toks, newToken(i, fmt.Sprintf("ct%d", 200+i), epoch()))
	}
	mustPutToken(t, s, toks...)

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins = make(map[string][]store.JoinToken) // by node
	)
	for c := range callers {
		for _, tok := range toks {
			wg.Go(func() {
				at := epoch().Add(time.Duration(c) * time.Nanosecond)
				got, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, at, enrollEntry(tok.NodeID, at))
				switch {
				case errors.Is(err, store.ErrTokenUsed):
					return
				case err != nil:
					t.Errorf("UseToken(node %q): %v", tok.NodeID, err)
					return
				}
				want := tok
				want.UsedAt = at
				if d := tokenDiff(want, got); d != "" {
					t.Errorf("UseToken(node %q) returned %s", tok.NodeID, d)
				}
				mu.Lock()
				wins[tok.NodeID] = append(wins[tok.NodeID], got)
				mu.Unlock()
			})
		}
	}
	wg.Wait()

	for _, tok := range toks {
		if n := len(wins[tok.NodeID]); n != 1 {
			t.Errorf("the token for %q enrolled it %d times among %d concurrent callers, want exactly once", tok.NodeID, n, callers)
		}
	}
	// One entry per creation and one per successful use, nothing for the
	// refused callers.
	log := auditLog(t, s)
	if want := tokens + tokens; len(log) != want {
		t.Fatalf("audit log has %d entries, want %d", len(log), want)
	}
	for _, e := range log[tokens:] {
		ws := wins[e.Identity]
		if len(ws) != 1 || e.Action != "node.enroll" || !e.Time.Equal(ws[0].UsedAt) {
			t.Errorf("audit entry %d (%s %s at %s) is not the winning use of a token", e.Seq, e.Action, e.Identity, fmtTime(e.Time))
		}
	}
}

// certEvent returns the feed event that the revocation r appends.
func certEvent(r store.Revocation) store.Event {
	return store.Event{Kind: store.EventCertRevoked, Serial: r.Serial, IssuerKeyID: r.IssuerKeyID, CommonName: r.CommonName, KeyHash: r.KeyHash, Reason: r.Reason, Time: r.RevokedAt}
}

// entityEvent returns the feed event that the revocation of the entity
// name at t appends.
func entityEvent(name string, t time.Time) store.Event {
	return store.Event{Kind: store.EventEntityRevoked, Entity: name, Time: t}
}

// eventDiff describes how got differs from want, Seq aside, or returns ""
// if they are the same event.
func eventDiff(want, got store.Event) string {
	return recordDiff(want, got, func(e *store.Event) []timeRef { return []timeRef{{"Time", &e.Time}} },
		func(e *store.Event) { e.Seq = 0 })
}

// checkEvents fails t unless the revocations of s's feed (the kinds
// certEvent and entityEvent make) are want, in want's order, with
// increasing Seq, and returns them.
func checkEvents(t *testing.T, what string, s store.Store, want []store.Event) []store.Event {
	t.Helper()
	all, err := s.Events(t.Context(), 0, 0)
	if err != nil {
		t.Fatalf("%s: Events: %v", what, err)
	}
	got := revocationEvents(all)
	if len(got) != len(want) {
		t.Fatalf("%s: Events returned %d events %+v, want %d", what, len(got), got, len(want))
	}
	for i := range want {
		if i > 0 && got[i].Seq <= got[i-1].Seq {
			t.Errorf("%s: event %d has Seq %d after Seq %d; want Seq to increase", what, i, got[i].Seq, got[i-1].Seq)
		}
		if got[i].Seq <= 0 {
			t.Errorf("%s: event %d has Seq %d; want a positive Seq, so that after=0 means from the start", what, i, got[i].Seq)
		}
		if d := eventDiff(want[i], got[i]); d != "" {
			t.Errorf("%s: event %d: %s", what, i, d)
		}
	}
	return got
}

// revocationEvents returns the certificate and entity revocations of evs.
func revocationEvents(evs []store.Event) []store.Event {
	var out []store.Event
	for _, e := range evs {
		if e.Kind == store.EventCertRevoked || e.Kind == store.EventEntityRevoked {
			out = append(out, e)
		}
	}
	return out
}

// mustRevoke revokes c with reason at at and returns the event it appends.
func mustRevoke(t *testing.T, s store.Store, c store.Cert, reason int, at time.Time) store.Event {
	t.Helper()
	r := newRevocation(c, reason, at)
	got, _, err := s.Revoke(t.Context(), r, revokeEntry(r))
	if err != nil {
		t.Fatalf("Revoke(%s): %v", c.Serial, err)
	}
	return certEvent(got)
}

// mustRevokeEntity revokes the entity name at at and returns the event a
// first revocation appends.
func mustRevokeEntity(t *testing.T, s store.Store, name string, at time.Time) store.Event {
	t.Helper()
	if err := s.RevokeEntity(t.Context(), name, at, markEntry("entity.revoke", name, at)); err != nil {
		t.Fatalf("RevokeEntity(%q): %v", name, err)
	}
	return entityEvent(name, at)
}

// testRevocationEvents checks that certificate and entity revocations
// append to one feed, in the order they happen, and that the feed
// survives a reopen and continues after it.
func testRevocationEvents(t *testing.T, open Opener) {
	cet := time.FixedZone("CET", 3600)
	dir := t.TempDir()
	s := openEnroll(t, open, dir)
	checkEvents(t, "an empty store", s, nil)
	var cs []store.Cert
	for i := range 4 {
		cs = append(cs, newCert(i, fmt.Sprintf("agent%d@ct111", i), epoch()))
	}
	mustRecord(t, s, cs...)
	mustPutEntity(t, s, false, newEntity("acme", epoch()), newEntity("partner-corp", epoch()))

	at := func(h int) time.Time { return epoch().Add(time.Duration(h)*time.Hour + time.Duration(h)) }
	want := []store.Event{
		mustRevoke(t, s, cs[2], 1, at(1)),
		mustRevokeEntity(t, s, "acme", at(2).In(cet)),
		mustRevoke(t, s, cs[0], 4, at(3)),
		mustRevokeEntity(t, s, "partner-corp", at(4)),
		// Time does not order the feed: the order of the writes does.
		mustRevoke(t, s, cs[1], 0, at(0)),
	}
	got := checkEvents(t, "before reopen", s, want)

	s = reopenEnroll(t, open, dir, s)
	again := checkEvents(t, "after reopen", s, want)
	for i := range got {
		if again[i].Seq != got[i].Seq {
			t.Errorf("event %d had Seq %d before the reopen and %d after", i, got[i].Seq, again[i].Seq)
		}
	}
	want = append(want, mustRevoke(t, s, cs[3], 5, at(5)))
	checkEvents(t, "after a revocation after reopen", s, want)
}

func testRevocationEventsPage(t *testing.T, open Opener) {
	s := openEnroll(t, open, t.TempDir())
	mustPutEntity(t, s, false, newEntity("acme", epoch()))
	var want []store.Event
	for i := range 4 {
		c := newCert(i, fmt.Sprintf("agent%d@ct111", i), epoch())
		mustRecord(t, s, c)
		want = append(want, mustRevoke(t, s, c, 1, epoch().Add(time.Duration(i)*time.Second)))
		if i == 1 {
			want = append(want, mustRevokeEntity(t, s, "acme", epoch().Add(time.Minute)))
		}
	}
	checkEvents(t, "the revocations", s, want)
	// Pages are taken over the whole feed, the entity's registration
	// included.
	all, err := s.Events(t.Context(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := len(all)

	afters := []int64{-1, 0}
	for _, e := range all {
		afters = append(afters, e.Seq)
	}
	afters = append(afters, all[n-1].Seq+100)
	for _, after := range afters {
		var rest []store.Event
		for _, e := range all {
			if e.Seq > after {
				rest = append(rest, e)
			}
		}
		for _, limit := range []int{-1, 0, 1, 2, n - 1, n, n + 1} {
			wantPage := rest
			if limit > 0 && len(wantPage) > limit {
				wantPage = wantPage[:limit]
			}
			got, err := s.Events(t.Context(), after, limit)
			if err != nil {
				t.Fatalf("Events(%d, %d): %v", after, limit, err)
			}
			if len(got) != len(wantPage) {
				t.Errorf("Events(%d, %d) returned %d events, want %d", after, limit, len(got), len(wantPage))
				continue
			}
			for i := range got {
				if got[i].Seq != wantPage[i].Seq || eventDiff(wantPage[i], got[i]) != "" {
					t.Errorf("Events(%d, %d)[%d] = %+v, want %+v", after, limit, i, got[i], wantPage[i])
				}
			}
		}
	}

	// Paging through the feed, as a subscriber catching up does, visits
	// every event once.
	var paged []store.Event
	for after := int64(0); len(paged) <= n; {
		page, err := s.Events(t.Context(), after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if page[0].Seq <= after {
			t.Fatalf("Events(%d, 2) returned an event with Seq %d", after, page[0].Seq)
		}
		paged = append(paged, page...)
		after = page[len(page)-1].Seq
	}
	if len(paged) != n {
		t.Errorf("paging by 2 visited %d events, want %d", len(paged), n)
	}
}

// testEntityRevokedTwice checks that only an entity's first revocation
// appends an event, and that an entity registered again is revoked anew.
func testEntityRevokedTwice(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openEnroll(t, open, dir)
	e := newEntity("acme", epoch())
	mustPutEntity(t, s, false, e)
	first := epoch().Add(time.Hour)
	want := []store.Event{mustRevokeEntity(t, s, e.Name, first)}
	mustRevokeEntity(t, s, e.Name, first.Add(time.Hour))
	s = reopenEnroll(t, open, dir, s)
	mustRevokeEntity(t, s, e.Name, first.Add(2*time.Hour))
	checkEvents(t, "after revoking a revoked entity", s, want)
	if got, err := s.Entity(t.Context(), e.Name); err != nil || !got.RevokedAt.Equal(first) {
		t.Errorf("Entity(%q).RevokedAt = %s (%v), want the first revocation's %s", e.Name, fmtTime(got.RevokedAt), err, fmtTime(first))
	}

	// Rotation is no revocation.
	if err := s.RotateEntity(t.Context(), e.Name, first, markEntry("entity.rotate", e.Name, first)); err != nil {
		t.Fatal(err)
	}
	again := newEntity("acme", epoch().Add(4*time.Hour))
	mustPutEntity(t, s, false, again)
	if err := s.RotateEntity(t.Context(), e.Name, first, markEntry("entity.rotate", e.Name, first)); err != nil {
		t.Fatal(err)
	}
	checkEvents(t, "after re-registration and rotations", s, want)
	want = append(want, mustRevokeEntity(t, s, e.Name, epoch().Add(5*time.Hour)))
	mustRevokeEntity(t, s, e.Name, epoch().Add(6*time.Hour))
	checkEvents(t, "after revoking the re-registered entity", s, want)
}

// testFailedRevocationNoEvent checks that a revocation that fails appends
// no event.
func testFailedRevocationNoEvent(t *testing.T, open Opener) {
	s := openEnroll(t, open, t.TempDir())
	c, other := newCert(1, "a", epoch()), newCert(3, "c", epoch())
	mustRecord(t, s, c, other)
	mustPutEntity(t, s, false, newEntity("acme", epoch()))
	want := []store.Event{mustRevoke(t, s, c, 1, epoch().Add(time.Hour))}

	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	at := epoch().Add(2 * time.Hour)
	unknown := newRevocation(newCert(2, "b", epoch()), 1, at)
	twice := newRevocation(c, 4, at)
	live := newRevocation(other, 1, at)
	calls := []struct {
		name string
		call func() error
		want error
	}{
		{"Revoke(unrecorded serial)", func() error { _, _, err := s.Revoke(t.Context(), unknown, revokeEntry(unknown)); return err }, store.ErrNotFound},
		{"Revoke(revoked serial)", func() error { _, _, err := s.Revoke(t.Context(), twice, revokeEntry(twice)); return err }, store.ErrExists},
		{"Revoke with a canceled context", func() error { _, _, err := s.Revoke(canceled, live, revokeEntry(live)); return err }, context.Canceled},
		{"RevokeEntity(unknown)", func() error {
			return s.RevokeEntity(t.Context(), "unknown", at, markEntry("entity.revoke", "unknown", at))
		}, store.ErrNotFound},
		{"RevokeEntity with a canceled context", func() error {
			return s.RevokeEntity(canceled, "acme", at, markEntry("entity.revoke", "acme", at))
		}, context.Canceled},
	}
	for _, tt := range calls {
		if err := tt.call(); !errors.Is(err, tt.want) {
			t.Errorf("%s = %v, want an error wrapping %v", tt.name, err, tt.want)
		}
	}
	checkEvents(t, "after the failed revocations", s, want)
}

// tokenWrites are the enrollment store's two writes with ctx: putting
// other, and spending tok.
func tokenWrites(ctx context.Context, s store.Store, tok, other store.JoinToken) []namedCall {
	return []namedCall{
		{"PutToken", func() error { return s.PutToken(ctx, other, tokenEntry(other)) }},
		{"UseToken", func() error {
			_, err := s.UseToken(ctx, tok.Hash, tok.NodeID, epoch(), enrollEntry(tok.NodeID, epoch()))
			return err
		}},
	}
}

func testEnrollCanceledContext(t *testing.T, open Opener) {
	s := openEnroll(t, open, t.TempDir())
	tok := newToken(1, "ct112", epoch())
	mustPutToken(t, s, tok)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	other := newToken(2, "ct113", epoch())
	checkCalls(t, "with a canceled context", context.Canceled, tokenWrites(ctx, s, tok, other))
	checkLog(t, "after canceled writes", s, []store.AuditEntry{tokenEntry(tok)})
	// Neither write happened: the token is unused, the other unknown.
	if _, err := s.UseToken(t.Context(), other.Hash, other.NodeID, epoch(), enrollEntry(other.NodeID, epoch())); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UseToken(token of a canceled PutToken) = %v, want an error wrapping store.ErrNotFound", err)
	}
	mustUseToken(t, s, tok, epoch())
}

func testEnrollClosed(t *testing.T, open Opener) {
	s := openEnroll(t, open, t.TempDir())
	tok := newToken(1, "ct112", epoch())
	mustPutToken(t, s, tok)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := t.Context()
	other := newToken(2, "ct113", epoch())
	calls := append(tokenWrites(ctx, s, tok, other),
		namedCall{"RevocationEvents", func() error { _, err := s.Events(ctx, 0, 0); return err }})
	checkCalls(t, "after Close", store.ErrClosed, calls)
}
