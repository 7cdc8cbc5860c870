package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/meshtrust/meshtrust/internal/store"
)

// notifyChannel is the PostgreSQL channel writes that append events
// notify.
const notifyChannel = "meshtrust_events"

// postgresDialect is a PostgreSQL database that several meshd replicas
// share: their writers take turns on the audit head's row lock, and the
// change feed's followers are woken by LISTEN/NOTIFY.
type postgresDialect struct{}

func (postgresDialect) name() string { return "postgres" }

func (postgresDialect) query(q string) string {
	return rebindDollar(replaceRecorded(q, "recorded"))
}

// lockHead locks the one row of audit_head: every writer of every replica
// takes it first, so their transactions run one at a time (see the
// package comment). The audit_extends_chain trigger moves it with every
// entry.
func (postgresDialect) lockHead() string {
	return `SELECT seq, hash FROM audit_head FOR UPDATE`
}

func (postgresDialect) conflict(err error) conflict {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" { // unique_violation
		return noConflict
	}
	if len(pgErr.ConstraintName) > 5 && pgErr.ConstraintName[len(pgErr.ConstraintName)-5:] == "_pkey" {
		return primaryKey
	}
	return unique
}

// classify wraps err in store.ErrUnavailable when it says the database
// could not be reached or went away (a restart, a network failure), as
// opposed to refusing a statement.
func (postgresDialect) classify(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08 connection exceptions, 57P01-57P03 shutdown and
		// "cannot connect now" while it starts.
		switch {
		case len(pgErr.Code) == 5 && pgErr.Code[:2] == "08",
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03":
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		return err
	}
	var netErr net.Error
	var connErr *pgconn.ConnectError
	if errors.As(err, &netErr) || errors.As(err, &connErr) || pgconn.SafeToRetry(err) || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	// database/sql's word for a connection or transaction that broke
	// under it.
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) || errors.Is(err, sql.ErrTxDone) || errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	// A connection that broke mid-statement reports a plain error
	// ("unexpected EOF", "conn closed").
	if pgconn.Timeout(err) || isEOF(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

func isEOF(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e.Error() {
		case "unexpected EOF", "EOF", "conn closed", "closed pool":
			return true
		}
	}
	return false
}

// auditText is BYTEA's value: a detail quoting outside input may hold a
// NUL, which TEXT refuses, and the entry must round-trip byte for byte.
func (postgresDialect) auditText(s string) any { return []byte(s) }

// notify is delivered on commit, to every replica's listener.
func (postgresDialect) notify(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, notifyChannel)
	return err
}

func (postgresDialect) migrations() ([]migration, error) {
	return loadMigrations("migrations/postgres")
}

// prepareMigration does nothing: PostgreSQL changes a table's schema in
// place, foreign keys and all.
func (postgresDialect) prepareMigration(context.Context, *sql.Conn) (func(context.Context) error, error) {
	return func(context.Context) error { return nil }, nil
}

// checkMigration does nothing: PostgreSQL checks foreign keys as it goes.
func (postgresDialect) checkMigration(context.Context, *sql.Tx) error { return nil }

// beginMigration takes an advisory lock (keyed by the schema), so
// replicas starting together migrate once.
func (postgresDialect) beginMigration(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('meshtrust migrate ' || current_schema()))`)
	return err
}

func (postgresDialect) schemaVersionDDL() string {
	return `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at BIGINT  NOT NULL
	)`
}

func (postgresDialect) hasTable() string {
	return `SELECT to_regclass($1) IS NOT NULL`
}

// OpenPostgres connects to the PostgreSQL database of dsn (a postgres://
// URL or a libpq key=value string) and brings its schema up to date. It
// fails with an error wrapping ErrSchemaTooNew if the schema was written
// by a newer meshtrust. A write is committed (PostgreSQL's synchronous
// commit) before its method returns.
func OpenPostgres(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	o := newOptions(opts)
	d := postgresDialect{}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's message may quote the DSN, password and all.
		return nil, errors.New("postgres: the database URL does not parse; want postgres://user:password@host:port/database")
	}
	where := fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	// The writer's one connection, on which its statements are prepared,
	// and the pool that serves reads.
	wdb := stdlib.OpenDB(*cfg)
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	rdb := stdlib.OpenDB(*cfg)
	rdb.SetMaxOpenConns(8)
	rdb.SetMaxIdleConns(8)
	if err := errors.Join(wdb.PingContext(ctx), rdb.PingContext(ctx)); err != nil {
		rdb.Close()
		wdb.Close()
		return nil, fmt.Errorf("postgres: connect to %s: %w", where, d.classify(err))
	}
	if err := checkID(ctx, d, wdb, where, o.expectID); err != nil {
		rdb.Close()
		wdb.Close()
		return nil, err
	}
	if err := migrate(ctx, d, wdb, where, o.now); err != nil {
		rdb.Close()
		wdb.Close()
		return nil, err
	}
	s, err := start(ctx, d, where, wdb, rdb, o)
	if err != nil {
		return nil, err
	}
	if o.listen {
		s.wake = make(chan struct{}, 1)
		lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.stopListen, s.listenDone = cancel, make(chan struct{})
		go s.listen(lctx, cfg, o)
	}
	return s, nil
}

// Wake returns a channel that receives a value when the change feed may
// have grown: a notification from a write of any replica, or a LISTEN
// connection established again (notifications sent while it was down are
// lost; the feed's read after the wake-up catches up). Nil for an SQLite
// store, whose feed is polled, and for a PostgreSQL store opened
// WithoutListen.
func (s *Store) Wake() <-chan struct{} {
	if s.wake == nil {
		return nil
	}
	return s.wake
}

// listen holds a connection that LISTENs on notifyChannel until ctx ends,
// reconnecting with backoff when it is lost.
func (s *Store) listen(ctx context.Context, cfg *pgx.ConnConfig, o options) {
	defer close(s.listenDone)
	backoff := 50 * time.Millisecond
	lost := false
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, cfg, func() {
			backoff = 50 * time.Millisecond
			if lost {
				o.logger.Info("postgres: change notifications restored", "database", s.where)
				lost = false
			}
		})
		if ctx.Err() != nil {
			return
		}
		if !lost {
			o.logger.Warn("postgres: change notifications lost; reconnecting (the feed polls meanwhile)", "database", s.where, "err", err)
			lost = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// listenOnce connects, LISTENs, signals a wake-up (what was sent before is
// read by the catch-up it causes) and forwards notifications until the
// connection fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	connected()
	s.signal()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		s.signal()
	}
}

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
