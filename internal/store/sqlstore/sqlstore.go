// Package sqlstore implements store.Store on an SQL database: an embedded
// SQLite file (OpenSQLite), the default store of a single meshd, or a
// PostgreSQL database that several meshd replicas share (OpenPostgres).
//
// The queries, the writer and every invariant are written once; a small
// dialect holds what truly differs between the two (see dialect): how the
// database is opened, placeholders, how a unique violation is recognised,
// the audit head's lock, change notification and the schema migrations.
//
// A write is durable before its method returns (SQLite's WAL with
// synchronous=FULL, PostgreSQL's synchronous commit). All writes of a
// Store go through one writer goroutine that commits whatever writes are
// waiting in a single transaction (group commit), each in its own
// savepoint: one commit acknowledges many writers, so throughput grows
// with concurrency while each write stays durable before it is
// acknowledged. Reads use their own pool of connections and never wait for
// the writer.
//
// Every write transaction first reads the head of the audit hash chain;
// on PostgreSQL it locks the one row of audit_head, so the transactions of
// all replicas run one at a time: each sees every write committed before
// it, which makes the checks in a write (a serial recorded, a token spent,
// an identity revoked, an agent id owned, a live certificate held) and the
// write itself one step across replicas, and keeps the chain unbroken. On
// SQLite the file's one write lock does the same.
//
// Writes that append to the change feed notify PostgreSQL's channel
// meshtrust_events on commit; Wake turns those notifications into a
// wake-up for the feed (internal/events), which still reads the store for
// the truth.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// ErrSchemaTooNew reports a database whose schema was written by a newer
// version of meshtrust than the running one; using it could corrupt it.
var ErrSchemaTooNew = errors.New("store: database schema is newer than this program")

// maxBatch caps how many writes share one transaction, which bounds the
// latency a write can add to the others in its batch.
const maxBatch = 256

// An Option configures a Store.
type Option func(*options)

type options struct {
	// now is the clock the store reads when a record leaves a time unset
	// (Cert.IssuedAt, Revocation.RevokedAt, AuditEntry.Time, the time
	// given to RevokeEntity and RotateEntity) and when it records a
	// schema migration: time.Now, or a test's (export_test.go).
	now    func() time.Time
	logger *slog.Logger
	// listen starts PostgreSQL's LISTEN connection behind Wake.
	listen bool
	// expectID, if set, is the only store id the open accepts
	// (ExpectID).
	expectID string
	// beforeBatch, if set, runs in the writer after it has taken the first
	// request of a batch and before it collects the rest. Tests set it
	// (export_test.go) to build batches deterministically.
	beforeBatch func()
}

// WithLogger sets where the store logs a lost or regained PostgreSQL
// LISTEN connection; the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithoutListen opens a PostgreSQL store without the LISTEN connection:
// Wake returns nil. For short-lived processes (meshctl) that never follow
// the feed.
func WithoutListen() Option {
	return func(o *options) { o.listen = false }
}

func newOptions(opts []Option) options {
	o := options{now: time.Now, logger: slog.Default(), listen: true}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	return o
}

// Store is a store.Store on an SQL database. OpenSQLite and OpenPostgres
// return one; it is safe for concurrent use and must be closed.
type Store struct {
	d   dialect
	now func() time.Time
	// where names the database in errors (a path, or user@host:port/db
	// without a password).
	where string
	// id is the store's id, read once at open (ID).
	id string

	// wdb holds the one write connection; only the writer goroutine uses
	// it once the store is open.
	wdb   *sql.DB
	stmts *writeStmts
	// rdb is the pool of connections that serve reads.
	rdb *sql.DB
	// liveAgents, hasLiveCert and issuanceBlock are liveAgentsQuery,
	// hasLiveCertQuery and issuanceBlockQuery, prepared on rdb: compiling
	// one costs more than running it, and they run on every /agent-cert
	// and /enroll.
	liveAgents, hasLiveCert, issuanceBlock *sql.Stmt

	// mu guards closed and sending on reqs: Close takes it exclusively so
	// that no send can race with close(reqs). Reads hold it shared so that
	// Close waits for them before it closes the pools. Lock order: mu
	// before anything the writer holds; the writer never takes mu.
	mu     sync.RWMutex
	closed bool
	reqs   chan *request
	// writerDone is closed when the writer goroutine has returned.
	writerDone  chan struct{}
	beforeBatch func()

	// wake, stopListen and listenDone are PostgreSQL's LISTEN connection
	// (nil without one); see Wake.
	wake       chan struct{}
	stopListen context.CancelFunc
	listenDone chan struct{}

	// Committed transactions and the writes they carried, which tests
	// and benchmarks read (export_test.go).
	commits atomic.Int64
	writes  atomic.Int64
}

