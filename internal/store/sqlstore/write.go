package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// Compile-time check that Store is every store meshd needs.
var _ store.Store = (*Store)(nil)

// RecordCert durably records c and appends a to the audit log in the same
// transaction; see store.Store. A zero c.IssuedAt or a.Time is set from
// the store's clock. It returns an error wrapping store.ErrExists if c's
// serial is already recorded; then neither c nor a is written. The serial
// is the one key: c.Fingerprint, the SHA-256 of the DER that holds the
// serial, is not compared (the same certificate twice has the same serial).
//
// Times are stored as Unix nanoseconds, so every time in c must lie between
// the years 1678 and 2262.
func (s *Store) RecordCert(ctx context.Context, c store.Cert, a store.AuditEntry) error {
	if c.Serial == "" {
		return s.errorf("record certificate: serial is empty")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = s.now()
	}
	args, err := certArgs(c)
	if err != nil {
		return s.errorf("record certificate %s: %w", c.Serial, err)
	}
	a, err = s.prepareAudit(a)
	if err != nil {
		return s.errorf("record certificate %s: %w", c.Serial, err)
	}
	names := store.BlockingNames(c.CommonName)
	node := store.BlockingNodeName(c.CommonName)
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		var revokedNames, blockedKeys, revokedParents int
		if err := tx.queryRow(ctx, tx.st().certBlocked, c.CommonName, node, c.KeyHash, c.AuthorizedBy).
			Scan(&revokedNames, &blockedKeys, &revokedParents); err != nil {
			return s.errorf("record certificate %s: %w", c.Serial, err)
		}
		switch {
		case revokedNames > 0:
			return fmt.Errorf("%w: %s is revoked (reinstate it with `meshctl ca reinstate`)", store.ErrIdentityRevoked, strings.Join(names, " or "))
		case blockedKeys > 0:
			return fmt.Errorf("%w: the key of %s was revoked for keyCompromise and is never certified again; generate a new key", store.ErrKeyBlocked, c.CommonName)
		case revokedParents > 0:
			return fmt.Errorf("%w: certificate %s was revoked", store.ErrAuthorizerRevoked, c.AuthorizedBy)
		}
		if c.Exclusive {
			var live string
			err := tx.queryRow(ctx, tx.st().liveCert, c.CommonName, args[9], nameNode(c.CommonName)).Scan(&live)
			switch {
			case err == nil:
				return fmt.Errorf("%w: %s holds certificate %s", store.ErrLiveCert, c.CommonName, live)
			case !errors.Is(err, sql.ErrNoRows):
				return s.errorf("record certificate %s: %w", c.Serial, err)
			}
		}
		err := tx.exec(ctx, tx.st().insertCert, args...)
		if s.d.conflict(err) == primaryKey {
			return fmt.Errorf("%w: certificate serial %s is already recorded", store.ErrExists, c.Serial)
		}
		if err != nil {
			return s.errorf("record certificate %s: %w", c.Serial, err)
		}
		return tx.appendAudit(ctx, a)
	})
}

// certArgs returns the column values of c in the order of the certs table.
func certArgs(c store.Cert) ([]any, error) {
	sans := []byte("[]")
	if len(c.SANs) > 0 {
		var err error
		if sans, err = json.Marshal(c.SANs); err != nil {
			return nil, err
		}
	}
	notBefore, err := store.Nanos("NotBefore", c.NotBefore)
	if err != nil {
		return nil, err
	}
	notAfter, err := store.Nanos("NotAfter", c.NotAfter)
	if err != nil {
		return nil, err
	}
	issuedAt, err := store.Nanos("IssuedAt", c.IssuedAt)
	if err != nil {
		return nil, err
	}
	pem := c.PEM
	if pem == nil {
		pem = []byte{} // the column is NOT NULL
	}
	return []any{c.Serial, c.CommonName, c.Kind, string(sans),
		notBefore, notAfter, c.Fingerprint, c.IssuerKeyID, pem, issuedAt, c.KeyHash, c.AuthorizedBy, store.AgentNodeID(c.CommonName)}, nil
}

