package sqlstore

import (
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/storetest"
)

func testAgent(n int) store.Agent {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return store.Agent{
		ID:              fmt.Sprintf("agent-%05d", n),
		Owner:           fmt.Sprintf("agent%d@ct111", n),
		Payload:         fmt.Appendf(nil, `{"agent_id":"agent-%05d","http_port":%d}`, n, 9000+n),
		CertSerial:      fmt.Sprintf("%x", 0x5000+n),
		CertFingerprint: fmt.Sprintf("%064x", n),
		Status:          "healthy",
		RegisteredAt:    at,
		LastSeen:        at.Add(time.Duration(n) * time.Second),
	}
}

// claimAgents records agents through their claims (PutAgentAudited), the
// one write that inserts an agent, and returns how many audit entries
// that appended.
func claimAgents(tb testing.TB, s *Store, agents ...store.Agent) int {
	tb.Helper()
	for _, ag := range agents {
		if err := s.PutAgentAudited(tb.Context(), ag, store.AuditEntry{Action: "agent.claim", Identity: ag.ID}); err != nil {
			tb.Fatalf("claim of %s: %v", ag.ID, err)
		}
	}
	return len(agents)
}

func testEntity(name string) store.Entity {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return store.Entity{Name: name, CAPEM: []byte("-----BEGIN CERTIFICATE-----\n"), Fingerprint: fmt.Sprintf("%064x", len(name)),
		Subject: "CN=" + name, NotBefore: at, NotAfter: at.AddDate(10, 0, 0), CreatedAt: at}
}

// TestZeroTimeIsNull checks that a zero time is stored as NULL, so that
// the Unix epoch, stored as 0, reads back as the epoch and not as "never".
func TestZeroTimeIsNull(t *testing.T) {
	s, path := openTest(t)
	claimAgents(t, s, store.Agent{ID: "a", LastSeen: time.Unix(0, 0)})
	if err := s.PutEntity(t.Context(), store.Entity{Name: "e"}, false, store.AuditEntry{Action: "entity.register"}); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	var registeredAt, lastSeen, rotateFrom sql.NullInt64
	if err := db.QueryRow("SELECT registered_at, last_seen, rotate_from FROM agents").Scan(&registeredAt, &lastSeen, &rotateFrom); err != nil {
		t.Fatal(err)
	}
	if registeredAt.Valid || rotateFrom.Valid || lastSeen != (sql.NullInt64{Int64: 0, Valid: true}) {
		t.Errorf("agent times stored as %v, %v, %v; want NULL, 0, NULL", registeredAt, lastSeen, rotateFrom)
	}
	var nulls int
	if err := db.QueryRow(`SELECT (not_before IS NULL) + (not_after IS NULL) + (created_at IS NULL)
		+ (revoked_at IS NULL) + (rotated_at IS NULL) FROM entities`).Scan(&nulls); err != nil {
		t.Fatal(err)
	}
	if nulls != 5 {
		t.Errorf("%d of the zero entity's 5 times are stored as NULL, want all", nulls)
	}
}

