// Package sqlite implements store.Store, the registry's store.EntityStore
// and store.AgentStore, and enrollment's store.TokenStore and
// store.EventStore, on an embedded SQLite database, the default store of a
// single meshd.
//
// The database is one file in WAL mode with synchronous=FULL, so a write
// that has returned survives a crash of the process or of the machine as far
// as SQLite and the file system guarantee it. All writes go through one
// writer goroutine that commits whatever writes are waiting in a single
// transaction (group commit): one fsync acknowledges many writers, so
// throughput grows with concurrency while each write stays durable before
// it is acknowledged. Reads use their own pool of connections and never
// wait for the writer.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// busyTimeout is how long a connection waits for a lock held by another
// connection (another process, or a checkpoint) before failing.
const busyTimeout = 10 * time.Second

// maxBatch caps how many writes share one transaction, which bounds the
// latency a write can add to the others in its batch.
const maxBatch = 256

// An Option configures a Store.
type Option func(*options)

type options struct {
	now func() time.Time
	// beforeBatch, if set, runs in the writer after it has taken the first
	// request of a batch and before it collects the rest. Tests use it to
	// build batches deterministically.
	beforeBatch func()
}

// WithClock sets the clock the store reads when a record leaves a time
// unset (Cert.IssuedAt, Revocation.RevokedAt, AuditEntry.Time, the time
// given to RevokeEntity and RotateEntity) and when it records a schema
// migration. The default, and what a nil now means, is time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// withBeforeBatch installs a hook that the writer runs before it collects
// each batch; see options.beforeBatch.
func withBeforeBatch(f func()) Option {
	return func(o *options) { o.beforeBatch = f }
}

// Store is a store.Store on an SQLite file. Open returns one; it is safe for
// concurrent use and must be closed.
type Store struct {
	path string
	now  func() time.Time

	// wdb holds the one write connection; only the writer goroutine uses
	// it once Open has returned.
	wdb   *sql.DB
	stmts *writeStmts
	// rdb is the pool of query-only connections that serve reads.
	rdb *sql.DB
	// liveAgents, hasLiveCert and issuanceBlock are liveAgentsQuery,
	// hasLiveCertQuery and issuanceBlockQuery, prepared on rdb.
	liveAgents, hasLiveCert, issuanceBlock *sql.Stmt

	// mu guards closed and sending on reqs: Close takes it exclusively so
	// that no send can race with close(reqs). Reads hold it shared so that
	// Close waits for them before it closes the pools.
	mu     sync.RWMutex
	closed bool
	reqs   chan *request
	// writerDone is closed when the writer goroutine has returned.
	writerDone  chan struct{}
	beforeBatch func()

	// Counters for tests and benchmarks: committed transactions and the
	// writes they carried.
	commits atomic.Int64
	writes  atomic.Int64
}

// Open opens the store in the SQLite file at path, creating the file with
// mode 0600 if it does not exist and bringing its schema up to date. The
// directory that holds path must exist. Open fails with an error wrapping
// ErrSchemaTooNew if the file was written by a newer meshtrust.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := createFile(abs); err != nil {
		return nil, err
	}

	wdb, err := sql.Open("sqlite", dsn(abs,
		"busy_timeout("+fmt.Sprint(busyTimeout.Milliseconds())+")",
		"foreign_keys(1)",
		"journal_mode(WAL)",
		"synchronous(FULL)",
		// Every certificate dirties a page of each index it is in, at a
		// place its serial, fingerprint or name decides: a write cache
		// (here up to 32 MiB) that holds those pages saves reading them
		// back, and checkpointing every 8,000 pages rather than SQLite's
		// 1,000 copies each hot page into the database once for many
		// group commits rather than once for a few. The WAL then grows to
		// about 32 MiB before it is reused.
		"cache_size(-32768)",
		"wal_autocheckpoint(8000)",
	))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	if err := checkWriteConn(ctx, wdb); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	if err := migrate(ctx, wdb, abs, o.now); err != nil {
		wdb.Close()
		return nil, err
	}
	stmts, err := prepareWriteStmts(ctx, wdb)
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}

	rdb, err := sql.Open("sqlite", dsn(abs,
		"busy_timeout("+fmt.Sprint(busyTimeout.Milliseconds())+")",
		"query_only(1)",
	))
	if err != nil {
		stmts.close()
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	rdb.SetMaxOpenConns(n)
	rdb.SetMaxIdleConns(n)
	if err := rdb.PingContext(ctx); err != nil {
		rdb.Close()
		stmts.close()
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	// Prepared once, for every read connection as it first runs them:
	// compiling one costs more than running it, and they run on every
	// /agent-cert and /enroll.
	var read [3]*sql.Stmt
	for i, q := range []string{liveAgentsQuery, hasLiveCertQuery, issuanceBlockQuery} {
		if read[i], err = rdb.PrepareContext(ctx, q); err != nil {
			rdb.Close() // closes the statements prepared on it
			stmts.close()
			wdb.Close()
			return nil, fmt.Errorf("sqlite: open %s: prepare %q: %w", abs, q, err)
		}
	}

	s := &Store{
		path:          abs,
		now:           o.now,
		wdb:           wdb,
		stmts:         stmts,
		rdb:           rdb,
		liveAgents:    read[0],
		hasLiveCert:   read[1],
		issuanceBlock: read[2],
		reqs:          make(chan *request, maxBatch),
		writerDone:    make(chan struct{}),
		beforeBatch:   o.beforeBatch,
	}
	go s.writer()
	return s, nil
}

// createFile creates the database file with mode 0600 unless it exists, so
// SQLite never creates it with the process umask's wider default. SQLite
// gives the -wal and -shm files the mode of the database file.
func createFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, os.ErrExist):
		return nil
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("sqlite: open %s: directory %s does not exist; create it first: %w", path, filepath.Dir(path), err)
	case err != nil:
		return fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// Make the new directory entry durable too, or a power loss could take
	// the whole file with it.
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sqlite: sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sqlite: sync directory %s: %w", dir, err)
	}
	return nil
}