// Revoke durably records r, appends it to the change feed (see Events)
// and appends a to the audit log, all in one transaction, and returns r as
// recorded: with Seq assigned, RevokedAt set from the store's clock if it
// was zero, and CommonName and IssuerKeyID taken from the certificate
// record if they were empty. With keyCompromise it also revokes the other
// live certificates of the key; see store.Store.
//
// The certificate must have been recorded: revoking an unknown serial
// returns an error wrapping store.ErrNotFound, since a CRL entry for a
// certificate this CA never issued points at a bug in the caller. A
// CommonName or IssuerKeyID that contradicts the certificate record is an
// error too. Revoking a serial twice returns an error wrapping
// store.ErrExists. On any error nothing is written: neither r, nor its
// event, nor a.
func (s *Store) Revoke(ctx context.Context, r store.Revocation, a store.AuditEntry) (store.Revocation, []store.Revocation, error) {
	if r.Serial == "" {
		return store.Revocation{}, nil, s.errorf("revoke: serial is empty")
	}
	if !store.ValidReason(r.Reason) {
		return store.Revocation{}, nil, s.errorf("revoke %s: %d is not an RFC 5280 CRLReason code", r.Serial, r.Reason)
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = s.now()
	}
	at, err := store.Nanos("RevokedAt", r.RevokedAt)
	if err != nil {
		return store.Revocation{}, nil, s.errorf("revoke %s: %w", r.Serial, err)
	}
	r.RevokedAt, r.Seq = store.FromNanos(at), 0
	if a, err = s.prepareAudit(a); err != nil {
		return store.Revocation{}, nil, s.errorf("revoke %s: %w", r.Serial, err)
	}
	var (
		out     store.Revocation
		sameKey []store.Revocation
	)
	err = s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		rev, err := tx.revokeCert(ctx, r, at)
		if err != nil {
			return err
		}
		if err := tx.appendAudit(ctx, a); err != nil {
			return err
		}
		if sameKey, err = tx.revokeSameKey(ctx, rev, at, a.Time); err != nil {
			return err
		}
		out = rev
		return nil
	})
	if err != nil {
		return store.Revocation{}, nil, err
	}
	return out, sameKey, nil
}

// revokeSameKey revokes, for keyCompromise, every other live certificate
// of the key that the revocation rev blocked (none unless rev.KeyHash is
// set), each with its event and an audit entry at auditAt, in tx: the
// transaction that blocked the key, so the next CRL lists every
// certificate of it and no verifier reading the CRL accepts one. The
// writers of every process run one at a time (the audit head), so a
// certificate of the key is either recorded before this one, and revoked
// by it, or refused.
func (tx *writeTx) revokeSameKey(ctx context.Context, rev store.Revocation, at int64, auditAt time.Time) ([]store.Revocation, error) {
	if rev.KeyHash == "" {
		return nil, nil
	}
	rows, err := tx.StmtContext(ctx, tx.st().keyCerts).QueryContext(ctx, rev.KeyHash, at)
	if err != nil {
		return nil, tx.s.errorf("revoke %s: find the other certificates of its key: %w", rev.Serial, err)
	}
	var cs []store.KeyCert
	if err := collect(rows, &cs, func(row *sql.Rows) (store.KeyCert, error) {
		var c store.KeyCert
		return c, row.Scan(&c.Serial, &c.KeyHash, &c.PEM)
	}); err != nil {
		return nil, tx.s.errorf("revoke %s: find the other certificates of its key: %w", rev.Serial, err)
	}
	return store.RevokeSameKey(rev.KeyHash, rev.Serial, cs, func(serial string) (store.Revocation, error) {
		r, err := tx.revokeCert(ctx, store.Revocation{Serial: serial, Reason: store.ReasonKeyCompromise, RevokedAt: rev.RevokedAt}, at)
		if err != nil {
			return r, err
		}
		return r, tx.appendAudit(ctx, store.SameKeyEntry(auditAt, r, rev.Serial))
	})
}

