package sqlstore

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) store.Store {
		s, err := OpenSQLite(t.Context(), filepath.Join(dir, "meshtrust.db"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// openTest opens a store in a new temporary directory and closes it when
// t ends.
func openTest(t *testing.T, opts ...Option) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meshtrust.db")
	s, err := OpenSQLite(t.Context(), path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// rawDB opens the file at path with a plain connection, as an operator's
// sqlite3 shell or an attacker with access to the file would.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// oldDB returns a new SQLite file at path, migrated to schema version
// (0: the newest) as a meshtrust of that version left it, open without the
// store.
func oldDB(t *testing.T, version int) (db *sql.DB, path string) {
	t.Helper()
	ms, err := sqliteDialect{}.migrations()
	if err != nil {
		t.Fatal(err)
	}
	if version == 0 {
		version = len(ms)
	}
	path = filepath.Join(t.TempDir(), "meshtrust.db")
	db = rawDB(t, path)
	if err := applyMigrations(t.Context(), sqliteDialect{}, db, path, time.Now, ms[:version]); err != nil {
		t.Fatalf("migrate to version %d: %v", version, err)
	}
	return db, path
}

// checkChain fails t unless the audit log of s is an intact hash chain of
// want entries; what says which entries they are.
func checkChain(t *testing.T, s *Store, want int, what string) {
	t.Helper()
	log, err := s.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.VerifyAuditChain(log); err != nil || len(log) != want {
		t.Errorf("audit log has %d entries, VerifyAuditChain = %v; want %d (%s), nil", len(log), err, want, what)
	}
}

func testCert(n int) store.Cert {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return store.Cert{
		Serial:      fmt.Sprintf("%x", 0x5000+n),
		CommonName:  fmt.Sprintf("agent%d@ct111", n),
		Kind:        "agent",
		SANs:        []string{"URI:spiffe://mesh/agent/" + fmt.Sprint(n)},
		NotBefore:   at,
		NotAfter:    at.Add(90 * 24 * time.Hour),
		Fingerprint: fmt.Sprintf("%064x", n),
		IssuerKeyID: "1c0ffee1",
		PEM:         []byte("-----BEGIN CERTIFICATE-----\n"),
		IssuedAt:    at,
		KeyHash:     fmt.Sprintf("%064x", n),
	}
}

func appendEntries(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		e := store.AuditEntry{Time: time.Unix(int64(i), 0), Action: "ca.init", Identity: fmt.Sprintf("id%d", i+1), Outcome: store.OutcomeOK}
		if err := s.Append(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	s, path := openTest(t)
	appendEntries(t, s, 1) // so the WAL exists
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), mode)
		}
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "meshtrust.db")
	_, err := OpenSQLite(t.Context(), path)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Open in a missing directory = %v, want an error saying the directory does not exist", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open created the missing directory (stat: %v)", err)
	}
}

func TestOpenOddPath(t *testing.T) {
	// A '?' or '#' in the path must not be taken for the start of DSN
	// parameters.
	dir := filepath.Join(t.TempDir(), "a?b#c d%20")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "meshtrust.db")
	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	appendEntries(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at %s: %v", path, err)
	}
}

func TestPragmas(t *testing.T) {
	s, _ := openTest(t)
	tests := []struct {
		pragma, want string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "2"},
		{"foreign_keys", "1"},
		{"busy_timeout", fmt.Sprint(busyTimeout.Milliseconds())},
	}
	for _, tt := range tests {
		var got string
		if err := s.wdb.QueryRowContext(t.Context(), "PRAGMA "+tt.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("PRAGMA %s = %s, want %s", tt.pragma, got, tt.want)
		}
	}
	// The read pool must not be able to write.
	if _, err := s.rdb.ExecContext(t.Context(), "INSERT INTO crl_numbers VALUES ('x', 1)"); err == nil {
		t.Error("a write through the read pool succeeded")
	}
}