// start prepares the statements on wdb and rdb and starts the writer. On
// error it closes both.
func start(ctx context.Context, d dialect, where string, wdb, rdb *sql.DB, o options) (*Store, error) {
	fail := func(err error) (*Store, error) {
		rdb.Close() // closes the statements prepared on it
		wdb.Close()
		return nil, fmt.Errorf("%s: open %s: %w", d.name(), where, d.classify(err))
	}
	id, err := readID(ctx, d, wdb, where)
	if err != nil {
		rdb.Close()
		wdb.Close()
		return nil, err
	}
	stmts, err := prepareWriteStmts(ctx, d, wdb)
	if err != nil {
		return fail(err)
	}
	var read [3]*sql.Stmt
	for i, q := range []string{liveAgentsQuery, hasLiveCertQuery, issuanceBlockQuery} {
		if read[i], err = rdb.PrepareContext(ctx, d.query(q)); err != nil {
			stmts.close()
			return fail(fmt.Errorf("prepare %q: %w", q, err))
		}
	}
	s := &Store{
		d:             d,
		now:           o.now,
		where:         where,
		id:            id,
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

// Close waits for the writes already queued to commit, stops the writer
// (and PostgreSQL's listener) and closes the database. Calls after Close,
// Close included, return store.ErrClosed.
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
	if s.stopListen != nil {
		s.stopListen()
		<-s.listenDone
	}
	s.stmts.close()
	if err := errors.Join(s.liveAgents.Close(), s.hasLiveCert.Close(), s.issuanceBlock.Close(), s.rdb.Close(), s.wdb.Close()); err != nil {
		return fmt.Errorf("%s: close %s: %w", s.d.name(), s.where, err)
	}
	return nil
}

// errorf is fmt.Errorf with the dialect's name in front and every error
// argument classified (store.ErrUnavailable when the database could not
// be reached).
func (s *Store) errorf(format string, args ...any) error {
	for i, a := range args {
		if err, ok := a.(error); ok {
			args[i] = s.d.classify(err)
		}
	}
	return fmt.Errorf(s.d.name()+": "+format, args...)
}

// read runs fn, a read on rdb, unless the store is closed. Close waits
// for the reads under way.
func (s *Store) read(fn func() error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.ErrClosed
	}
	return fn()
}

// readRows runs query on the read pool and scans every row with scan. It
// answers store.ErrClosed after Close.
func readRows[T any](s *Store, ctx context.Context, query string, args []any, scan func(*sql.Rows) (T, error)) ([]T, error) {
	var out []T
	err := s.read(func() error {
		rows, err := s.rdb.QueryContext(ctx, s.d.query(query), args...)
		if err != nil {
			return err
		}
		return collect(rows, &out, scan)
	})
	return out, err
}

// collect scans every row of rows with scan into out and closes rows.
func collect[T any](rows *sql.Rows, out *[]T, scan func(*sql.Rows) (T, error)) error {
	defer rows.Close()
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return err
		}
		*out = append(*out, v)
	}
	return errors.Join(rows.Err(), rows.Close())
}

// scanString scans a row of one text column.
func scanString(row *sql.Rows) (string, error) {
	var v string
	return v, row.Scan(&v)
}

// nullNanos is store.Nanos for a time that may be unset: the zero
// time.Time becomes NULL, which keeps it apart from the Unix epoch (and
// from the range error store.Nanos would report for year 1).
func nullNanos(field string, t time.Time) (any, error) {
	if t.IsZero() {
		return nil, nil
	}
	n, err := store.Nanos(field, t)
	if err != nil {
		return nil, err
	}
	return n, nil
}

// fromNullNanos is the inverse of nullNanos.
func fromNullNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return store.FromNanos(n.Int64)
}
