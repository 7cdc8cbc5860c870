package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/meshtrust/meshtrust/internal/store"
)

// readRows runs a query on the pool and scans every row with scan. It
// answers store.ErrClosed after Close, and wraps in store.ErrUnavailable
// what failed because the database could not be reached.
func readRows[T any](s *Store, ctx context.Context, query string, args []any, scan func(pgx.Rows) (T, error)) ([]T, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (T, error) { return scan(row.(pgx.Rows)) })
	if err != nil {
		return nil, classify(err)
	}
	return out, nil
}

const certColumns = `serial, common_name, kind, sans, not_before, not_after,
	fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by`

func scanCert(row pgx.Rows) (store.Cert, error) {
	var (
		c     store.Cert
		sans  string
		times [3]int64
	)
	if err := row.Scan(&c.Serial, &c.CommonName, &c.Kind, &sans, &times[0], &times[1],
		&c.Fingerprint, &c.IssuerKeyID, &c.PEM, &times[2], &c.KeyHash, &c.AuthorizedBy); err != nil {
		return c, err
	}
	if err := json.Unmarshal([]byte(sans), &c.SANs); err != nil {
		return c, fmt.Errorf("certificate %s: SANs: %w", c.Serial, err)
	}
	if len(c.SANs) == 0 {
		c.SANs = nil
	}
	if len(c.PEM) == 0 {
		c.PEM = nil
	}
	c.NotBefore, c.NotAfter, c.IssuedAt = store.FromNanos(times[0]), store.FromNanos(times[1]), store.FromNanos(times[2])
	return c, nil
}

// Cert returns the certificate with serial, or an error wrapping
// store.ErrNotFound.
func (s *Store) Cert(ctx context.Context, serial string) (store.Cert, error) {
	cs, err := readRows(s, ctx, `SELECT `+certColumns+` FROM certs WHERE serial = $1`, []any{serial}, scanCert)
	if err != nil {
		return store.Cert{}, fmt.Errorf("postgres: read certificate %s: %w", serial, err)
	}
	if len(cs) == 0 {
		return store.Cert{}, fmt.Errorf("%w: no certificate with serial %s", store.ErrNotFound, serial)
	}
	return cs[0], nil
}

// CertsByName returns every certificate issued to cn, oldest (by IssuedAt,
// then by the order they were recorded in) first.
func (s *Store) CertsByName(ctx context.Context, cn string) ([]store.Cert, error) {
	cs, err := readRows(s, ctx, `SELECT `+certColumns+` FROM certs WHERE common_name = $1 ORDER BY issued_at, recorded`, []any{cn}, scanCert)
	if err != nil {
		return nil, fmt.Errorf("postgres: read certificates of %q: %w", cn, err)
	}
	return cs, nil
}

// Certs returns every recorded certificate, oldest first.
func (s *Store) Certs(ctx context.Context) ([]store.Cert, error) {
	cs, err := readRows(s, ctx, `SELECT `+certColumns+` FROM certs ORDER BY issued_at, recorded`, nil, scanCert)
	if err != nil {
		return nil, fmt.Errorf("postgres: read certificates: %w", err)
	}
	return cs, nil
}

// Revocations returns the revocations with Seq > after, in Seq order.
func (s *Store) Revocations(ctx context.Context, after int64) ([]store.Revocation, error) {
	rs, err := readRows(s, ctx, `SELECT r.seq, r.serial, r.common_name, r.issuer_key_id, r.reason, r.revoked_at,
			CASE WHEN r.reason = $1 THEN coalesce(b.key_hash, '') ELSE '' END
		FROM revocations r LEFT JOIN certs c ON c.serial = r.serial
			LEFT JOIN blocked_keys b ON b.key_hash = c.key_hash
		WHERE r.seq > $2 ORDER BY r.seq`, []any{store.ReasonKeyCompromise, after},
		func(row pgx.Rows) (store.Revocation, error) {
			var (
				r  store.Revocation
				at int64
			)
			err := row.Scan(&r.Seq, &r.Serial, &r.CommonName, &r.IssuerKeyID, &r.Reason, &at, &r.KeyHash)
			r.RevokedAt = store.FromNanos(at)
			return r, err
		})
	if err != nil {
		return nil, fmt.Errorf("postgres: read revocations: %w", err)
	}
	return rs, nil
}

// RevokedIdentities returns every revoked identity, ordered by name.
func (s *Store) RevokedIdentities(ctx context.Context) ([]store.IdentityRevocation, error) {
	rs, err := readRows(s, ctx, `SELECT name, reason, revoked_at FROM revoked_identities ORDER BY name`, nil,
		func(row pgx.Rows) (store.IdentityRevocation, error) {
			var (
				r  store.IdentityRevocation
				at int64
			)
			err := row.Scan(&r.Name, &r.Reason, &at)
			r.RevokedAt = store.FromNanos(at)
			return r, err
		})
	if err != nil {
		return nil, fmt.Errorf("postgres: read revoked identities: %w", err)
	}
	return rs, nil
}

// BlockedKeys returns the hashes of the keys keyCompromise revocations
// blocked, sorted.
func (s *Store) BlockedKeys(ctx context.Context) ([]string, error) {
	ks, err := readRows(s, ctx, `SELECT key_hash FROM blocked_keys ORDER BY key_hash`, nil,
		func(row pgx.Rows) (string, error) {
			var h string
			return h, row.Scan(&h)
		})
	if err != nil {
		return nil, fmt.Errorf("postgres: read blocked keys: %w", err)
	}
	return ks, nil
}