func TestSchemaVersion(t *testing.T) {
	ms, err := sqliteDialect{}.migrations()
	if err != nil {
		t.Fatal(err)
	}
	latest := ms[len(ms)-1].version
	s, path := openTest(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening a current file applies nothing twice.
	s, err = OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	var n, maxVersion int
	if err := db.QueryRow("SELECT count(*), max(version) FROM schema_version").Scan(&n, &maxVersion); err != nil {
		t.Fatal(err)
	}
	if n != len(ms) || maxVersion != latest {
		t.Fatalf("schema_version has %d rows up to version %d, want %d up to %d", n, maxVersion, len(ms), latest)
	}

	// A file from a newer meshtrust is refused.
	if _, err := db.Exec("INSERT INTO schema_version (version, name, applied_at) VALUES (?, 'future.sql', 0)", latest+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = OpenSQLite(t.Context(), path)
	if !errors.Is(err, ErrSchemaTooNew) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("OpenSQLite(newer schema) = %v, want an error wrapping ErrSchemaTooNew", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("version %d", latest+1)) {
		t.Errorf("error %q does not name the file's schema version", err)
	}
}

func TestAuditTamperDetected(t *testing.T) {
	// exec returns a tampering step that runs queries on a raw connection.
	exec := func(queries ...string) func(*sql.DB) error {
		return func(db *sql.DB) error {
			for _, q := range queries {
				if _, err := db.Exec(q); err != nil {
					return fmt.Errorf("%s: %w", q, err)
				}
			}
			return nil
		}
	}
	tests := []struct {
		name string
		// tamper edits a log of five entries, as someone with write access
		// to the file would: the triggers are no obstacle to them.
		tamper func(*sql.DB) error
		want   string
	}{
		{
			name:   "entry altered",
			tamper: exec("DROP TRIGGER audit_no_update", "UPDATE audit SET identity = 'mallory' WHERE seq = 3"),
			want:   "entry 3 (ca.init mallory) was altered",
		},
		{
			name: "entry altered and its hash recomputed",
			// The forger can rehash the entry they changed, but then the
			// next entry no longer points at it.
			tamper: func(db *sql.DB) error {
				if err := exec("DROP TRIGGER audit_no_update")(db); err != nil {
					return err
				}
				var e store.AuditEntry
				var tm int64
				if err := db.QueryRow("SELECT seq, time, action, identity, outcome, detail, prev_hash FROM audit WHERE seq = 2").
					Scan(&e.Seq, &tm, &e.Action, &e.Identity, &e.Outcome, &e.Detail, &e.PrevHash); err != nil {
					return err
				}
				e.Time = time.Unix(0, tm)
				e.Detail = "nothing happened here"
				_, err := db.Exec("UPDATE audit SET detail = ?, hash = ? WHERE seq = 2", e.Detail, store.HashEntry(e.PrevHash, e))
				return err
			},
			want: "entry 3 does not point at entry 2",
		},
		{
			name:   "entry deleted",
			tamper: exec("DROP TRIGGER audit_no_delete", "DELETE FROM audit WHERE seq = 4"),
			want:   "entry 4 has sequence number 5",
		},
		{
			name: "last entry replaced",
			tamper: exec("DROP TRIGGER audit_no_delete", "DROP TRIGGER audit_extends_chain",
				"DELETE FROM audit WHERE seq = 5",
				"INSERT INTO audit SELECT 5, time, action, 'mallory', outcome, detail, prev_hash, hash FROM audit WHERE seq = 4"),
			want: "entry 5 does not point at entry 4",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, path := openTest(t)
			appendEntries(t, s, 5)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			db := rawDB(t, path)
			if err := tt.tamper(db); err != nil {
				t.Fatalf("tampering: %v", err)
			}
			db.Close()

			s, err := OpenSQLite(t.Context(), path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			log, err := s.AuditLog(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			err = store.VerifyAuditChain(log)
			if !errors.Is(err, store.ErrAuditTampered) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("VerifyAuditChain = %v, want store.ErrAuditTampered naming %q", err, tt.want)
			}
		})
	}
}

func TestAuditTriggersRefuseTampering(t *testing.T) {
	s, path := openTest(t)
	appendEntries(t, s, 3)
	db := rawDB(t, path)
	tests := []struct {
		name, query string
	}{
		{"update", "UPDATE audit SET detail = 'x' WHERE seq = 2"},
		{"delete", "DELETE FROM audit WHERE seq = 3"},
		{"delete all", "DELETE FROM audit"},
		{"insert with a gap", "INSERT INTO audit SELECT 9, time, action, identity, outcome, detail, hash, hash FROM audit WHERE seq = 3"},
		{"insert off the chain", "INSERT INTO audit SELECT 4, time, action, identity, outcome, detail, prev_hash, hash FROM audit WHERE seq = 3"},
	}
	for _, tt := range tests {
		_, err := db.Exec(tt.query)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %s = %v, want the append-only trigger to refuse it", tt.name, tt.query, err)
		}
	}
	checkChain(t, s, 3, "the writes before the refused tampering")
	// The store's own writes still extend the chain.
	appendEntries(t, s, 1)
	if log, _ := s.AuditLog(t.Context()); store.VerifyAuditChain(log) != nil || len(log) != 4 {
		t.Errorf("Append after refused tampering: %d entries, VerifyAuditChain = %v", len(log), store.VerifyAuditChain(log))
	}
}

// TestChainAcrossProcesses shows that the writer reads the chain head from
// the file, so an entry appended by another process (another meshctl, a
// second store on the same file) does not fork the chain.
func TestChainAcrossProcesses(t *testing.T) {
	a, path := openTest(t)
	b, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 6 {
		s := a
		if i%2 == 1 {
			s = b
		}
		if err := s.Append(t.Context(), store.AuditEntry{Time: time.Unix(int64(i), 0), Action: "x", Outcome: store.OutcomeOK}); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	checkChain(t, a, 6, "the six appends of both stores")
}

// A certificate recorded twice is refused by its serial, the certs
// table's one key (a fingerprint hashes the DER, which holds the serial),
// and the second attempt writes no audit entry.
func TestDuplicateCertificate(t *testing.T) {
	s, _ := openTest(t)
	c := testCert(1)
	if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
		t.Fatal(err)
	}
	err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"})
	if !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), c.Serial) {
		t.Errorf("RecordCert(the same certificate again) = %v, want store.ErrExists naming the serial", err)
	}
	checkChain(t, s, 1, "one certificate recorded, one refused")
}

