package sqlite

import (
	"context"
	"fmt"

	"github.com/meshtrust/meshtrust/internal/store"
)

var _ store.EventStore = (*Store)(nil)

// insertEvent appends e to the change feed in tx at time at (Unix
// nanoseconds) and returns its Seq.
func insertEvent(ctx context.Context, tx writeTx, e store.Event, at int64) (int64, error) {
	var seq int64
	err := tx.queryRow(ctx, tx.st.insertEvent, string(e.Kind), e.Serial, e.IssuerKeyID, e.CommonName,
		e.Entity, e.KeyHash, e.Reason, at).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("append %s event: %w", e.Kind, err)
	}
	return seq, nil
}

// AppendEvent appends e (its Seq ignored, a zero Time set from the store's
// clock) and a to the change feed and the audit log in one transaction,
// and returns e as recorded.
func (s *Store) AppendEvent(ctx context.Context, e store.Event, a store.AuditEntry) (store.Event, error) {
	if e.Kind == "" {
		return store.Event{}, fmt.Errorf("sqlite: append event: no kind")
	}
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	at, err := nanos("event Time", e.Time)
	if err != nil {
		return store.Event{}, fmt.Errorf("sqlite: append %s event: %w", e.Kind, err)
	}
	e.Time = fromNanos(at)
	if a, err = s.prepareAudit(a); err != nil {
		return store.Event{}, fmt.Errorf("sqlite: append %s event: %w", e.Kind, err)
	}
	err = s.submit(ctx, func(ctx context.Context, tx writeTx, head *chainHead) error {
		seq, err := insertEvent(ctx, tx, e, at)
		if err != nil {
			return fmt.Errorf("sqlite: %w", err)
		}
		if err := appendAudit(ctx, tx, head, a); err != nil {
			return err
		}
		e.Seq = seq
		return nil
	})
	if err != nil {
		return store.Event{}, err
	}
	return e, nil
}

// Events returns up to limit events of the change feed with Seq > after,
// in Seq order; limit <= 0 means no limit. SQLite commits one writer at a
// time, so its Seqs also follow commit order. A database upgraded from an
// older meshtrust starts with an event for every certificate and entity
// it had revoked.
func (s *Store) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		limit = -1 // SQLite's "no limit"
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT seq, kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time
		FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read events: %w", err)
	}
	defer rows.Close()
	var es []store.Event
	for rows.Next() {
		var (
			e    store.Event
			kind string
			t    int64
		)
		if err := rows.Scan(&e.Seq, &kind, &e.Serial, &e.IssuerKeyID, &e.CommonName, &e.Entity, &e.KeyHash, &e.Reason, &t); err != nil {
			return nil, fmt.Errorf("sqlite: read events: %w", err)
		}
		e.Kind, e.Time = store.EventKind(kind), fromNanos(t)
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read events: %w", err)
	}
	return es, nil
}

// LastEventSeq returns the highest Seq of the change feed, 0 if it is
// empty.
func (s *Store) LastEventSeq(ctx context.Context) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, store.ErrClosed
	}
	var seq int64
	if err := s.rdb.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("sqlite: read the change feed's last seq: %w", err)
	}
	return seq, nil
}