// revokeCert records the revocation r of a recorded certificate and its
// event in tx, blocking the key for keyCompromise, and returns r as
// recorded.
func (tx *writeTx) revokeCert(ctx context.Context, r store.Revocation, at int64) (store.Revocation, error) {
	s := tx.s
	var (
		cn, issuer, keyHash string
		pemBytes            []byte
	)
	err := tx.queryRow(ctx, tx.st().certNames, r.Serial).Scan(&cn, &issuer, &keyHash, &pemBytes)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: no certificate with serial %s is recorded, so it cannot be revoked", store.ErrNotFound, r.Serial)
	}
	if err != nil {
		return r, s.errorf("revoke %s: %w", r.Serial, err)
	}
	if r.CommonName == "" {
		r.CommonName = cn
	} else if r.CommonName != cn {
		return r, s.errorf("revoke %s: the revocation names %q but the certificate was issued to %q", r.Serial, r.CommonName, cn)
	}
	if r.IssuerKeyID == "" {
		r.IssuerKeyID = issuer
	} else if r.IssuerKeyID != issuer {
		return r, s.errorf("revoke %s: the revocation names issuer key %s but the certificate was issued by %s", r.Serial, r.IssuerKeyID, issuer)
	}
	r.KeyHash = ""
	if r.Reason == store.ReasonKeyCompromise {
		if keyHash == "" { // recorded before certificates carried their key's hash
			if keyHash, err = store.PEMKeyHash(pemBytes); err != nil {
				return r, s.errorf("revoke %s for keyCompromise: %w", r.Serial, err)
			}
		}
		if err := tx.exec(ctx, tx.st().blockKey, keyHash, r.Serial, at); err != nil {
			return r, s.errorf("revoke %s: block its key: %w", r.Serial, err)
		}
		r.KeyHash = keyHash
	}
	err = tx.queryRow(ctx, tx.st().insertRevocation, r.Serial, r.CommonName, r.IssuerKeyID, r.Reason, at).Scan(&r.Seq)
	if s.d.conflict(err) != noConflict {
		return r, fmt.Errorf("%w: certificate %s is already revoked", store.ErrExists, r.Serial)
	}
	if err != nil {
		return r, s.errorf("revoke %s: %w", r.Serial, err)
	}
	if _, err := tx.insertEvent(ctx, store.Event{Kind: store.EventCertRevoked, Serial: r.Serial, IssuerKeyID: r.IssuerKeyID,
		CommonName: r.CommonName, KeyHash: r.KeyHash, Reason: r.Reason}, at); err != nil {
		return r, s.errorf("revoke %s: %w", r.Serial, err)
	}
	return r, nil
}

// NextCRLNumber durably increments and returns the CRL number of the CA
// whose subject key id is issuerKeyID; the first number is 1.
func (s *Store) NextCRLNumber(ctx context.Context, issuerKeyID string) (int64, error) {
	if issuerKeyID == "" {
		return 0, s.errorf("next CRL number: issuer key id is empty")
	}
	var n int64
	err := s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		if err := tx.queryRow(ctx, tx.st().nextCRL, issuerKeyID).Scan(&n); err != nil {
			return s.errorf("next CRL number for %s: %w", issuerKeyID, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Append appends a to the audit log. A zero a.Time is set from the store's
// clock; a's Seq, PrevHash and Hash are ignored and assigned.
func (s *Store) Append(ctx context.Context, a store.AuditEntry) error {
	a, err := s.prepareAudit(a)
	if err != nil {
		return s.errorf("append audit entry: %w", err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		return tx.appendAudit(ctx, a)
	})
}

// AppendEvent appends e (its Seq ignored, a zero Time set from the store's
// clock) and a to the change feed and the audit log in one transaction,
// and returns e as recorded.
func (s *Store) AppendEvent(ctx context.Context, e store.Event, a store.AuditEntry) (store.Event, error) {
	if e.Kind == "" {
		return store.Event{}, s.errorf("append event: no kind")
	}
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	at, err := store.Nanos("event Time", e.Time)
	if err != nil {
		return store.Event{}, s.errorf("append %s event: %w", e.Kind, err)
	}
	e.Time = store.FromNanos(at)
	if a, err = s.prepareAudit(a); err != nil {
		return store.Event{}, s.errorf("append %s event: %w", e.Kind, err)
	}
	err = s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		seq, err := tx.insertEvent(ctx, e, at)
		if err != nil {
			return s.errorf("%w", err)
		}
		if err := tx.appendAudit(ctx, a); err != nil {
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

// prepareAudit returns a ready for appendAudit: its time set, normalized
// to what reading it back will return (so the hash computed now matches
// the entry read later), and the fields the store assigns cleared.
func (s *Store) prepareAudit(a store.AuditEntry) (store.AuditEntry, error) {
	if a.Time.IsZero() {
		a.Time = s.now()
	}
	n, err := store.Nanos("audit entry Time", a.Time)
	if err != nil {
		return store.AuditEntry{}, err
	}
	a.Time = store.FromNanos(n)
	a.Seq, a.PrevHash, a.Hash = 0, "", ""
	return a, nil
}
