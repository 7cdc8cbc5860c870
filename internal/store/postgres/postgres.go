// Package postgres implements store.Store, the registry's
// store.EntityStore and store.AgentStore, and enrollment's
// store.TokenStore and store.EventStore, on a PostgreSQL database that
// several meshd replicas share.
//
// The contract is SQLite's (package store/sqlite), across processes: a
// write is committed (PostgreSQL's synchronous commit) before its method
// returns. Each Store batches its concurrent writers into one transaction
// (group commit, one savepoint per write). Every write transaction first
// locks the one row of audit_head, the head of the audit hash chain, so
// the transactions of all replicas run one at a time: each sees every
// write committed before it, which makes the checks in a write (a serial
// recorded, a token spent, an identity revoked, an agent id owned, a live
// certificate held) and the write itself one step across replicas, and
// keeps the chain unbroken. CRL numbers are incremented in the database,
// so they only grow whichever replica asks.
//
// Writes that append to the change feed notify channel meshtrust_events
// on commit; Wake turns those notifications into a wake-up for the feed
// (internal/events), which still reads the store for the truth.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/meshtrust/meshtrust/internal/store"
)

// maxBatch caps how many writes share one transaction, which bounds the
// latency a write can add to the others in its batch.
const maxBatch = 256

// notifyChannel is the channel writes that append events notify.
const notifyChannel = "meshtrust_events"

// An Option configures a Store.
type Option func(*options)

type options struct {
	now    func() time.Time
	logger *slog.Logger
	// listen starts the LISTEN connection behind Wake.
	listen bool
}

// WithClock sets the clock the store reads when a record leaves a time
// unset, as sqlite.WithClock does. The default, and what a nil now means,
// is time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithLogger sets where the store logs a lost or regained LISTEN
// connection; the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithoutListen opens the store without the LISTEN connection: Wake
// returns nil. For short-lived processes (meshctl) that never follow the
// feed.
func WithoutListen() Option {
	return func(o *options) { o.listen = false }
}

// Store is a store.Store on a PostgreSQL database. Open returns one; it is
// safe for concurrent use and must be closed.
type Store struct {
	pool *pgxpool.Pool
	now  func() time.Time
	log  *slog.Logger
	// where names the database in errors, without its password.
	where string

	// mu guards closed and sending on reqs, as in package sqlite: Close
	// takes it exclusively so that no send races close(reqs).
	mu         sync.RWMutex
	closed     bool
	reqs       chan *request
	writerDone chan struct{}

	// wake receives a value (never blocking) whenever a notification
	// arrives or the LISTEN connection is established again, after which
	// notifications may have been missed.
	wake       chan struct{}
	stopListen context.CancelFunc
	listenDone chan struct{}

	commits atomic.Int64
	writes  atomic.Int64
}

// Open connects to the PostgreSQL database of dsn (a postgres:// URL or a
// libpq key=value string) and brings its schema up to date. Open fails
// with an error wrapping ErrSchemaTooNew if the schema was written by a
// newer meshtrust.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	o := options{now: time.Now, logger: slog.Default(), listen: true}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message may quote the DSN, password and all.
		return nil, errors.New("postgres: the database URL does not parse; want postgres://user:password@host:port/database")
	}
	where := fmt.Sprintf("%s@%s:%d/%s", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
	cfg.MaxConns = max(cfg.MaxConns, 8)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to %s: %w", where, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect to %s: %w", where, classify(err))
	}
	if err := migrate(ctx, pool, where, o.now); err != nil {
		pool.Close()
		return nil, err
	}
	s := &Store{pool: pool, now: o.now, log: o.logger, where: where,
		reqs: make(chan *request, maxBatch), writerDone: make(chan struct{})}
	go s.writer()
	if o.listen {
		s.wake = make(chan struct{}, 1)
		lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.stopListen, s.listenDone = cancel, make(chan struct{})
		go s.listen(lctx, cfg.ConnConfig)
	}
	return s, nil
}

// Close waits for the writes already queued to commit, stops the writer
// and the listener and closes the pool. Calls after Close, Close included,
// return store.ErrClosed.
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
	s.pool.Close()
	return nil
}

// Wake returns a channel that receives a value when the change feed may
// have grown: a notification from a write of any replica, or a LISTEN
// connection established again (notifications sent while it was down are
// lost; the feed's read after the wake-up catches up). Nil when the store
// was opened WithoutListen.
func (s *Store) Wake() <-chan struct{} {
	if s.wake == nil {
		return nil
	}
	return s.wake
}

// listen holds a connection that LISTENs on notifyChannel until ctx ends,
// reconnecting with backoff when it is lost.
func (s *Store) listen(ctx context.Context, cfg *pgx.ConnConfig) {
	defer close(s.listenDone)
	backoff := 50 * time.Millisecond
	lost := false
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, cfg, func() {
			backoff = 50 * time.Millisecond
			if lost {
				s.log.Info("postgres: change notifications restored", "database", s.where)
				lost = false
			}
		})
		if ctx.Err() != nil {
			return
		}
		if !lost {
			s.log.Warn("postgres: change notifications lost; reconnecting (the feed polls meanwhile)", "database", s.where, "err", err)
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

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %s: %w", s.where, classify(err))
	}
	return nil
}

// classify wraps err in store.ErrUnavailable when it says the database
// could not be reached or went away (a restart, a network failure), as
// opposed to refusing a statement.
func classify(err error) error {
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
	if errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, errConnLost) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	// A connection that broke mid-statement reports a plain error
	// ("unexpected EOF", "conn closed").
	if pgconn.Timeout(err) || isEOF(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

var errConnLost = errors.New("connection lost")

func isEOF(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e.Error() {
		case "unexpected EOF", "EOF", "conn closed", "closed pool":
			return true
		}
	}
	return false
}

// uniqueViolation returns the constraint a unique_violation error names,
// or "" for any other error.
func uniqueViolation(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return pgErr.ConstraintName
	}
	return ""
}
