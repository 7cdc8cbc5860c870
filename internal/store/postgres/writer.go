package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/meshtrust/meshtrust/internal/store"
)

// A request is one write waiting for the writer goroutine.
type request struct {
	// op performs the write inside the batch's transaction. It appends to
	// the audit log through head, which it may advance; the writer keeps
	// the advance only if op succeeds.
	op func(ctx context.Context, tx pgx.Tx, head *chainHead) error
	// notify is set when op appends to the change feed.
	notify bool
	done   chan error
}

// chainHead is the last entry of the audit log: the one a new entry links to.
type chainHead struct {
	seq  int64
	hash string
}

// submit queues op and waits until the transaction that carries it has
// committed, as package sqlite's does: ctx is given up on only while op
// waits to be queued.
func (s *Store) submit(ctx context.Context, notify bool, op func(context.Context, pgx.Tx, *chainHead) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &request{op: op, notify: notify, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return store.ErrClosed
	}
	select {
	case s.reqs <- r:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	return <-r.done
}

// writer takes the first waiting request, gathers every other one already
// queued (up to maxBatch), carries them out in one transaction and answers
// them all once it has committed. It returns when Close has closed reqs and
// the queue is empty.
func (s *Store) writer() {
	defer close(s.writerDone)
	batch := make([]*request, 0, maxBatch)
	for first := range s.reqs {
		batch = append(batch[:0], first)
	gather:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			default:
				break gather
			}
		}
		errs := make([]error, len(batch))
		if err := s.execBatch(batch, errs); err != nil {
			for i := range errs {
				errs[i] = err
			}
		} else {
			s.commits.Add(1)
			s.writes.Add(int64(len(batch)))
		}
		for i, r := range batch {
			r.done <- errs[i]
		}
		clear(batch)
	}
}

// execBatch runs batch in one transaction, each request in its own
// savepoint so that one that fails is rolled back alone. It returns an
// error, having rolled back, if the transaction as a whole failed: then
// none of the batch was written (or, for a commit whose answer was lost
// with the connection, none was acknowledged).
func (s *Store) execBatch(batch []*request, errs []error) (err error) {
	// Not the callers' contexts: the batch belongs to all of them.
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: begin write transaction on %s: %w", s.where, classify(err))
	}
	defer func() {
		if err != nil {
			tx.Rollback(ctx)
		}
	}()
	// The lock every writer of every replica takes first; see the package
	// comment.
	var head chainHead
	if err := tx.QueryRow(ctx, `SELECT seq, hash FROM audit_head FOR UPDATE`).Scan(&head.seq, &head.hash); err != nil {
		return fmt.Errorf("postgres: lock the audit log's head on %s: %w", s.where, classify(err))
	}
	notify := false
	for i, r := range batch {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return fmt.Errorf("postgres: savepoint: %w", classify(err))
		}
		next := head
		if errs[i] = r.op(ctx, sp, &next); errs[i] != nil {
			if err := sp.Rollback(ctx); err != nil {
				return fmt.Errorf("postgres: roll back failed write (%v): %w", errs[i], classify(err))
			}
			if unavailable(errs[i]) {
				// The connection is gone: so is the transaction.
				return errs[i]
			}
			continue
		}
		if err := sp.Commit(ctx); err != nil {
			return fmt.Errorf("postgres: release savepoint: %w", classify(err))
		}
		head = next
		notify = notify || r.notify
	}
	if notify {
		// Delivered on commit, to every replica's listener.
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, notifyChannel); err != nil {
			return fmt.Errorf("postgres: notify: %w", classify(err))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: commit on %s: %w", s.where, classify(err))
	}
	return nil
}

// appendAudit writes a as the entry after head and advances head to it.
// The audit_extends_chain trigger moves audit_head with it.
func appendAudit(ctx context.Context, tx pgx.Tx, head *chainHead, a store.AuditEntry) error {
	a.Seq = head.seq + 1
	a.PrevHash = head.hash
	a.Hash = store.HashEntry(a.PrevHash, a)
	if _, err := tx.Exec(ctx, `INSERT INTO audit (seq, time, action, identity, outcome, detail, prev_hash, hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		a.Seq, a.Time.UnixNano(), []byte(a.Action), []byte(a.Identity), []byte(a.Outcome), []byte(a.Detail), a.PrevHash, a.Hash); err != nil {
		return fmt.Errorf("postgres: append audit entry %d: %w", a.Seq, classify(err))
	}
	head.seq, head.hash = a.Seq, a.Hash
	return nil
}

func unavailable(err error) bool {
	return err != nil && errors.Is(err, store.ErrUnavailable)
}
