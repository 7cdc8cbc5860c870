package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/internal/store"
)

var _ store.PolicyStore = (*Store)(nil)

// PutPolicy records p, its policy.set event and a in one transaction.
func (s *Store) PutPolicy(ctx context.Context, p store.Policy, a store.AuditEntry) error {
	if p.Name == "" {
		return errors.New("sqlite: record policy: name is empty")
	}
	if p.Updated.IsZero() {
		p.Updated = s.now()
	}
	at, err := nanos("policy Updated", p.Updated)
	if err != nil {
		return fmt.Errorf("sqlite: record policy %q: %w", p.Name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("sqlite: record policy %q: %w", p.Name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, head *chainHead) error {
		if err := tx.exec(ctx, tx.st.putPolicy, p.Name, p.Document, at); err != nil {
			return fmt.Errorf("sqlite: record policy %q: %w", p.Name, err)
		}
		if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventPolicySet, CommonName: p.Name}, at); err != nil {
			return fmt.Errorf("sqlite: record policy %q: %w", p.Name, err)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// Policy returns the policy named name.
func (s *Store) Policy(ctx context.Context, name string) (store.Policy, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.Policy{}, store.ErrClosed
	}
	var p store.Policy
	var at int64
	err := s.rdb.QueryRowContext(ctx, `SELECT name, document, updated_at FROM policies WHERE name = ?`, name).Scan(&p.Name, &p.Document, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Policy{}, fmt.Errorf("%w: no policy %q", store.ErrNotFound, name)
	}
	if err != nil {
		return store.Policy{}, fmt.Errorf("sqlite: read policy %q: %w", name, err)
	}
	p.Updated = fromNanos(at)
	return p, nil
}
