package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// PutToken records the join token t and appends a to the audit log in the
// same transaction. t.Hash must be the lowercase hex SHA-256 of the token:
// the store refuses anything else, so that a token cannot be stored by
// mistake in place of its hash. A zero t.CreatedAt or a.Time is set from
// the store's clock; t.ExpiresAt must be set, and lie, like every time in
// t, between the years 1678 and 2262. PutToken returns an error wrapping
// store.ErrExists if a token with t.Hash is recorded; then neither t nor a
// is written.
func (s *Store) PutToken(ctx context.Context, t store.JoinToken, a store.AuditEntry) error {
	if !store.IsSHA256Hex(t.Hash) {
		return s.errorf("record join token: the hash is not a lowercase hex SHA-256; record the token's hash, never the token")
	}
	if t.NodeID == "" {
		return s.errorf("record join token: node id is empty")
	}
	if t.ExpiresAt.IsZero() {
		return s.errorf("record join token for node %q: ExpiresAt is zero; a join token must expire", t.NodeID)
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.now()
	}
	createdAt, err := store.Nanos("CreatedAt", t.CreatedAt)
	if err != nil {
		return s.errorf("record join token for node %q: %w", t.NodeID, err)
	}
	expiresAt, err := store.Nanos("ExpiresAt", t.ExpiresAt)
	if err != nil {
		return s.errorf("record join token for node %q: %w", t.NodeID, err)
	}
	usedAt, err := nullNanos("UsedAt", t.UsedAt)
	if err != nil {
		return s.errorf("record join token for node %q: %w", t.NodeID, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return s.errorf("record join token for node %q: %w", t.NodeID, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		err := tx.exec(ctx, tx.st().insertToken, t.Hash, t.NodeID, createdAt, expiresAt, usedAt)
		if s.d.conflict(err) != noConflict {
			return fmt.Errorf("%w: the join token for node %q is already recorded", store.ErrExists, t.NodeID)
		}
		if err != nil {
			return s.errorf("record join token for node %q: %w", t.NodeID, err)
		}
		return tx.appendAudit(ctx, a)
	})
}

// UseToken spends the join token whose hash is hash to enroll node at now:
// in one write, it checks the token, sets its UsedAt to now and appends a
// to the audit log, and returns the token as recorded. Two calls for the
// same token, however close, cannot both succeed, from one process or
// from several sharing the database. A zero now or a.Time is set from the
// store's clock.
//
// A token that may not enroll node is refused with an error wrapping, in
// the order checked, store.ErrNotFound (no token has that hash),
// store.ErrTokenUsed, store.ErrTokenExpired (now is at or after its
// ExpiresAt) or store.ErrTokenNode (it is for another node). A refusal
// writes nothing, a included: the caller audits refusals itself. Errors
// name the token's node, never its hash, since callers log them.
func (s *Store) UseToken(ctx context.Context, hash, node string, now time.Time, a store.AuditEntry) (store.JoinToken, error) {
	if now.IsZero() {
		// Zero would precede every expiry.
		now = s.now()
	}
	at, err := store.Nanos("now", now)
	if err != nil {
		return store.JoinToken{}, s.errorf("use join token for node %q: %w", node, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return store.JoinToken{}, s.errorf("use join token for node %q: %w", node, err)
	}
	var out store.JoinToken
	err = s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		// The check and the update share the writer's transaction, and
		// the writers of every process run one at a time (the audit
		// head): that makes the use exactly-once.
		tok := store.JoinToken{Hash: hash}
		var createdAt, expiresAt int64
		var usedAt sql.NullInt64
		err := tx.queryRow(ctx, tx.st().token, hash).Scan(&tok.NodeID, &createdAt, &expiresAt, &usedAt)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%w: no join token has that hash", store.ErrNotFound)
		case err != nil:
			return s.errorf("use join token for node %q: %w", node, err)
		case usedAt.Valid:
			return fmt.Errorf("%w: node %q enrolled with it at %s", store.ErrTokenUsed,
				tok.NodeID, store.FromNanos(usedAt.Int64).Format(time.RFC3339Nano))
		case at >= expiresAt:
			return fmt.Errorf("%w at %s", store.ErrTokenExpired, store.FromNanos(expiresAt).Format(time.RFC3339Nano))
		case tok.NodeID != node:
			return fmt.Errorf("%w: it is for node %q, not %q", store.ErrTokenNode, tok.NodeID, node)
		}
		n, err := tx.execRows(ctx, tx.st().useToken, at, hash)
		if err != nil {
			return s.errorf("use join token for node %q: %w", node, err)
		}
		if n != 1 {
			return s.errorf("use join token for node %q: the token changed while it was used", node)
		}
		if err := tx.appendAudit(ctx, a); err != nil {
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

// PutPolicy records p, its policy.set event and a in one transaction. A
// zero p.Updated or a.Time is set from the store's clock.
func (s *Store) PutPolicy(ctx context.Context, p store.Policy, a store.AuditEntry) error {
	if p.Name == "" {
		return s.errorf("record policy: name is empty")
	}
	if p.Updated.IsZero() {
		p.Updated = s.now()
	}
	at, err := store.Nanos("policy Updated", p.Updated)
	if err != nil {
		return s.errorf("record policy %q: %w", p.Name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return s.errorf("record policy %q: %w", p.Name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		if err := tx.exec(ctx, tx.st().putPolicy, p.Name, p.Document, at); err != nil {
			return s.errorf("record policy %q: %w", p.Name, err)
		}
		if _, err := tx.insertEvent(ctx, store.Event{Kind: store.EventPolicySet, CommonName: p.Name}, at); err != nil {
			return s.errorf("record policy %q: %w", p.Name, err)
		}
		return tx.appendAudit(ctx, a)
	})
}
