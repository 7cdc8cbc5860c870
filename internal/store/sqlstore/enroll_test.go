package sqlstore

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/storetest"
)

func testToken(n int, node string) store.JoinToken {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	h := sha256.Sum256(fmt.Appendf(nil, "token %d", n))
	return store.JoinToken{Hash: hex.EncodeToString(h[:]), NodeID: node, CreatedAt: at, ExpiresAt: at.Add(time.Hour)}
}

// dump returns every row of table, each column formatted, in rowid order:
// what a test compares to see that a call wrote nothing.
func dump(t *testing.T, db *sql.DB, table string) []string {
	t.Helper()
	rows, err := db.Query("SELECT * FROM " + table + " ORDER BY rowid")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(vals...))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTokenRefusalWritesNothing checks, row by row, that a refused
// UseToken leaves the tokens, the audit log and the feed as they were,
// used_at included, which the conformance suite can only infer.
func TestTokenRefusalWritesNothing(t *testing.T) {
	s, _ := openTest(t)
	fresh, used := testToken(1, "ct112"), testToken(2, "ct113")
	for _, tok := range []store.JoinToken{fresh, used} {
		if err := s.PutToken(t.Context(), tok, store.AuditEntry{Action: "token.create", Identity: tok.NodeID}); err != nil {
			t.Fatal(err)
		}
	}
	usedAt := used.CreatedAt.Add(time.Minute)
	if _, err := s.UseToken(t.Context(), used.Hash, used.NodeID, usedAt, store.AuditEntry{Action: "node.enroll"}); err != nil {
		t.Fatal(err)
	}
	tables := []string{"join_tokens", "audit", "events"}
	before := make(map[string][]string)
	for _, table := range tables {
		before[table] = dump(t, s.rdb, table)
	}

	tests := []struct {
		name       string
		hash, node string
		now        time.Time
		want       error
	}{
		{"unknown", testToken(3, "ct112").Hash, "ct112", fresh.CreatedAt, store.ErrNotFound},
		{"used", used.Hash, used.NodeID, usedAt.Add(time.Minute), store.ErrTokenUsed},
		{"expired", fresh.Hash, fresh.NodeID, fresh.ExpiresAt, store.ErrTokenExpired},
		{"wrong node", fresh.Hash, "ct113", fresh.CreatedAt, store.ErrTokenNode},
	}
	for _, tt := range tests {
		commits := s.commits.Load()
		_, err := s.UseToken(t.Context(), tt.hash, tt.node, tt.now, store.AuditEntry{Action: "node.enroll", Identity: tt.node})
		if !errors.Is(err, tt.want) {
			t.Fatalf("%s: UseToken = %v, want %v", tt.name, err, tt.want)
		}
		if strings.Contains(err.Error(), tt.hash) {
			t.Errorf("%s: error %q names the token's hash", tt.name, err)
		}
		// The refusal went through the writer, in one transaction.
		if got := s.commits.Load() - commits; got != 1 {
			t.Errorf("%s: UseToken took %d transactions, want 1", tt.name, got)
		}
		for _, table := range tables {
			if got := dump(t, s.rdb, table); !slices.Equal(got, before[table]) {
				t.Errorf("%s: the refusal changed %s:\n got %q\nwant %q", tt.name, table, got, before[table])
			}
		}
	}
}