func TestClockFillsZeroTimes(t *testing.T) {
	now := time.Date(2026, 5, 4, 3, 2, 1, 987654321, time.FixedZone("X", 3600))
	s, _ := openTest(t, withClock(func() time.Time { return now }))
	c := testCert(1)
	c.IssuedAt = time.Time{}
	if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Revoke(t.Context(), store.Revocation{Serial: c.Serial, Reason: 1}, store.AuditEntry{Action: "cert.revoke"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Cert(t.Context(), c.Serial)
	if err != nil {
		t.Fatal(err)
	}
	log, err := s.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for name, tm := range map[string]time.Time{
		"Cert.IssuedAt":        got.IssuedAt,
		"Revocation.RevokedAt": r.RevokedAt,
		"audit entry 1 Time":   log[0].Time,
		"audit entry 2 Time":   log[1].Time,
	} {
		if !tm.Equal(now) {
			t.Errorf("%s = %v, want the clock's %v", name, tm, now)
		}
	}
	if err := store.VerifyAuditChain(log); err != nil {
		t.Error(err)
	}
}

func TestRevokeFillsAndChecksNames(t *testing.T) {
	s, _ := openTest(t)
	var certs []store.Cert
	for i := range 4 {
		c := testCert(i)
		certs = append(certs, c)
		if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		r       store.Revocation
		wantErr string
	}{
		{"names taken from the cert", store.Revocation{Serial: certs[0].Serial}, ""},
		{"names given and right", store.Revocation{Serial: certs[1].Serial, CommonName: certs[1].CommonName, IssuerKeyID: certs[1].IssuerKeyID}, ""},
		{"wrong common name", store.Revocation{Serial: certs[2].Serial, CommonName: "someone@else"}, "issued to"},
		{"wrong issuer", store.Revocation{Serial: certs[3].Serial, IssuerKeyID: "ffff"}, "issued by"},
		{"bad reason", store.Revocation{Serial: certs[3].Serial, Reason: 7}, "CRLReason"},
	}
	for _, tt := range tests {
		got, _, err := s.Revoke(t.Context(), tt.r, store.AuditEntry{Action: "cert.revoke"})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: Revoke = %v, want an error containing %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Revoke: %v", tt.name, err)
			continue
		}
		var c store.Cert
		for _, c = range certs {
			if c.Serial == tt.r.Serial {
				break
			}
		}
		if got.CommonName != c.CommonName || got.IssuerKeyID != c.IssuerKeyID {
			t.Errorf("%s: Revoke returned names %q, %q; want %q, %q", tt.name, got.CommonName, got.IssuerKeyID, c.CommonName, c.IssuerKeyID)
		}
	}
	rs, err := s.Revocations(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Errorf("%d revocations recorded, want 2", len(rs))
	}
}

func TestTimeOutOfRange(t *testing.T) {
	s, _ := openTest(t)
	c := testCert(1)
	c.NotAfter = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC) // RFC 5280's "no expiry"
	err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"})
	if err == nil || !strings.Contains(err.Error(), "NotAfter") {
		t.Fatalf("RecordCert(NotAfter in 9999) = %v, want an error naming NotAfter", err)
	}
	if _, err := s.Cert(t.Context(), c.Serial); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Cert after a refused RecordCert = %v, want store.ErrNotFound", err)
	}
}

