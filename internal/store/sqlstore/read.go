package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/meshtrust/meshtrust/internal/store"
)

const certColumns = `serial, common_name, kind, sans, not_before, not_after,
	fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by`

// scanCert reads one row of certColumns.
func scanCert(row *sql.Rows) (store.Cert, error) {
	var (
		c                             store.Cert
		sans                          string
		notBefore, notAfter, issuedAt int64
	)
	if err := row.Scan(&c.Serial, &c.CommonName, &c.Kind, &sans, &notBefore, &notAfter,
		&c.Fingerprint, &c.IssuerKeyID, &c.PEM, &issuedAt, &c.KeyHash, &c.AuthorizedBy); err != nil {
		return store.Cert{}, err
	}
	if err := json.Unmarshal([]byte(sans), &c.SANs); err != nil {
		return store.Cert{}, fmt.Errorf("certificate %s: SANs: %w", c.Serial, err)
	}
	if len(c.SANs) == 0 {
		c.SANs = nil
	}
	if len(c.PEM) == 0 {
		c.PEM = nil
	}
	c.NotBefore, c.NotAfter, c.IssuedAt = store.FromNanos(notBefore), store.FromNanos(notAfter), store.FromNanos(issuedAt)
	return c, nil
}

// Cert returns the certificate with serial, or an error wrapping
// store.ErrNotFound.
func (s *Store) Cert(ctx context.Context, serial string) (store.Cert, error) {
	cs, err := readRows(s, ctx, `SELECT `+certColumns+` FROM certs WHERE serial = ?`, []any{serial}, scanCert)
	if err != nil {
		return store.Cert{}, s.errorf("read certificate %s: %w", serial, err)
	}
	if len(cs) == 0 {
		return store.Cert{}, fmt.Errorf("%w: no certificate with serial %s", store.ErrNotFound, serial)
	}
	return cs[0], nil
}

// certsByNameQuery is CertsByName's query, of a common name (?1), by
// certs_names (?2 is nameNode(?1)).
const certsByNameQuery = `SELECT ` + certColumns + ` FROM certs WHERE agent_node IN ('', ?2) AND common_name = ?1
	ORDER BY issued_at, {{recorded}}`

// CertsByName returns every certificate issued to common name cn, oldest
// (by IssuedAt) first; certificates issued at the same time come in the
// order they were recorded. It returns no error, and no certificates, for
// a name never issued to.
func (s *Store) CertsByName(ctx context.Context, cn string) ([]store.Cert, error) {
	cs, err := readRows(s, ctx, certsByNameQuery, []any{cn, nameNode(cn)}, scanCert)
	if err != nil {
		return nil, s.errorf("read certificates of %q: %w", cn, err)
	}
	return cs, nil
}

// Certs returns every recorded certificate, oldest (by IssuedAt) first;
// certificates issued at the same time come in the order they were
// recorded.
func (s *Store) Certs(ctx context.Context) ([]store.Cert, error) {
	cs, err := readRows(s, ctx, `SELECT `+certColumns+` FROM certs ORDER BY issued_at, {{recorded}}`, nil, scanCert)
	if err != nil {
		return nil, s.errorf("read certificates: %w", err)
	}
	return cs, nil
}

// Revocations returns the revocations with Seq > after, in Seq order.
func (s *Store) Revocations(ctx context.Context, after int64) ([]store.Revocation, error) {
	rs, err := readRows(s, ctx, `SELECT r.seq, r.serial, r.common_name, r.issuer_key_id, r.reason, r.revoked_at,
			CASE WHEN r.reason = ? THEN coalesce(b.key_hash, '') ELSE '' END
		FROM revocations r LEFT JOIN certs c ON c.serial = r.serial
			LEFT JOIN blocked_keys b ON b.key_hash = c.key_hash
		WHERE r.seq > ? ORDER BY r.seq`, []any{store.ReasonKeyCompromise, after},
		func(row *sql.Rows) (store.Revocation, error) {
			var (
				r  store.Revocation
				at int64
			)
			err := row.Scan(&r.Seq, &r.Serial, &r.CommonName, &r.IssuerKeyID, &r.Reason, &at, &r.KeyHash)
			r.RevokedAt = store.FromNanos(at)
			return r, err
		})
	if err != nil {
		return nil, s.errorf("read revocations: %w", err)
	}
	return rs, nil
}