// TestPutAgentsOneTransaction checks that a batch is one write of one
// transaction, however many agents it holds.
func TestPutAgentsOneTransaction(t *testing.T) {
	s, _ := openTest(t)
	batch := make([]store.Agent, 1000)
	for i := range batch {
		batch[i] = testAgent(i)
	}
	claimAgents(t, s, batch...)
	commits, writes := s.commits.Load(), s.writes.Load()
	if err := s.PutAgents(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	if c, w := s.commits.Load()-commits, s.writes.Load()-writes; c != 1 || w != 1 {
		t.Errorf("PutAgents of %d agents took %d transactions carrying %d writes, want 1 and 1", len(batch), c, w)
	}
	if err := s.PutAgents(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if c := s.commits.Load() - commits; c != 1 {
		t.Errorf("an empty PutAgents committed a transaction")
	}
}

// TestPutAgentsAllOrNothing makes one row of a batch fail and checks that
// the batch left nothing behind, while a write queued in the same
// transaction commits.
func TestPutAgentsAllOrNothing(t *testing.T) {
	g, opt := newGate()
	s, path := openTest(t, opt)
	boom := testAgent(5)
	boom.ID = "boom"
	claims := claimAgents(t, s, testAgent(1), testAgent(2), boom)
	if _, err := rawDB(t, path).Exec(`CREATE TRIGGER fault BEFORE UPDATE ON agents WHEN NEW.id = 'boom'
		BEGIN SELECT RAISE(ABORT, 'injected fault'); END`); err != nil {
		t.Fatal(err)
	}

	changed := testAgent(1)
	changed.Status = "evicted"
	bad := []store.Agent{changed, testAgent(3), boom, testAgent(4)}
	g.armed.Store(true)
	errs := make(chan error, 2)
	go func() { errs <- s.Append(t.Context(), store.AuditEntry{Action: "first"}) }()
	<-g.held
	go func() { errs <- s.PutAgents(t.Context(), bad) }()
	waitQueued(s, 1)
	go func() { errs <- s.Append(t.Context(), store.AuditEntry{Action: "after"}) }()
	waitQueued(s, 2)
	g.release()
	var failed int
	for range 3 {
		if err := <-errs; err != nil {
			failed++
			if !strings.Contains(err.Error(), `"boom"`) {
				t.Errorf("PutAgents error %q does not name the agent that failed", err)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d writes failed, want 1 (the batch)", failed)
	}
	got, err := s.Agents(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Status != "healthy" {
		t.Errorf("after a failed batch, Agents = %+v; want the 3 agents as they were", got)
	}
	if log, _ := s.AuditLog(t.Context()); len(log) != claims+2 || store.VerifyAuditChain(log) != nil {
		t.Errorf("audit log has %d entries, want the %d claims and the 2 written with the failed batch", len(log), claims)
	}
}

func TestPutAgentsSameIDTwice(t *testing.T) {
	s, _ := openTest(t)
	first, last := testAgent(1), testAgent(1)
	last.Status = "unhealthy"
	claimAgents(t, s, first, testAgent(2))
	if err := s.PutAgents(t.Context(), []store.Agent{first, testAgent(2), last}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Agents(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Status != "unhealthy" {
		t.Errorf("Agents = %+v; want 2 agents, the first one as its last record says", got)
	}
}

// TestEntityMarksUseClock checks that a zero time given to RevokeEntity or
// RotateEntity is read from the clock rather than recorded as zero, which
// would read as "not revoked", and that a second revocation keeps the
// first one's time.
func TestEntityMarksUseClock(t *testing.T) {
	now := time.Date(2026, 5, 4, 3, 2, 1, 987654321, time.UTC)
	s, _ := openTest(t, withClock(func() time.Time { return now }))
	if err := s.PutEntity(t.Context(), testEntity("e"), false, store.AuditEntry{Action: "entity.register"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RotateEntity(t.Context(), "e", time.Time{}, store.AuditEntry{Action: "entity.rotate"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeEntity(t.Context(), "e", time.Time{}, store.AuditEntry{Action: "entity.revoke"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeEntity(t.Context(), "e", now.Add(time.Hour), store.AuditEntry{Action: "entity.revoke"}); err != nil {
		t.Fatalf("second RevokeEntity: %v", err)
	}
	e, err := s.Entity(t.Context(), "e")
	if err != nil {
		t.Fatal(err)
	}
	if !e.RotatedAt.Equal(now) || !e.RevokedAt.Equal(now) {
		t.Errorf("RotatedAt %v, RevokedAt %v; want both the clock's %v", e.RotatedAt, e.RevokedAt, now)
	}
	checkChain(t, s, 4, "both revocations")
}

func TestRegistryTimeOutOfRange(t *testing.T) {
	s, _ := openTest(t)
	noExpiry := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC) // RFC 5280's "no expiry"
	e := testEntity("e")
	e.NotAfter = noExpiry
	err := s.PutEntity(t.Context(), e, false, store.AuditEntry{Action: "entity.register"})
	if err == nil || !strings.Contains(err.Error(), "NotAfter") {
		t.Errorf("PutEntity(NotAfter in 9999) = %v, want an error naming NotAfter", err)
	}
	ag := testAgent(2)
	ag.RotateFrom = noExpiry
	err = s.PutAgents(t.Context(), []store.Agent{testAgent(1), ag})
	if err == nil || !strings.Contains(err.Error(), "RotateFrom") || !strings.Contains(err.Error(), ag.ID) {
		t.Errorf("PutAgents(RotateFrom in 9999) = %v, want an error naming the agent and RotateFrom", err)
	}
	if err := s.PutAgents(t.Context(), []store.Agent{{}}); err == nil || !strings.Contains(err.Error(), "empty id") {
		t.Errorf("PutAgents(agent without id) = %v, want an error about the empty id", err)
	}
	if es, _ := s.Entities(t.Context()); len(es) != 0 {
		t.Errorf("%d entities recorded after refused writes", len(es))
	}
	if as, _ := s.Agents(t.Context()); len(as) != 0 {
		t.Errorf("%d agents recorded after refused writes", len(as))
	}
	if log, _ := s.AuditLog(t.Context()); len(log) != 0 {
		t.Errorf("%d audit entries after refused writes", len(log))
	}
}

// TestMigrateFromVersion1 opens a file that an older meshtrust left at
// schema version 1 and checks that it gains the registry and keeps what it
// held.
func TestMigrateFromVersion1(t *testing.T) {
	ms, err := sqliteDialect{}.migrations()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "meshtrust.db")
	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	c := testCert(1)
	if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Take the file back to version 1.
	db := rawDB(t, path)
	if _, err := db.Exec(`DROP TABLE join_tokens; DROP TABLE events;
		DROP TABLE revoked_identities; DROP TABLE blocked_keys;
		DROP INDEX certs_key_hash; ALTER TABLE certs DROP COLUMN key_hash; ALTER TABLE certs DROP COLUMN authorized_by;
		DROP INDEX certs_names; ALTER TABLE certs DROP COLUMN agent_node;
		DROP TABLE entities; DROP TABLE agents; DROP TABLE policies; DROP TABLE ca_state; DROP TABLE store_identity;
		DELETE FROM schema_version WHERE version > 1`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err = OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(version 1 file): %v", err)
	}
	defer s.Close()
	if _, err := s.Cert(t.Context(), c.Serial); err != nil {
		t.Errorf("Cert after the migration: %v", err)
	}
	if err := s.PutEntity(t.Context(), testEntity("e"), false, store.AuditEntry{Action: "entity.register"}); err != nil {
		t.Errorf("PutEntity after the migration: %v", err)
	}
	if err := s.PutAgentAudited(t.Context(), testAgent(1), store.AuditEntry{Action: "agent.claim"}); err != nil {
		t.Errorf("PutAgentAudited after the migration: %v", err)
	}
	var version int
	if err := s.rdb.QueryRow("SELECT max(version) FROM schema_version").Scan(&version); err != nil || version != len(ms) {
		t.Errorf("schema version %d (%v), want %d", version, err, len(ms))
	}
	if log, err := s.AuditLog(t.Context()); err != nil || store.VerifyAuditChain(log) != nil || len(log) != 3 {
		t.Errorf("audit log after the migration: %d entries, %v", len(log), err)
	}
	if p := storetest.SQLiteProblems(t, path); len(p) != 0 {
		t.Errorf("problems of the migrated file: %q", p)
	}
}

func TestRegistryTablesStrict(t *testing.T) {
	_, path := openTest(t)
	db := rawDB(t, path)
	for _, q := range []string{
		"INSERT INTO agents (id, owner, entity, payload, cert_serial, cert_fingerprint, status, reason, last_seen) VALUES ('x', '', '', x'', '', '', '', '', 'yesterday')",
		"INSERT INTO entities (name, ca_pem, fingerprint, subject, revoked_at) VALUES ('x', x'', '', '', 'never')",
	} {
		if _, err := db.Exec(q); err == nil {
			t.Errorf("%s succeeded; a STRICT table refuses text in an INTEGER column", q)
		}
	}
	if _, err := db.Exec("INSERT INTO agents (id) VALUES ('x')"); err == nil {
		t.Error("an agent row without its NOT NULL columns was accepted")
	}
	var count int
	if err := db.QueryRow("SELECT count(*) FROM agents").Scan(&count); err != nil || count != 0 {
		t.Errorf("%d agent rows (%v), want 0", count, err)
	}
}

// TestMigrateAgentSource opens a file a meshtrust of schema version 6 left
// with an agent in it: the agent comes back with no trust source (the
// registry binds it on the owner's next heartbeat), and a source written
// from then on is kept.
func TestMigrateAgentSource(t *testing.T) {
	db, path := oldDB(t, 6)
	old := testAgent(1)
	rows, err := (&Store{d: sqliteDialect{}}).agentRows([]store.Agent{old})
	if err != nil {
		t.Fatal(err)
	}
	args := rows[0]
	// The columns of version 6, without the source.
	if _, err := db.Exec(`INSERT INTO agents (id, owner, entity, payload, cert_serial, cert_fingerprint,
		status, reason, registered_at, last_seen, rotate_from, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args[:12]...); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(version 6 file): %v", err)
	}
	defer s.Close()
	got, err := s.Agents(t.Context())
	if err != nil || len(got) != 1 || got[0].Owner != old.Owner || got[0].Source != "" {
		t.Fatalf("agents after the migration: %+v, %v; want %s with no source", got, err, old.ID)
	}
	bound := old
	bound.Source, bound.Version = "localca", 1
	// Binding the source is a claim: the ownership changes.
	if err := s.PutAgentAudited(t.Context(), bound, store.AuditEntry{Action: "agent.claim"}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Agents(t.Context()); err != nil || len(got) != 1 || got[0].Source != "localca" {
		t.Fatalf("agents after binding the source: %+v, %v", got, err)
	}
}

func TestPolicies(t *testing.T) {
	s, _ := openTest(t)
	if _, err := s.Policy(t.Context(), "p"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Policy before any: %v", err)
	}
	for _, doc := range []string{"rules: []", "rules:\n  - name: a\n"} {
		if err := s.PutPolicy(t.Context(), store.Policy{Name: "p", Document: doc}, store.AuditEntry{Action: "policy.set"}); err != nil {
			t.Fatal(err)
		}
		p, err := s.Policy(t.Context(), "p")
		if err != nil || p.Document != doc || p.Updated.IsZero() {
			t.Fatalf("Policy = %+v, %v", p, err)
		}
	}
	evs, err := s.Events(t.Context(), 0, 0)
	if err != nil || len(evs) != 2 || evs[1].Kind != store.EventPolicySet || evs[1].CommonName != "p" {
		t.Fatalf("events %+v, %v", evs, err)
	}
	if err := s.PutPolicy(t.Context(), store.Policy{}, store.AuditEntry{Action: "policy.set"}); err == nil {
		t.Fatal("a policy without a name was recorded")
	}
	if err := s.PutPolicy(t.Context(), store.Policy{Name: "a", Document: "rules: []"}, store.AuditEntry{Action: "policy.set"}); err != nil {
		t.Fatal(err)
	}
	if names, err := s.PolicyNames(t.Context()); err != nil || !slices.Equal(names, []string{"a", "p"}) {
		t.Fatalf("PolicyNames = %q, %v; want [a p]", names, err)
	}
}

// TestAgentQueriesUseIndexes checks that the queries of certificates by
// name, and over a node's agent certificates, are answered from
// certs_names, never by a scan of every certificate: each must say
// agent_node in so many words, as the index's first column.
func TestAgentQueriesUseIndexes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshtrust.db")
	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db := rawDB(t, path)
	defer db.Close()
	for _, q := range []struct {
		name, query string
		args        []any
	}{
		{"liveAgents", liveAgentsQuery, []any{"ct200", int64(1)}},
		{"identityCerts of a node", identityCertsQuery, []any{"ct200.mesh", "ct200", int64(1), ""}},
		{"identityCerts of an agent", identityCertsQuery, []any{"opus@ct200", "", int64(1), "ct200"}},
		{"hasLiveCert", hasLiveCertQuery, []any{"opus@ct200", int64(1), "ct200"}},
		{"certsByName", certsByNameQuery, []any{"opus@ct200", "ct200"}},
		{"liveCert", liveCertQuery, []any{"opus@ct200", int64(1), "ct200"}},
	} {
		rows, err := db.Query("EXPLAIN QUERY PLAN "+sqliteDialect{}.query(q.query), q.args...)
		if err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		joined := strings.Join(plan, "\n")
		if !strings.Contains(joined, "certs_names (agent_node=?") {
			t.Errorf("%s does not search certs_names by agent_node:\n%s", q.name, joined)
		}
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN certs") || strings.HasPrefix(step, "SCAN c ") || step == "SCAN c" {
				t.Errorf("%s scans the certificates: %q in\n%s", q.name, step, joined)
			}
		}
	}
}

// TestMigrateCertNamesIndex opens a file a meshtrust of schema version 15
// left, with certificates of one agent name recorded under both agent_node
// values a row of that name can hold (the node, and ” as a row recorded
// before migration 0006 under another kind holds it): the two name indexes
// become certs_names, and every lookup by name still finds both rows,
// and revoking the name revokes both.
func TestMigrateCertNamesIndex(t *testing.T) {
	db, path := oldDB(t, 15)
	agent, old, node := testCert(1), testCert(2), testCert(3)
	agent.CommonName, old.CommonName, node.CommonName, node.Kind = "opus@ct111", "opus@ct111", "ct111.mesh", "node"
	// Live when the store revokes them, at its clock's now.
	agent.NotAfter, old.NotAfter, node.NotAfter = time.Now().Add(time.Hour), time.Now().Add(time.Hour), time.Now().Add(time.Hour)
	insertCertRow(t, db, agent)
	insertCertRow(t, db, old)
	insertCertRow(t, db, node)
	if _, err := db.Exec(`UPDATE certs SET agent_node = '' WHERE serial = ?`, old.Serial); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(version 15 file): %v", err)
	}
	defer s.Close()
	serials := serialsByName(t, s, "opus@ct111")
	if want := []string{agent.Serial, old.Serial}; !slices.Equal(serials, want) {
		t.Errorf("CertsByName after the migration = %q, want %q", serials, want)
	}
	if live, err := s.HasLiveCert(t.Context(), "opus@ct111", time.Now()); err != nil || !live {
		t.Errorf("HasLiveCert(opus@ct111) = %v, %v; want true", live, err)
	}
	if names, err := s.LiveAgents(t.Context(), "ct111", time.Now()); err != nil || !slices.Equal(names, []string{"opus@ct111"}) {
		t.Errorf("LiveAgents(ct111) = %q, %v; want [opus@ct111]", names, err)
	}
	_, revs, err := s.RevokeIdentity(t.Context(), store.IdentityRevocation{Name: "opus@ct111", Reason: 1}, store.AuditEntry{Action: "identity.revoke"})
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 2 {
		t.Errorf("revoking opus@ct111 revoked %d certificates, want 2 (%+v)", len(revs), revs)
	}
	if live, err := s.HasLiveCert(t.Context(), "opus@ct111", time.Now()); err != nil || live {
		t.Errorf("HasLiveCert(opus@ct111) after its revocation = %v, %v; want false", live, err)
	}

	requireCertsIndexes(t, s)
}

// TestMigrateCertsWithoutFingerprintIndex opens a file a meshtrust of
// schema version 14 left with certificates and a revocation in it: the
// certs table is rebuilt without the fingerprint's UNIQUE index, every row
// comes back in its recorded order, the revocation still refers to its
// certificate, and foreign keys are enforced again once the store is open.
func TestMigrateCertsWithoutFingerprintIndex(t *testing.T) {
	db, path := oldDB(t, 14)
	// Serials out of order and one issued_at: only the rowid orders them.
	var want []string
	for _, n := range []int{3, 1, 2} {
		c := testCert(n)
		c.CommonName = "opus@ct111"
		insertCertRow(t, db, c)
		want = append(want, c.Serial)
	}
	revoked := testCert(1).Serial
	if _, err := db.Exec(`INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at)
		VALUES (?, 'opus@ct111', '1c0ffee1', 1, 1)`, revoked); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(version 14 file): %v", err)
	}
	defer s.Close()
	serials := serialsByName(t, s, "opus@ct111")
	if !slices.Equal(serials, want) {
		t.Errorf("CertsByName after the migration = %q, want %q (the recorded order)", serials, want)
	}
	if c, err := s.Cert(t.Context(), revoked); err != nil || c.Fingerprint != testCert(1).Fingerprint || c.KeyHash != testCert(1).KeyHash {
		t.Errorf("Cert(%s) = %+v, %v", revoked, c, err)
	}
	if _, _, err := s.Revoke(t.Context(), store.Revocation{Serial: revoked, Reason: 1}, store.AuditEntry{Action: "cert.revoke"}); !errors.Is(err, store.ErrExists) {
		t.Errorf("Revoke(%s) again = %v, want store.ErrExists (the revocation survived)", revoked, err)
	}
	if _, err := s.wdb.ExecContext(t.Context(), `INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at)
		VALUES ('ffff', 'x', 'y', 1, 1)`); err == nil {
		t.Error("the write connection accepted a revocation of an unrecorded serial: foreign keys are off after the migration")
	}

	requireCertsIndexes(t, s)
}

// TestMigrationBreakingForeignKeyRollsBack: a migration that leaves a row
// referring to a missing one (here, deleting a revoked certificate while
// foreign keys are off for the migration) fails, and the schema and rows
// stay as they were.
func TestMigrationBreakingForeignKeyRollsBack(t *testing.T) {
	ms, err := sqliteDialect{}.migrations()
	if err != nil {
		t.Fatal(err)
	}
	db, path := oldDB(t, 0)
	insertCertRow(t, db, testCert(1))
	if _, err := db.Exec(`INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at)
		VALUES (?, 'x', 'y', 1, 1)`, testCert(1).Serial); err != nil {
		t.Fatal(err)
	}
	bad := append(slices.Clone(ms), migration{version: len(ms) + 1, name: "bad.sql", sql: `DELETE FROM certs`})
	err = applyMigrations(t.Context(), sqliteDialect{}, db, path, time.Now, bad)
	if err == nil || !strings.Contains(err.Error(), "foreign key check") {
		t.Fatalf("applying a migration that orphans a revocation = %v, want a foreign key check error", err)
	}
	var version, certs int
	if err := db.QueryRow(`SELECT max(version) FROM schema_version`).Scan(&version); err != nil || version != len(ms) {
		t.Errorf("schema version %d (%v), want %d", version, err, len(ms))
	}
	if err := db.QueryRow(`SELECT count(*) FROM certs`).Scan(&certs); err != nil || certs != 1 {
		t.Errorf("%d certificates (%v), want 1", certs, err)
	}
}

// insertCertRow writes c into the certs table of db as schema versions 12
// to 15 lay it out, without the store.
func insertCertRow(t *testing.T, db *sql.DB, c store.Cert) {
	t.Helper()
	args, err := certArgs(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO certs (serial, common_name, kind, sans, not_before, not_after, fingerprint,
		issuer_key_id, pem, issued_at, key_hash, authorized_by, agent_node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...); err != nil {
		t.Fatal(err)
	}
}

// serialsByName returns the serials CertsByName(name) answers, in its
// order.
func serialsByName(t *testing.T, s *Store, name string) []string {
	t.Helper()
	got, err := s.CertsByName(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, c := range got {
		serials = append(serials, c.Serial)
	}
	return serials
}

// requireCertsIndexes fails t unless the certs table's indexes are the
// current schema's: the key hash, the names (migration 0016) and the
// serial's primary key.
func requireCertsIndexes(t *testing.T, s *Store) {
	t.Helper()
	rows, err := s.rdb.QueryContext(t.Context(), `SELECT name FROM pragma_index_list('certs') ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var indexes []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		indexes = append(indexes, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if w := []string{"certs_key_hash", "certs_names", "sqlite_autoindex_certs_1"}; !slices.Equal(indexes, w) {
		t.Errorf("indexes of certs = %q, want %q", indexes, w)
	}
}