// A gate stops the writer, once armed, before it gathers its next batch,
// until release is called. Requests sent meanwhile queue up, and the writer
// then takes them all into the transaction of the request it stopped on.
type gate struct {
	armed   atomic.Bool
	held    chan struct{} // closed when the writer has stopped
	release func()
}

func newGate() (*gate, Option) {
	g := &gate{held: make(chan struct{})}
	r := make(chan struct{})
	g.release = func() { close(r) }
	return g, withBeforeBatch(func() {
		if g.armed.CompareAndSwap(true, false) {
			close(g.held)
			<-r
		}
	})
}

// hold arms g and makes first, a write, on wg; it returns once the writer
// has taken first and stopped, so that the writes made next queue behind
// it until g.release.
func (g *gate) hold(wg *sync.WaitGroup, first func()) {
	g.armed.Store(true)
	wg.Go(first)
	<-g.held
}

// holdAppend is hold with first an Append of a, which must succeed.
func (g *gate) holdAppend(t *testing.T, s *Store, wg *sync.WaitGroup, a store.AuditEntry) {
	g.hold(wg, func() {
		if err := s.Append(t.Context(), a); err != nil {
			t.Errorf("Append(%s): %v", a.Action, err)
		}
	})
}

// waitQueued waits until n requests are queued for the writer.
func waitQueued(s *Store, n int) {
	for len(s.reqs) < n {
		runtime.Gosched()
	}
}

// TestFailedWriteRollsBackAlone makes the audit append of some writes fail
// after their certificate or revocation row was written, in one batch with
// writes that succeed, and checks that exactly the failed writes left
// nothing behind.
func TestFailedWriteRollsBackAlone(t *testing.T) {
	g, opt := newGate()
	s, path := openTest(t, opt)
	for i := range 2 {
		c := testCert(100 + i)
		if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
			t.Fatal(err)
		}
	}
	// A fault that strikes between a write's data row and its audit entry.
	if _, err := rawDB(t, path).Exec(`CREATE TRIGGER fault BEFORE INSERT ON audit WHEN NEW.action = 'boom'
		BEGIN SELECT RAISE(ABORT, 'injected fault'); END`); err != nil {
		t.Fatal(err)
	}

	ok := store.AuditEntry{Action: "ok", Outcome: store.OutcomeOK}
	boom := store.AuditEntry{Action: "boom"}
	writes := []struct {
		name    string
		write   func() error
		wantErr bool
	}{
		{"record", func() error { return s.RecordCert(t.Context(), testCert(1), ok) }, false},
		{"record, audit fails", func() error { return s.RecordCert(t.Context(), testCert(2), boom) }, true},
		{"revoke, audit fails", func() error {
			_, _, err := s.Revoke(t.Context(), store.Revocation{Serial: testCert(100).Serial, Reason: 1}, boom)
			return err
		}, true},
		{"revoke", func() error {
			_, _, err := s.Revoke(t.Context(), store.Revocation{Serial: testCert(101).Serial, Reason: 1}, ok)
			return err
		}, false},
		{"record", func() error { return s.RecordCert(t.Context(), testCert(3), ok) }, false},
	}
	var wg sync.WaitGroup
	g.holdAppend(t, s, &wg, ok)
	errs := make([]error, len(writes))
	for i, w := range writes {
		wg.Go(func() { errs[i] = w.write() })
		waitQueued(s, i+1) // queue them in order
	}
	g.release()
	wg.Wait()
	for i, w := range writes {
		if gotErr := errs[i] != nil; gotErr != w.wantErr {
			t.Errorf("write %d (%s): error %v, want error: %v", i, w.name, errs[i], w.wantErr)
		}
	}

	for _, tt := range []struct {
		serial string
		want   error
	}{
		{testCert(1).Serial, nil},
		{testCert(2).Serial, store.ErrNotFound},
		{testCert(3).Serial, nil},
	} {
		if _, err := s.Cert(t.Context(), tt.serial); !errors.Is(err, tt.want) {
			t.Errorf("Cert(%s) = %v, want %v", tt.serial, err, tt.want)
		}
	}
	rs, err := s.Revocations(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Serial != testCert(101).Serial {
		t.Errorf("revocations = %+v, want only %s", rs, testCert(101).Serial)
	}
	checkChain(t, s, 2+1+3, "two setup writes and the batch")
	if got := s.commits.Load(); got != 3 {
		t.Errorf("%d transactions committed, want 3 (two setup writes, then one batch)", got)
	}
}