const auditColumns = `seq, time, action, identity, outcome, detail, prev_hash, hash`

// scanAudit reads one row of auditColumns.
func scanAudit(row *sql.Rows) (store.AuditEntry, error) {
	var (
		e store.AuditEntry
		t int64
	)
	err := row.Scan(&e.Seq, &t, &e.Action, &e.Identity, &e.Outcome, &e.Detail, &e.PrevHash, &e.Hash)
	e.Time = store.FromNanos(t)
	return e, err
}

// AuditLog returns the whole audit log in Seq order. It does not check
// the hash chain; store.VerifyAuditChain does.
func (s *Store) AuditLog(ctx context.Context) ([]store.AuditEntry, error) {
	es, err := readRows(s, ctx, `SELECT `+auditColumns+` FROM audit ORDER BY seq`, nil, scanAudit)
	if err != nil {
		return nil, s.errorf("read audit log: %w", err)
	}
	return es, nil
}

// AuditHead returns the last entry of the audit log, or the zero entry when
// the log is empty, reading only that entry.
func (s *Store) AuditHead(ctx context.Context) (store.AuditEntry, error) {
	es, err := readRows(s, ctx, `SELECT `+auditColumns+` FROM audit ORDER BY seq DESC LIMIT 1`, nil, scanAudit)
	if err != nil {
		return store.AuditEntry{}, s.errorf("read the audit log's head: %w", err)
	}
	if len(es) == 0 {
		return store.AuditEntry{}, nil
	}
	return es[0], nil
}

// Events returns up to limit events of the change feed with Seq > after,
// in Seq order; limit <= 0 means no limit. On SQLite, which commits one
// writer at a time, Seqs follow commit order; on PostgreSQL they are
// drawn before commit, so a reader may see a Seq before a lower one
// commits: internal/events waits for such holes. A database upgraded from
// an older meshtrust starts with an event for every certificate and
// entity it had revoked.
func (s *Store) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	q, args := `SELECT seq, kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time
		FROM events WHERE seq > ? ORDER BY seq`, []any{after}
	if limit > 0 {
		q, args = q+` LIMIT ?`, append(args, limit)
	}
	es, err := readRows(s, ctx, q, args, func(row *sql.Rows) (store.Event, error) {
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
		return nil, s.errorf("read events: %w", err)
	}
	return es, nil
}

// LastEventSeq returns the highest Seq of the change feed, 0 if it is
// empty.
func (s *Store) LastEventSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.read(func() error {
		return s.rdb.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&seq)
	}); err != nil {
		return 0, s.errorf("read the change feed's last seq: %w", err)
	}
	return seq, nil
}

// Policy returns the policy named name, or an error wrapping
// store.ErrNotFound.
// PolicyNames returns the names of the recorded policies, sorted.
func (s *Store) PolicyNames(ctx context.Context) ([]string, error) {
	names, err := readRows(s, ctx, `SELECT name FROM policies ORDER BY name`, nil,
		func(row *sql.Rows) (string, error) {
			var n string
			err := row.Scan(&n)
			return n, err
		})
	if err != nil {
		return nil, s.errorf("list policies: %w", err)
	}
	return names, nil
}

func (s *Store) Policy(ctx context.Context, name string) (store.Policy, error) {
	ps, err := readRows(s, ctx, `SELECT name, document, updated_at FROM policies WHERE name = ?`, []any{name},
		func(row *sql.Rows) (store.Policy, error) {
			var (
				p  store.Policy
				at int64
			)
			err := row.Scan(&p.Name, &p.Document, &at)
			p.Updated = store.FromNanos(at)
			return p, err
		})
	if err != nil {
		return store.Policy{}, s.errorf("read policy %q: %w", name, err)
	}
	if len(ps) == 0 {
		return store.Policy{}, fmt.Errorf("%w: no policy %q", store.ErrNotFound, name)
	}
	return ps[0], nil
}