// TestUseTokenOneBatch queues many uses of one token behind a held writer,
// so that they all run in one transaction: each runs in its own savepoint
// and sees the ones before it, so exactly one succeeds.
func TestUseTokenOneBatch(t *testing.T) {
	const queued = 50
	g, opt := newGate()
	s, _ := openTest(t, opt)
	tok := testToken(1, "ct112")
	if err := s.PutToken(t.Context(), tok, store.AuditEntry{Action: "token.create"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	g.holdAppend(t, s, &wg, store.AuditEntry{Action: "first"})
	errs := make([]error, queued)
	for i := range queued {
		wg.Go(func() {
			at := tok.CreatedAt.Add(time.Duration(i) * time.Second)
			_, errs[i] = s.UseToken(t.Context(), tok.Hash, tok.NodeID, at, store.AuditEntry{Action: "node.enroll", Time: at})
		})
	}
	waitQueued(s, queued)
	g.release()
	wg.Wait()

	var ok int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, store.ErrTokenUsed):
			t.Errorf("use %d: %v", i, err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d uses in one transaction succeeded, want exactly 1", ok, queued)
	}
	if got := s.commits.Load(); got != 2 {
		t.Errorf("%d transactions committed, want 2 (PutToken, then one batch)", got)
	}
	checkChain(t, s, 3, "create, first, one use")
}

// TestPutTokenRefusesNonHash checks that the store takes only a token's
// hash, and that the error does not repeat what it refused, which may be
// the token itself.
func TestPutTokenRefusesNonHash(t *testing.T) {
	s, path := openTest(t)
	const secret = "mtj_4f9c2d1e8b7a6f5e4d3c2b1a0f9e8d7c"
	good := testToken(1, "ct112")
	tests := []struct {
		name    string
		tok     store.JoinToken
		wantErr string
	}{
		{"the token itself", store.JoinToken{Hash: secret, NodeID: "ct112", ExpiresAt: good.ExpiresAt}, "SHA-256"},
		{"uppercase hex", store.JoinToken{Hash: strings.ToUpper(good.Hash), NodeID: "ct112", ExpiresAt: good.ExpiresAt}, "SHA-256"},
		{"short hash", store.JoinToken{Hash: good.Hash[:63], NodeID: "ct112", ExpiresAt: good.ExpiresAt}, "SHA-256"},
		{"no node", store.JoinToken{Hash: good.Hash, ExpiresAt: good.ExpiresAt}, "node id is empty"},
		{"no expiry", store.JoinToken{Hash: good.Hash, NodeID: "ct112"}, "must expire"},
		{"expiry out of range", store.JoinToken{Hash: good.Hash, NodeID: "ct112", ExpiresAt: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}, "ExpiresAt"},
	}
	for _, tt := range tests {
		err := s.PutToken(t.Context(), tt.tok, store.AuditEntry{Action: "token.create"})
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: PutToken = %v, want an error containing %q", tt.name, err, tt.wantErr)
			continue
		}
		if tt.tok.Hash != "" && strings.Contains(err.Error(), tt.tok.Hash) {
			t.Errorf("%s: error %q repeats the value it refused", tt.name, err)
		}
	}
	db := rawDB(t, path)
	for _, table := range []string{"join_tokens", "audit"} {
		if rows := dump(t, db, table); len(rows) != 0 {
			t.Errorf("%s has %d rows after refused writes, want none", table, len(rows))
		}
	}
}

