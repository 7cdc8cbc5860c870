package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/meshtrust/meshtrust/internal/store"
)

var _ store.PolicyStore = (*Store)(nil)

// PutPolicy records p, its policy.set event and a in one transaction.
func (s *Store) PutPolicy(ctx context.Context, p store.Policy, a store.AuditEntry) error {
	if p.Name == "" {
		return errors.New("postgres: record policy: name is empty")
	}
	if p.Updated.IsZero() {
		p.Updated = s.now()
	}
	at, err := store.Nanos("policy Updated", p.Updated)
	if err != nil {
		return fmt.Errorf("postgres: record policy %q: %w", p.Name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("postgres: record policy %q: %w", p.Name, err)
	}
	return s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		if _, err := tx.Exec(ctx, `INSERT INTO policies (name, document, updated_at) VALUES ($1, $2, $3)
			ON CONFLICT (name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at`,
			p.Name, p.Document, at); err != nil {
			return fmt.Errorf("postgres: record policy %q: %w", p.Name, classify(err))
		}
		if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventPolicySet, CommonName: p.Name}, at); err != nil {
			return fmt.Errorf("postgres: record policy %q: %w", p.Name, err)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// Policy returns the policy named name, or an error wrapping
// store.ErrNotFound.
func (s *Store) Policy(ctx context.Context, name string) (store.Policy, error) {
	ps, err := readRows(s, ctx, `SELECT name, document, updated_at FROM policies WHERE name = $1`, []any{name},
		func(row pgx.Rows) (store.Policy, error) {
			var (
				p  store.Policy
				at int64
			)
			err := row.Scan(&p.Name, &p.Document, &at)
			p.Updated = store.FromNanos(at)
			return p, err
		})
	if err != nil {
		return store.Policy{}, fmt.Errorf("postgres: read policy %q: %w", name, err)
	}
	if len(ps) == 0 {
		return store.Policy{}, fmt.Errorf("%w: no policy %q", store.ErrNotFound, name)
	}
	return ps[0], nil
}
