package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
)

// Compile-time checks that Store is every store meshd needs.
var (
	_ store.Store        = (*Store)(nil)
	_ store.AuditHeader  = (*Store)(nil)
	_ store.EntityStore  = (*Store)(nil)
	_ store.AgentStore   = (*Store)(nil)
	_ store.AgentAuditor = (*Store)(nil)
	_ store.TokenStore   = (*Store)(nil)
	_ store.EventStore   = (*Store)(nil)
)

// RecordCert durably records c and appends a to the audit log in the same
// transaction; see store.Store. A zero c.IssuedAt or a.Time is set from
// the store's clock. Times must lie between the years 1678 and 2262.
func (s *Store) RecordCert(ctx context.Context, c store.Cert, a store.AuditEntry) error {
	if c.Serial == "" {
		return errors.New("postgres: record certificate: serial is empty")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = s.now()
	}
	sans := []byte("[]")
	if len(c.SANs) > 0 {
		var err error
		if sans, err = json.Marshal(c.SANs); err != nil {
			return fmt.Errorf("postgres: record certificate %s: %w", c.Serial, err)
		}
	}
	var times [3]int64
	for i, f := range []struct {
		name string
		t    time.Time
	}{{"NotBefore", c.NotBefore}, {"NotAfter", c.NotAfter}, {"IssuedAt", c.IssuedAt}} {
		n, err := store.Nanos(f.name, f.t)
		if err != nil {
			return fmt.Errorf("postgres: record certificate %s: %w", c.Serial, err)
		}
		times[i] = n
	}
	pem := c.PEM
	if pem == nil {
		pem = []byte{}
	}
	a, err := s.prepareAudit(a)
	if err != nil {
		return fmt.Errorf("postgres: record certificate %s: %w", c.Serial, err)
	}
	names := store.BlockingNames(c.CommonName)
	node := store.BlockingNode(c.CommonName)
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		var revokedNames, blockedKeys, revokedParents, live int
		if err := tx.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM revoked_identities WHERE name IN ($1, $2)),
			(SELECT count(*) FROM blocked_keys WHERE $3 <> '' AND key_hash = $3),
			(SELECT count(*) FROM revocations WHERE $4 <> '' AND serial = $4),
			(SELECT count(*) FROM certs WHERE $5 AND common_name = $1 AND not_after > $6
				AND serial NOT IN (SELECT serial FROM revocations))`,
			c.CommonName, node, c.KeyHash, c.AuthorizedBy, c.Exclusive, times[2]).
			Scan(&revokedNames, &blockedKeys, &revokedParents, &live); err != nil {
			return fmt.Errorf("postgres: record certificate %s: %w", c.Serial, classify(err))
		}
		switch {
		case revokedNames > 0:
			return fmt.Errorf("%w: %s is revoked (reinstate it with `meshctl ca reinstate`)", store.ErrIdentityRevoked, strings.Join(names, " or "))
		case blockedKeys > 0:
			return fmt.Errorf("%w: the key of %s was revoked for keyCompromise and is never certified again; generate a new key", store.ErrKeyBlocked, c.CommonName)
		case revokedParents > 0:
			return fmt.Errorf("%w: certificate %s was revoked", store.ErrAuthorizerRevoked, c.AuthorizedBy)
		case live > 0:
			return fmt.Errorf("%w: %s holds one", store.ErrLiveCert, c.CommonName)
		}
		_, err := tx.Exec(ctx, `INSERT INTO certs (serial, common_name, kind, sans, not_before, not_after,
			fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by, agent_node)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			c.Serial, c.CommonName, c.Kind, string(sans), times[0], times[1], c.Fingerprint, c.IssuerKeyID,
			pem, times[2], c.KeyHash, c.AuthorizedBy, store.AgentNode(c.CommonName))
		switch uniqueViolation(err) {
		case "":
		case "certs_pkey":
			return fmt.Errorf("%w: certificate serial %s is already recorded", store.ErrExists, c.Serial)
		default:
			return fmt.Errorf("%w: a certificate with fingerprint %s is already recorded", store.ErrExists, c.Fingerprint)
		}
		if err != nil {
			return fmt.Errorf("postgres: record certificate %s: %w", c.Serial, classify(err))
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// Revoke durably records r, appends its event and a, all in one
// transaction, and returns r as recorded; see sqlite.Store.Revoke, whose
// contract this is.
func (s *Store) Revoke(ctx context.Context, r store.Revocation, a store.AuditEntry) (store.Revocation, []store.Revocation, error) {
	if r.Serial == "" {
		return store.Revocation{}, nil, errors.New("postgres: revoke: serial is empty")
	}
	if !store.ValidReason(r.Reason) {
		return store.Revocation{}, nil, fmt.Errorf("postgres: revoke %s: %d is not an RFC 5280 CRLReason code", r.Serial, r.Reason)
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = s.now()
	}
	at, err := store.Nanos("RevokedAt", r.RevokedAt)
	if err != nil {
		return store.Revocation{}, nil, fmt.Errorf("postgres: revoke %s: %w", r.Serial, err)
	}
	r.RevokedAt, r.Seq = store.FromNanos(at), 0
	if a, err = s.prepareAudit(a); err != nil {
		return store.Revocation{}, nil, fmt.Errorf("postgres: revoke %s: %w", r.Serial, err)
	}
	var (
		out     store.Revocation
		sameKey []store.Revocation
	)
	err = s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		rev, err := revokeCert(ctx, tx, r, at)
		if err != nil {
			return err
		}
		if err := appendAudit(ctx, tx, head, a); err != nil {
			return err
		}
		if sameKey, err = revokeSameKey(ctx, tx, head, rev, at, a.Time); err != nil {
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
// of the key that the revocation rev blocked, in the transaction that
// blocked it; see the sqlite store's. The transactions of every replica
// run one at a time (the audit head's lock), so a certificate of the key
// is either recorded before this one, and revoked by it, or refused.
func revokeSameKey(ctx context.Context, tx pgx.Tx, head *chainHead, rev store.Revocation, at int64, auditAt time.Time) ([]store.Revocation, error) {
	if rev.KeyHash == "" {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `SELECT serial, key_hash, pem FROM certs
		WHERE key_hash IN ($1, '') AND kind <> 'intermediate' AND not_after > $2
		  AND serial NOT IN (SELECT serial FROM revocations)
		ORDER BY issued_at, recorded`, rev.KeyHash, at)
	if err != nil {
		return nil, fmt.Errorf("postgres: revoke %s: find the other certificates of its key: %w", rev.Serial, classify(err))
	}
	cs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[store.KeyCert])
	if err != nil {
		return nil, fmt.Errorf("postgres: revoke %s: find the other certificates of its key: %w", rev.Serial, classify(err))
	}
	return store.RevokeSameKey(rev.KeyHash, rev.Serial, cs, func(serial string) (store.Revocation, error) {
		r, err := revokeCert(ctx, tx, store.Revocation{Serial: serial, Reason: store.ReasonKeyCompromise, RevokedAt: rev.RevokedAt}, at)
		if err != nil {
			return r, err
		}
		return r, appendAudit(ctx, tx, head, store.SameKeyEntry(auditAt, r, rev.Serial))
	})
}

// revokeCert records the revocation r of a recorded certificate and its
// event in tx, blocking the key for keyCompromise, and returns r as
// recorded.
func revokeCert(ctx context.Context, tx pgx.Tx, r store.Revocation, at int64) (store.Revocation, error) {
	var (
		cn, issuer, keyHash string
		pemBytes            []byte
	)
	err := tx.QueryRow(ctx, `SELECT common_name, issuer_key_id, key_hash, pem FROM certs WHERE serial = $1`, r.Serial).
		Scan(&cn, &issuer, &keyHash, &pemBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("%w: no certificate with serial %s is recorded, so it cannot be revoked", store.ErrNotFound, r.Serial)
	}
	if err != nil {
		return r, fmt.Errorf("postgres: revoke %s: %w", r.Serial, classify(err))
	}
	if r.CommonName == "" {
		r.CommonName = cn
	} else if r.CommonName != cn {
		return r, fmt.Errorf("postgres: revoke %s: the revocation names %q but the certificate was issued to %q", r.Serial, r.CommonName, cn)
	}
	if r.IssuerKeyID == "" {
		r.IssuerKeyID = issuer
	} else if r.IssuerKeyID != issuer {
		return r, fmt.Errorf("postgres: revoke %s: the revocation names issuer key %s but the certificate was issued by %s", r.Serial, r.IssuerKeyID, issuer)
	}
	r.KeyHash = ""
	if r.Reason == store.ReasonKeyCompromise {
		if keyHash == "" {
			if keyHash, err = store.PEMKeyHash(pemBytes); err != nil {
				return r, fmt.Errorf("postgres: revoke %s for keyCompromise: %w", r.Serial, err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO blocked_keys (key_hash, serial, blocked_at) VALUES ($1, $2, $3)
			ON CONFLICT (key_hash) DO NOTHING`, keyHash, r.Serial, at); err != nil {
			return r, fmt.Errorf("postgres: revoke %s: block its key: %w", r.Serial, classify(err))
		}
		r.KeyHash = keyHash
	}
	err = tx.QueryRow(ctx, `INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at)
		VALUES ($1, $2, $3, $4, $5) RETURNING seq`, r.Serial, r.CommonName, r.IssuerKeyID, r.Reason, at).Scan(&r.Seq)
	if uniqueViolation(err) != "" {
		return r, fmt.Errorf("%w: certificate %s is already revoked", store.ErrExists, r.Serial)
	}
	if err != nil {
		return r, fmt.Errorf("postgres: revoke %s: %w", r.Serial, classify(err))
	}
	if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventCertRevoked, Serial: r.Serial, IssuerKeyID: r.IssuerKeyID,
		CommonName: r.CommonName, KeyHash: r.KeyHash, Reason: r.Reason}, at); err != nil {
		return r, fmt.Errorf("postgres: revoke %s: %w", r.Serial, err)
	}
	return r, nil
}

// insertEvent appends e to the change feed in tx at time at (Unix
// nanoseconds) and returns its Seq.
func insertEvent(ctx context.Context, tx pgx.Tx, e store.Event, at int64) (int64, error) {
	var seq int64
	err := tx.QueryRow(ctx, `INSERT INTO events (kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq`,
		string(e.Kind), e.Serial, e.IssuerKeyID, e.CommonName, e.Entity, e.KeyHash, e.Reason, at).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("append %s event: %w", e.Kind, classify(err))
	}
	return seq, nil
}

// RevokeIdentity revokes the identity r.Name and every unexpired
// certificate of it (for a node, of its agents too) in one transaction;
// see sqlite.Store.RevokeIdentity. The transactions of every replica run
// one at a time (the audit head's lock), so a certificate is either
// recorded before this one, and revoked by it, or refused.
func (s *Store) RevokeIdentity(ctx context.Context, r store.IdentityRevocation, a store.AuditEntry) (store.IdentityRevocation, []store.Revocation, error) {
	if r.Name == "" {
		return r, nil, errors.New("postgres: revoke identity: name is empty")
	}
	if !store.ValidReason(r.Reason) {
		return r, nil, fmt.Errorf("postgres: revoke identity %q: %d is not an RFC 5280 CRLReason code", r.Name, r.Reason)
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = s.now()
	}
	at, err := store.Nanos("RevokedAt", r.RevokedAt)
	if err != nil {
		return r, nil, fmt.Errorf("postgres: revoke identity %q: %w", r.Name, err)
	}
	r.RevokedAt = store.FromNanos(at)
	if a, err = s.prepareAudit(a); err != nil {
		return r, nil, fmt.Errorf("postgres: revoke identity %q: %w", r.Name, err)
	}
	agents := ""
	if id, err := identity.Parse(r.Name); err == nil && id.Kind == identity.KindNode {
		agents = id.Node
	}
	var done []store.Revocation
	err = s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		_, err := tx.Exec(ctx, `INSERT INTO revoked_identities (name, reason, revoked_at) VALUES ($1, $2, $3)`, r.Name, r.Reason, at)
		if uniqueViolation(err) != "" {
			return fmt.Errorf("%w: identity %q is already revoked", store.ErrExists, r.Name)
		}
		if err != nil {
			return fmt.Errorf("postgres: revoke identity %q: %w", r.Name, classify(err))
		}
		rows, err := tx.Query(ctx, `SELECT serial FROM certs
			WHERE (common_name = $1 OR ($2 <> '' AND agent_node = $2))
			  AND kind <> 'intermediate' AND not_after > $3
			  AND serial NOT IN (SELECT serial FROM revocations)
			ORDER BY issued_at, recorded`, r.Name, agents, at)
		if err != nil {
			return fmt.Errorf("postgres: revoke identity %q: %w", r.Name, classify(err))
		}
		serials, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("postgres: revoke identity %q: %w", r.Name, classify(err))
		}
		if done, err = store.RevokeEach(serials, func(serial string) ([]store.Revocation, error) {
			rev, err := revokeCert(ctx, tx, store.Revocation{Serial: serial, Reason: r.Reason, RevokedAt: r.RevokedAt}, at)
			if err != nil {
				return nil, err
			}
			if err := appendAudit(ctx, tx, head, store.AuditEntry{Time: a.Time, Action: "cert.revoke", Identity: rev.CommonName,
				Outcome: store.OutcomeOK, Detail: fmt.Sprintf("serial %s with identity %s", rev.Serial, r.Name)}); err != nil {
				return nil, err
			}
			sameKey, err := revokeSameKey(ctx, tx, head, rev, at, a.Time)
			return append([]store.Revocation{rev}, sameKey...), err
		}); err != nil {
			return err
		}
		if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventIdentityRevoked, CommonName: r.Name, Reason: r.Reason}, at); err != nil {
			return fmt.Errorf("postgres: revoke identity %q: %w", r.Name, err)
		}
		return appendAudit(ctx, tx, head, a)
	})
	if err != nil {
		return r, nil, err
	}
	return r, done, nil
}

// ReinstateIdentity lifts the revocation of the identity name and appends
// its event and a in the same transaction, or returns an error wrapping
// store.ErrNotFound, writing nothing.
func (s *Store) ReinstateIdentity(ctx context.Context, name string, t time.Time, a store.AuditEntry) error {
	if t.IsZero() {
		t = s.now()
	}
	at, err := store.Nanos("time", t)
	if err != nil {
		return fmt.Errorf("postgres: reinstate identity %q: %w", name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("postgres: reinstate identity %q: %w", name, err)
	}
	return s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		tag, err := tx.Exec(ctx, `DELETE FROM revoked_identities WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("postgres: reinstate identity %q: %w", name, classify(err))
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: identity %q is not revoked", store.ErrNotFound, name)
		}
		if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventIdentityReinstated, CommonName: name}, at); err != nil {
			return fmt.Errorf("postgres: reinstate identity %q: %w", name, err)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// NextCRLNumber durably increments and returns the CRL number of the CA
// whose subject key id is issuerKeyID; the first number is 1. The
// increment is the database's, so numbers only grow across replicas.
func (s *Store) NextCRLNumber(ctx context.Context, issuerKeyID string) (int64, error) {
	if issuerKeyID == "" {
		return 0, errors.New("postgres: next CRL number: issuer key id is empty")
	}
	var n int64
	err := s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, _ *chainHead) error {
		err := tx.QueryRow(ctx, `INSERT INTO crl_numbers (issuer_key_id, number) VALUES ($1, 1)
			ON CONFLICT (issuer_key_id) DO UPDATE SET number = crl_numbers.number + 1
			RETURNING number`, issuerKeyID).Scan(&n)
		if err != nil {
			return fmt.Errorf("postgres: next CRL number for %s: %w", issuerKeyID, classify(err))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Append appends a to the audit log. A zero a.Time is set from the store's
// clock; a's Seq, PrevHash and Hash are assigned.
func (s *Store) Append(ctx context.Context, a store.AuditEntry) error {
	a, err := s.prepareAudit(a)
	if err != nil {
		return fmt.Errorf("postgres: append audit entry: %w", err)
	}
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		return appendAudit(ctx, tx, head, a)
	})
}

// AppendEvent appends e (its Seq ignored, a zero Time set from the store's
// clock) and a in one transaction, and returns e as recorded.
func (s *Store) AppendEvent(ctx context.Context, e store.Event, a store.AuditEntry) (store.Event, error) {
	if e.Kind == "" {
		return store.Event{}, errors.New("postgres: append event: no kind")
	}
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	at, err := store.Nanos("event Time", e.Time)
	if err != nil {
		return store.Event{}, fmt.Errorf("postgres: append %s event: %w", e.Kind, err)
	}
	e.Time = store.FromNanos(at)
	if a, err = s.prepareAudit(a); err != nil {
		return store.Event{}, fmt.Errorf("postgres: append %s event: %w", e.Kind, err)
	}
	err = s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		seq, err := insertEvent(ctx, tx, e, at)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
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

// prepareAudit returns a with its time set and normalised to what reading
// it back returns (the hash computed now must match the entry read later),
// and the fields the store assigns cleared.
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