// LiveAgents returns the agent identities of node that hold an unexpired,
// unrevoked certificate at now, sorted.
func (s *Store) LiveAgents(ctx context.Context, node string, now time.Time) ([]string, error) {
	at, err := store.Nanos("now", now)
	if err != nil {
		return nil, fmt.Errorf("postgres: live agents of %q: %w", node, err)
	}
	names, err := readRows(s, ctx, `SELECT DISTINCT common_name FROM certs
		WHERE agent_node = $1 AND not_after > $2 AND serial NOT IN (SELECT serial FROM revocations)
		ORDER BY common_name`, []any{node, at},
		func(row pgx.Rows) (string, error) {
			var cn string
			return cn, row.Scan(&cn)
		})
	if err != nil {
		return nil, fmt.Errorf("postgres: live agents of %q: %w", node, err)
	}
	return names, nil
}

// IssuanceBlock reports what would refuse a certificate for commonName
// under the key whose hash is keyHash; see store.Store.
func (s *Store) IssuanceBlock(ctx context.Context, commonName, keyHash string) (string, bool, error) {
	node := store.BlockingNode(commonName)
	type block struct {
		revoked string
		blocked bool
	}
	got, err := readRows(s, ctx, `SELECT
		coalesce((SELECT name FROM revoked_identities WHERE name = $1),
			(SELECT name FROM revoked_identities WHERE $2 <> '' AND name = $2), ''),
		EXISTS (SELECT 1 FROM blocked_keys WHERE key_hash = $3)`, []any{commonName, node, keyHash},
		func(row pgx.Rows) (block, error) {
			var b block
			return b, row.Scan(&b.revoked, &b.blocked)
		})
	if err != nil {
		return "", false, fmt.Errorf("postgres: what blocks issuance to %q: %w", commonName, err)
	}
	if len(got) != 1 {
		return "", false, fmt.Errorf("postgres: what blocks issuance to %q: %d rows", commonName, len(got))
	}
	return got[0].revoked, got[0].blocked, nil
}

// HasLiveCert reports whether commonName holds an unexpired, unrevoked
// certificate at now.
func (s *Store) HasLiveCert(ctx context.Context, commonName string, now time.Time) (bool, error) {
	at, err := store.Nanos("now", now)
	if err != nil {
		return false, fmt.Errorf("postgres: live certificate of %q: %w", commonName, err)
	}
	live, err := readRows(s, ctx, `SELECT EXISTS (SELECT 1 FROM certs c WHERE c.common_name = $1 AND c.not_after > $2
		AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial))`, []any{commonName, at},
		func(row pgx.Rows) (bool, error) {
			var live bool
			return live, row.Scan(&live)
		})
	if err != nil {
		return false, fmt.Errorf("postgres: live certificate of %q: %w", commonName, err)
	}
	return len(live) == 1 && live[0], nil
}

func scanAudit(row pgx.Rows) (store.AuditEntry, error) {
	var (
		e                                 store.AuditEntry
		t                                 int64
		action, identity, outcome, detail []byte
	)
	err := row.Scan(&e.Seq, &t, &action, &identity, &outcome, &detail, &e.PrevHash, &e.Hash)
	e.Time = store.FromNanos(t)
	e.Action, e.Identity, e.Outcome, e.Detail = string(action), string(identity), string(outcome), string(detail)
	return e, err
}

// AuditLog returns the whole audit log in Seq order. It does not check the
// hash chain; store.VerifyAuditChain does.
func (s *Store) AuditLog(ctx context.Context) ([]store.AuditEntry, error) {
	es, err := readRows(s, ctx, `SELECT seq, time, action, identity, outcome, detail, prev_hash, hash FROM audit ORDER BY seq`, nil, scanAudit)
	if err != nil {
		return nil, fmt.Errorf("postgres: read audit log: %w", err)
	}
	return es, nil
}

// AuditHead returns the last entry of the audit log, or the zero entry when
// the log is empty, reading only that entry.
func (s *Store) AuditHead(ctx context.Context) (store.AuditEntry, error) {
	es, err := readRows(s, ctx, `SELECT seq, time, action, identity, outcome, detail, prev_hash, hash
		FROM audit ORDER BY seq DESC LIMIT 1`, nil, scanAudit)
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("postgres: read the audit log's head: %w", err)
	}
	if len(es) == 0 {
		return store.AuditEntry{}, nil
	}
	return es[0], nil
}

// Events returns up to limit events with Seq > after, in Seq order; limit
// <= 0 means no limit. Seqs are drawn before commit, so a reader may see
// a Seq before a lower one commits: internal/events waits for such holes.
func (s *Store) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	var lim any // NULL: no limit
	if limit > 0 {
		lim = limit
	}
	es, err := readRows(s, ctx, `SELECT seq, kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time
		FROM events WHERE seq > $1 ORDER BY seq LIMIT $2`, []any{after, lim},
		func(row pgx.Rows) (store.Event, error) {
			var (
				e    store.Event
				kind string
				t    int64
			)
			err := row.Scan(&e.Seq, &kind, &e.Serial, &e.IssuerKeyID, &e.CommonName, &e.Entity, &e.KeyHash, &e.Reason, &t)
			e.Kind, e.Time = store.EventKind(kind), store.FromNanos(t)
			return e, err
		})
	if err != nil {
		return nil, fmt.Errorf("postgres: read events: %w", err)
	}
	return es, nil
}

// LastEventSeq returns the highest Seq of the change feed, 0 if it is
// empty.
func (s *Store) LastEventSeq(ctx context.Context) (int64, error) {
	seqs, err := readRows(s, ctx, `SELECT coalesce(max(seq), 0) FROM events`, nil,
		func(row pgx.Rows) (int64, error) {
			var n int64
			return n, row.Scan(&n)
		})
	if err != nil {
		return 0, fmt.Errorf("postgres: read the change feed's last seq: %w", err)
	}
	return seqs[0], nil
}