// dsn returns the modernc.org/sqlite data source name for the file at the
// absolute path abs, running pragmas on every new connection. Writes begin
// IMMEDIATE so that a transaction takes the write lock up front, where
// busy_timeout applies, rather than failing when it upgrades later.
func dsn(abs string, pragmas ...string) string {
	q := url.Values{}
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	// A file: URI with an escaped path, so a '?' or '#' in the path is
	// part of the name and not the start of the parameters.
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	return u.String()
}

// checkWriteConn confirms that the pragmas that durability depends on took
// effect; journal_mode in particular reports, rather than fails, when it
// cannot switch to WAL.
func checkWriteConn(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, not WAL (is the file on a file system that supports shared memory?)", mode)
	}
	var synchronous, fk int
	if err := db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&synchronous); err != nil {
		return err
	}
	if synchronous != 2 {
		return fmt.Errorf("synchronous is %d, not FULL (2)", synchronous)
	}
	if err := db.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return err
	}
	if fk != 1 {
		return errors.New("foreign keys are not enforced")
	}
	return nil
}

// Close waits for the writes already queued to commit, stops the writer and
// closes the database. Calls after Close, Close included, return
// store.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return store.ErrClosed
	}
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()

	<-s.writerDone
	s.stmts.close()
	if err := errors.Join(s.liveAgents.Close(), s.hasLiveCert.Close(), s.issuanceBlock.Close(), s.rdb.Close(), s.wdb.Close()); err != nil {
		return fmt.Errorf("sqlite: close %s: %w", s.path, err)
	}
	return nil
}

// IntegrityCheck runs SQLite's integrity and foreign key checks over the
// whole database and returns an error describing the first problems found,
// or nil if the file is sound. It reads every page, so it is for tests and
// operators, not for a hot path.
func (s *Store) IntegrityCheck(ctx context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.ErrClosed
	}
	var problems []string
	rows, err := s.rdb.QueryContext(ctx, "PRAGMA integrity_check(20)")
	if err != nil {
		return fmt.Errorf("sqlite: integrity check of %s: %w", s.path, err)
	}
	for rows.Next() {
		var msg string
		if err := rows.Scan(&msg); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: integrity check of %s: %w", s.path, err)
		}
		if msg != "ok" {
			problems = append(problems, msg)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("sqlite: integrity check of %s: %w", s.path, err)
	}

	rows, err = s.rdb.QueryContext(ctx, "PRAGMA foreign_key_check")
	if err != nil {
		return fmt.Errorf("sqlite: foreign key check of %s: %w", s.path, err)
	}
	for rows.Next() {
		var table, parent string
		var rowid sql.NullInt64
		var fkid int64
		if err := rows.Scan(&table, &rowid, &parent, &fkid); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: foreign key check of %s: %w", s.path, err)
		}
		problems = append(problems, fmt.Sprintf("row %d of %s refers to a missing row of %s", rowid.Int64, table, parent))
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("sqlite: foreign key check of %s: %w", s.path, err)
	}

	if len(problems) > 0 {
		return fmt.Errorf("sqlite: %s is damaged; restore it from a backup: %s", s.path, strings.Join(problems, "; "))
	}
	return nil
}
