package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/internal/store"
)

const certColumns = `serial, common_name, kind, sans, not_before, not_after,
	fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by`

// Cert returns the certificate with serial, or an error wrapping
// store.ErrNotFound.
func (s *Store) Cert(ctx context.Context, serial string) (store.Cert, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.Cert{}, store.ErrClosed
	}
	c, err := scanCert(s.rdb.QueryRowContext(ctx, `SELECT `+certColumns+` FROM certs WHERE serial = ?`, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Cert{}, fmt.Errorf("%w: no certificate with serial %s", store.ErrNotFound, serial)
	}
	if err != nil {
		return store.Cert{}, fmt.Errorf("sqlite: read certificate %s: %w", serial, err)
	}
	return c, nil
}

// CertsByName returns every certificate issued to common name cn, oldest
// (by IssuedAt) first; certificates issued at the same time come in the
// order they were recorded. It returns no error, and no certificates, for
// a name never issued to.
func (s *Store) CertsByName(ctx context.Context, cn string) ([]store.Cert, error) {
	cs, err := s.certs(ctx, `SELECT `+certColumns+` FROM certs WHERE common_name = ? ORDER BY issued_at, rowid`, cn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read certificates of %q: %w", cn, err)
	}
	return cs, nil
}

// Certs returns every recorded certificate, oldest (by IssuedAt) first;
// certificates issued at the same time come in the order they were
// recorded.
func (s *Store) Certs(ctx context.Context) ([]store.Cert, error) {
	cs, err := s.certs(ctx, `SELECT `+certColumns+` FROM certs ORDER BY issued_at, rowid`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read certificates: %w", err)
	}
	return cs, nil
}

func (s *Store) certs(ctx context.Context, query string, args ...any) ([]store.Cert, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cs []store.Cert
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, rows.Err()
}

// scanCert reads one row of certColumns.
func scanCert(row interface{ Scan(...any) error }) (store.Cert, error) {
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
	c.NotBefore, c.NotAfter, c.IssuedAt = fromNanos(notBefore), fromNanos(notAfter), fromNanos(issuedAt)
	return c, nil
}

// Revocations returns the revocations with Seq > after, in Seq order.
func (s *Store) Revocations(ctx context.Context, after int64) ([]store.Revocation, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT r.seq, r.serial, r.common_name, r.issuer_key_id, r.reason, r.revoked_at,
			CASE WHEN r.reason = ? THEN coalesce(b.key_hash, '') ELSE '' END
		FROM revocations r LEFT JOIN certs c ON c.serial = r.serial
			LEFT JOIN blocked_keys b ON b.key_hash = c.key_hash
		WHERE r.seq > ? ORDER BY r.seq`, store.ReasonKeyCompromise, after)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read revocations: %w", err)
	}
	defer rows.Close()
	var rs []store.Revocation
	for rows.Next() {
		var (
			r         store.Revocation
			revokedAt int64
		)
		if err := rows.Scan(&r.Seq, &r.Serial, &r.CommonName, &r.IssuerKeyID, &r.Reason, &revokedAt, &r.KeyHash); err != nil {
			return nil, fmt.Errorf("sqlite: read revocations: %w", err)
		}
		r.RevokedAt = fromNanos(revokedAt)
		rs = append(rs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read revocations: %w", err)
	}
	return rs, nil
}

// AuditLog returns the whole audit log in Seq order. It does not check
// the hash chain; store.VerifyAuditChain does.
func (s *Store) AuditLog(ctx context.Context) ([]store.AuditEntry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT seq, time, action, identity, outcome, detail, prev_hash, hash
		FROM audit ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read audit log: %w", err)
	}
	defer rows.Close()
	var es []store.AuditEntry
	for rows.Next() {
		var (
			e store.AuditEntry
			t int64
		)
		if err := rows.Scan(&e.Seq, &t, &e.Action, &e.Identity, &e.Outcome, &e.Detail, &e.PrevHash, &e.Hash); err != nil {
			return nil, fmt.Errorf("sqlite: read audit log: %w", err)
		}
		e.Time = fromNanos(t)
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read audit log: %w", err)
	}
	return es, nil
}

// Compile-time check that Store implements store.Store.
var _ store.Store = (*Store)(nil)

var _ store.AuditHeader = (*Store)(nil)

// AuditHead returns the last entry of the audit log, or the zero entry when
// the log is empty, reading only that entry.
func (s *Store) AuditHead(ctx context.Context) (store.AuditEntry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.AuditEntry{}, store.ErrClosed
	}
	var (
		e store.AuditEntry
		t int64
	)
	err := s.rdb.QueryRowContext(ctx, `SELECT seq, time, action, identity, outcome, detail, prev_hash, hash
		FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&e.Seq, &t, &e.Action, &e.Identity, &e.Outcome, &e.Detail, &e.PrevHash, &e.Hash)
	if errors.Is(err, sql.ErrNoRows) {
		return store.AuditEntry{}, nil
	}
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("sqlite: read the audit log's head: %w", err)
	}
	e.Time = fromNanos(t)
	return e, nil
}
