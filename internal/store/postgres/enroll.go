package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/meshtrust/meshtrust/internal/store"
)

// PutToken records the join token t and appends a in the same
// transaction; see sqlite.Store.PutToken, whose contract this is: t.Hash
// must be a lowercase hex SHA-256, never the token.
func (s *Store) PutToken(ctx context.Context, t store.JoinToken, a store.AuditEntry) error {
	if !store.IsSHA256Hex(t.Hash) {
		return errors.New("postgres: record join token: the hash is not a lowercase hex SHA-256; record the token's hash, never the token")
	}
	if t.NodeID == "" {
		return errors.New("postgres: record join token: node id is empty")
	}
	if t.ExpiresAt.IsZero() {
		return fmt.Errorf("postgres: record join token for node %q: ExpiresAt is zero; a join token must expire", t.NodeID)
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.now()
	}
	times, err := timeArgs(namedTime{"CreatedAt", t.CreatedAt}, namedTime{"ExpiresAt", t.ExpiresAt}, namedTime{"UsedAt", t.UsedAt})
	if err != nil {
		return fmt.Errorf("postgres: record join token for node %q: %w", t.NodeID, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("postgres: record join token for node %q: %w", t.NodeID, err)
	}
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		_, err := tx.Exec(ctx, `INSERT INTO join_tokens (hash, node_id, created_at, expires_at, used_at)
			VALUES ($1, $2, $3, $4, $5)`, append([]any{t.Hash, t.NodeID}, times...)...)
		if uniqueViolation(err) != "" {
			return fmt.Errorf("%w: the join token for node %q is already recorded", store.ErrExists, t.NodeID)
		}
		if err != nil {
			return fmt.Errorf("postgres: record join token for node %q: %w", t.NodeID, classify(err))
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// UseToken spends the join token whose hash is hash to enroll node at now;
// see sqlite.Store.UseToken, whose contract this is. The check and the
// update run in one transaction, and the transactions of every replica
// one at a time, so a token enrolls once across replicas; the update's
// own "used_at IS NULL" makes that so whatever runs around it.
func (s *Store) UseToken(ctx context.Context, hash, node string, now time.Time, a store.AuditEntry) (store.JoinToken, error) {
	if now.IsZero() {
		now = s.now()
	}
	at, err := store.Nanos("now", now)
	if err != nil {
		return store.JoinToken{}, fmt.Errorf("postgres: use join token for node %q: %w", node, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return store.JoinToken{}, fmt.Errorf("postgres: use join token for node %q: %w", node, err)
	}
	var out store.JoinToken
	err = s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		tok := store.JoinToken{Hash: hash}
		var createdAt, expiresAt int64
		var usedAt *int64
		err := tx.QueryRow(ctx, `SELECT node_id, created_at, expires_at, used_at FROM join_tokens WHERE hash = $1 FOR UPDATE`, hash).
			Scan(&tok.NodeID, &createdAt, &expiresAt, &usedAt)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("%w: no join token has that hash", store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("postgres: use join token for node %q: %w", node, classify(err))
		case usedAt != nil:
			return fmt.Errorf("%w: node %q enrolled with it at %s", store.ErrTokenUsed, tok.NodeID, store.FromNanos(*usedAt).Format(time.RFC3339Nano))
		case at >= expiresAt:
			return fmt.Errorf("%w at %s", store.ErrTokenExpired, store.FromNanos(expiresAt).Format(time.RFC3339Nano))
		case tok.NodeID != node:
			return fmt.Errorf("%w: it is for node %q, not %q", store.ErrTokenNode, tok.NodeID, node)
		}
		tag, err := tx.Exec(ctx, `UPDATE join_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL`, at, hash)
		if err != nil {
			return fmt.Errorf("postgres: use join token for node %q: %w", node, classify(err))
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("postgres: use join token for node %q: the token changed while it was used", node)
		}
		if err := appendAudit(ctx, tx, head, a); err != nil {
			return err
		}
		tok.CreatedAt, tok.ExpiresAt, tok.UsedAt = store.FromNanos(createdAt), store.FromNanos(expiresAt), store.FromNanos(at)
		out = tok
		return nil
	})
	if err != nil {
		return store.JoinToken{}, err
	}
	return out, nil
}