// TestTokenTimesUseClock checks that zero times are read from the clock,
// and that a zero now, which precedes every expiry, cannot use an expired
// token.
func TestTokenTimesUseClock(t *testing.T) {
	now := time.Date(2026, 5, 4, 3, 2, 1, 987654321, time.UTC)
	s, _ := openTest(t, withClock(func() time.Time { return now }))
	tok := testToken(1, "ct112")
	tok.CreatedAt, tok.ExpiresAt = time.Time{}, now.Add(time.Minute)
	if err := s.PutToken(t.Context(), tok, store.AuditEntry{Action: "token.create"}); err != nil {
		t.Fatal(err)
	}
	expired := testToken(2, "ct113")
	expired.ExpiresAt = now
	if err := s.PutToken(t.Context(), expired, store.AuditEntry{Action: "token.create"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseToken(t.Context(), expired.Hash, expired.NodeID, time.Time{}, store.AuditEntry{Action: "node.enroll"}); !errors.Is(err, store.ErrTokenExpired) {
		t.Errorf("UseToken(expired token, zero now) = %v, want store.ErrTokenExpired", err)
	}
	got, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, time.Time{}, store.AuditEntry{Action: "node.enroll"})
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(now) || !got.UsedAt.Equal(now) {
		t.Errorf("CreatedAt %v, UsedAt %v; want both the clock's %v", got.CreatedAt, got.UsedAt, now)
	}
}

// TestMigrateFromVersion2 makes a file as a meshtrust that knew only
// schema version 2 left it, with certificates and entities revoked, and
// checks that the current one starts the revocation feed with all of them
// and carries on from there.
func TestMigrateFromVersion2(t *testing.T) {
	ms, err := sqliteDialect{}.migrations()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "meshtrust.db")
	db := rawDB(t, path)
	if err := applyMigrations(t.Context(), sqliteDialect{}, db, path, time.Now, ms[:2]); err != nil {
		t.Fatalf("migrate to version 2: %v", err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	certs := []store.Cert{testCert(1), testCert(2), testCert(3)}
	for _, c := range certs {
		args, err := certArgs(c)
		if err != nil {
			t.Fatal(err)
		}
		// The columns of version 2, without those later versions added.
		if _, err := db.Exec(`INSERT INTO certs (serial, common_name, kind, sans, not_before, not_after,
			fingerprint, issuer_key_id, pem, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args[:10]...); err != nil {
			t.Fatal(err)
		}
	}
	// Revoked in the order 3, 1 at times that run the other way: the feed
	// follows the order of revocation, not the times.
	revs := []store.Revocation{
		{Serial: certs[2].Serial, CommonName: certs[2].CommonName, IssuerKeyID: certs[2].IssuerKeyID, Reason: 1, RevokedAt: at.Add(2 * time.Hour)},
		{Serial: certs[0].Serial, CommonName: certs[0].CommonName, IssuerKeyID: certs[0].IssuerKeyID, Reason: 4, RevokedAt: at.Add(time.Hour)},
	}
	for _, r := range revs {
		if _, err := db.Exec(`INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at) VALUES (?, ?, ?, ?, ?)`,
			r.Serial, r.CommonName, r.IssuerKeyID, r.Reason, r.RevokedAt.UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	// Entities revoked in time order zeta, alpha; live is not revoked.
	zeta, alpha, live := testEntity("zeta"), testEntity("alpha"), testEntity("live")
	zeta.RevokedAt, alpha.RevokedAt = at.Add(time.Hour), at.Add(3*time.Hour)
	for _, e := range []store.Entity{alpha, live, zeta} {
		args, err := entityArgs(e)
		if err != nil {
			t.Fatal(err)
		}
		// The columns of version 2, without those later versions added.
		if _, err := db.Exec(`INSERT INTO entities (name, ca_pem, fingerprint, subject, not_before, not_after,
			created_at, revoked_at, rotated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, args[:9]...); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(version 2 file): %v", err)
	}
	defer s.Close()
	certEvent := func(seq int64, r store.Revocation) store.Event {
		return store.Event{Seq: seq, Kind: store.EventCertRevoked, Serial: r.Serial, IssuerKeyID: r.IssuerKeyID, CommonName: r.CommonName, Reason: r.Reason, Time: r.RevokedAt}
	}
	want := []store.Event{
		certEvent(1, revs[0]),
		certEvent(2, revs[1]),
		{Seq: 3, Kind: store.EventEntityRevoked, Entity: "zeta", Time: zeta.RevokedAt},
		{Seq: 4, Kind: store.EventEntityRevoked, Entity: "alpha", Time: alpha.RevokedAt},
	}
	checkFeed := func(what string, want []store.Event) {
		t.Helper()
		got, err := s.Events(t.Context(), 0, 0)
		if err != nil {
			t.Fatalf("%s: Events: %v", what, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: Events returned %d events %+v, want %d %+v", what, len(got), got, len(want), want)
		}
		for i := range want {
			w, g := want[i], got[i]
			if !g.Time.Equal(w.Time) {
				t.Errorf("%s: event %d has Time %v, want %v", what, i, g.Time, w.Time)
			}
			w.Time, g.Time = time.Time{}, time.Time{}
			if g != w {
				t.Errorf("%s: event %d = %+v, want %+v", what, i, g, w)
			}
		}
	}
	checkFeed("after the upgrade", want)

	// The feed carries on after the backfilled events; an entity revoked
	// before the upgrade is not news when revoked again.
	r, _, err := s.Revoke(t.Context(), store.Revocation{Serial: certs[1].Serial, Reason: 5, RevokedAt: at.Add(4 * time.Hour)}, store.AuditEntry{Action: "cert.revoke"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alpha", "live"} {
		if err := s.RevokeEntity(t.Context(), name, at.Add(5*time.Hour), store.AuditEntry{Action: "entity.revoke"}); err != nil {
			t.Fatal(err)
		}
	}
	want = append(want, certEvent(5, r), store.Event{Seq: 6, Kind: store.EventEntityRevoked, Entity: "live", Time: at.Add(5 * time.Hour)})
	checkFeed("after revocations", want)

	// Join tokens work on the upgraded file.
	tok := testToken(1, "ct112")
	if err := s.PutToken(t.Context(), tok, store.AuditEntry{Action: "token.create"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseToken(t.Context(), tok.Hash, tok.NodeID, tok.CreatedAt, store.AuditEntry{Action: "node.enroll"}); err != nil {
		t.Fatal(err)
	}
	var version int
	if err := s.rdb.QueryRow("SELECT max(version) FROM schema_version").Scan(&version); err != nil || version != len(ms) {
		t.Errorf("schema version %d (%v), want %d", version, err, len(ms))
	}
	if p := storetest.SQLiteProblems(t, path); len(p) != 0 {
		t.Errorf("problems of the upgraded file: %q", p)
	}
}

// TestRevocationEventRollsBack makes the audit append of a certificate and
// of an entity revocation fail, after their event was written, and checks
// that the event went with the rest of the write.
func TestRevocationEventRollsBack(t *testing.T) {
	s, path := openTest(t)
	c := testCert(1)
	if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutEntity(t.Context(), testEntity("e"), false, store.AuditEntry{Action: "entity.register"}); err != nil {
		t.Fatal(err)
	}
	registered, err := s.Events(t.Context(), 0, 0)
	if err != nil || len(registered) != 1 || registered[0].Kind != store.EventEntityRegistered {
		t.Fatalf("Events after PutEntity = %+v, %v; want one entity.registered event", registered, err)
	}
	if _, err := rawDB(t, path).Exec(`CREATE TRIGGER fault BEFORE INSERT ON audit WHEN NEW.action = 'boom'
		BEGIN SELECT RAISE(ABORT, 'injected fault'); END`); err != nil {
		t.Fatal(err)
	}
	boom := store.AuditEntry{Action: "boom"}
	if _, _, err := s.Revoke(t.Context(), store.Revocation{Serial: c.Serial, Reason: 1}, boom); err == nil {
		t.Fatal("Revoke with a failing audit append succeeded")
	}
	if err := s.RevokeEntity(t.Context(), "e", time.Time{}, boom); err == nil {
		t.Fatal("RevokeEntity with a failing audit append succeeded")
	}
	if evs, err := s.Events(t.Context(), registered[0].Seq, 0); err != nil || len(evs) != 0 {
		t.Fatalf("Events after failed revocations = %+v, %v; want none", evs, err)
	}
	// The entity is not revoked, so its next revocation is its first.
	if err := s.RevokeEntity(t.Context(), "e", time.Time{}, store.AuditEntry{Action: "entity.revoke"}); err != nil {
		t.Fatal(err)
	}
	if evs, err := s.Events(t.Context(), registered[0].Seq, 0); err != nil || len(evs) != 1 || evs[0].Entity != "e" || evs[0].Kind != store.EventEntityRevoked {
		t.Errorf("Events = %+v, %v; want one entity.revoked event, for entity e", evs, err)
	}
}

func TestEnrollTablesStrict(t *testing.T) {
	_, path := openTest(t)
	db := rawDB(t, path)
	for _, q := range []string{
		"INSERT INTO join_tokens (hash, node_id, created_at, expires_at) VALUES ('h', 'n', 0, 'tomorrow')",
		"INSERT INTO join_tokens (hash, node_id, created_at) VALUES ('h', 'n', 0)",
		"INSERT INTO revocation_events (serial, issuer_key_id, common_name, entity, reason, time) VALUES ('', '', '', '', 0, 0)",
		"INSERT INTO revocation_events (serial, issuer_key_id, common_name, entity, reason, time) VALUES ('ab', '', '', 'acme', 0, 0)",
		"INSERT INTO revocation_events (serial, issuer_key_id, common_name, entity, reason, time) VALUES ('ab', '', '', '', 0, 'now')",
	} {
		if _, err := db.Exec(q); err == nil {
			t.Errorf("%s succeeded; want the table's types and checks to refuse it", q)
		}
	}
}