// TestGroupCommit holds the writer on its first request while others queue
// up, then checks that they all commit in one transaction and that the one
// that fails (a duplicate serial) fails alone.
func TestGroupCommit(t *testing.T) {
	const queued = 40
	g, opt := newGate()
	s, _ := openTest(t, opt)
	var wg sync.WaitGroup
	g.holdAppend(t, s, &wg, store.AuditEntry{Action: "first", Outcome: store.OutcomeOK})

	errs := make([]error, queued)
	for i := range queued {
		c := testCert(i)
		if i == queued-1 {
			c = testCert(0) // a duplicate of request 0
		}
		wg.Go(func() {
			errs[i] = s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue", Identity: c.CommonName, Outcome: store.OutcomeOK})
		})
	}
	waitQueued(s, queued)
	g.release()
	wg.Wait()

	var exists int
	for i, err := range errs {
		switch {
		case errors.Is(err, store.ErrExists):
			exists++
		case err != nil:
			t.Errorf("request %d: %v", i, err)
		}
	}
	if exists != 1 {
		t.Errorf("%d requests failed with ErrExists, want exactly 1 (of the two with the same serial)", exists)
	}
	// The writer held the first request while the others queued, then
	// gathered them all into the first one's transaction.
	if got, want := s.commits.Load(), int64(1); got != want {
		t.Errorf("%d transactions committed, want %d", got, want)
	}
	if got, want := s.writes.Load(), int64(queued+1); got != want {
		t.Errorf("committed transactions carried %d writes, want %d", got, want)
	}
	checkChain(t, s, queued, "one per successful write")
	certs, err := s.Certs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != queued-1 {
		t.Errorf("%d certificates recorded, want %d", len(certs), queued-1)
	}
}

// TestCloseDrainsQueue checks that writes queued before Close are carried
// out and acknowledged, not dropped.
func TestCloseDrainsQueue(t *testing.T) {
	const queued = 20
	g, opt := newGate()
	s, path := openTest(t, opt)
	var wg sync.WaitGroup
	errs := make([]error, queued+1)
	g.hold(&wg, func() { errs[queued] = s.Append(t.Context(), store.AuditEntry{Action: "first"}) })
	for i := range queued {
		wg.Go(func() { errs[i] = s.Append(t.Context(), store.AuditEntry{Action: "queued"}) })
	}
	waitQueued(s, queued)
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	g.release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("write %d queued before Close: %v", i, err)
		}
	}
	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if log, err := s.AuditLog(t.Context()); err != nil || len(log) != queued+1 {
		t.Errorf("after reopen: %d entries, %v; want %d", len(log), err, queued+1)
	}
}

// TestSQLiteProblems: a sound file has no problem, and a
// dangling row is found.
func TestSQLiteProblems(t *testing.T) {
	s, path := openTest(t)
	c := testCert(1)
	if err := s.RecordCert(t.Context(), c, store.AuditEntry{Action: "cert.issue"}); err != nil {
		t.Fatal(err)
	}
	if p := storetest.SQLiteProblems(t, path); len(p) != 0 {
		t.Errorf("problems of a sound file: %q", p)
	}
	// A revocation whose certificate is gone, written with foreign keys
	// off as a careless repair might.
	db := rawDB(t, path)
	if _, err := db.Exec("INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at) VALUES ('dead', 'x', 'y', 1, 0)"); err != nil {
		t.Fatal(err)
	}
	if p := storetest.SQLiteProblems(t, path); len(p) == 0 || !strings.Contains(strings.Join(p, "; "), "revocations") {
		t.Errorf("problems with a dangling revocation: %q, want one naming revocations", p)
	}
}

// TestAuditHead: the head is the last entry, read alone; zero when empty.
func TestAuditHead(t *testing.T) {
	s, _ := openTest(t)
	if h, err := s.AuditHead(t.Context()); err != nil || h.Seq != 0 {
		t.Fatalf("head of an empty log = %+v, %v", h, err)
	}
	appendEntries(t, s, 3)
	log, err := s.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.AuditHead(t.Context())
	if err != nil || h != log[len(log)-1] {
		t.Errorf("AuditHead = %+v, %v; want %+v", h, err, log[len(log)-1])
	}
}
