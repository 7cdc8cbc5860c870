// Package store holds meshtrust's durable state: issued certificates,
// revocations, CRL numbers and the hash-chained audit log.
//
// Every write is durable before its method returns. Implementations batch
// concurrent writers into one transaction (group commit) so throughput grows
// with concurrency without weakening that promise. The embedded default is
// SQLite (package store/sqlite is this file's only implementation so far);
// the interface is shaped so a PostgreSQL implementation can follow without
// changing callers.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors callers branch on.
var (
	// ErrNotFound reports that no record matched.
	ErrNotFound = errors.New("store: not found")
	// ErrExists reports a write that would duplicate a unique record (a
	// serial already recorded, a serial already revoked).
	ErrExists = errors.New("store: already exists")
	// ErrClosed reports a call on a closed store.
	ErrClosed = errors.New("store: closed")
	// ErrAuditTampered reports an audit log whose hash chain is broken.
	ErrAuditTampered = errors.New("store: audit log hash chain is broken")
)

// Cert is the record of one certificate the CA issued.
type Cert struct {
	// Serial is the certificate serial number as lowercase hex without
	// leading zeros (big.Int.Text(16)).
	Serial string
	// CommonName is the subject CN, the identity's name ("opus@ct111").
	CommonName string
	// Kind is "intermediate", "node", "agent" or "external".
	Kind string
	// SANs lists the subject alternative names as "DNS:x", "IP:x", "URI:x".
	SANs      []string
	NotBefore time.Time
	NotAfter  time.Time
	// Fingerprint is the lowercase hex SHA-256 of the DER certificate.
	Fingerprint string
	// IssuerKeyID is the lowercase hex subject key id of the issuing CA.
	IssuerKeyID string
	// PEM is the certificate in PEM form.
	PEM []byte
	// IssuedAt is when the record was written.
	IssuedAt time.Time
}

// Revocation is the record of one revoked certificate.
type Revocation struct {
	// Seq is assigned by the store on Revoke; it increases with every
	// revocation so subscribers can resume from the last one they saw.
	Seq         int64
	Serial      string
	CommonName  string
	IssuerKeyID string
	// Reason is the RFC 5280 CRLReason code.
	Reason    int
	RevokedAt time.Time
}

// AuditEntry is one line of the append-only audit log. Seq, PrevHash and
// Hash are assigned by the store; the rest is the caller's.
type AuditEntry struct {
	Seq  int64
	Time time.Time
	// Action names the operation, e.g. "ca.init", "cert.issue", "cert.revoke".
	Action string
	// Identity is the name the operation concerned, if any.
	Identity string
	// Outcome is "ok", "refused" or "error".
	Outcome string
	// Detail is free text; it must never contain a key, secret or token.
	Detail string
	// PrevHash is the Hash of the previous entry ("" for the first).
	PrevHash string
	// Hash is the lowercase hex SHA-256 over PrevHash and this entry's
	// fields; see HashEntry.
	Hash string
}

// Audit outcomes.
const (
	OutcomeOK      = "ok"
	OutcomeRefused = "refused"
	OutcomeError   = "error"
)

// Store is meshtrust's durable state. Methods are safe for concurrent use.
type Store interface {
	// RecordCert durably records c and appends a to the audit log in the
	// same transaction. It returns ErrExists if the serial is recorded.
	RecordCert(ctx context.Context, c Cert, a AuditEntry) error
	// Cert returns the certificate with serial, or ErrNotFound.
	Cert(ctx context.Context, serial string) (Cert, error)
	// CertsByName returns every certificate issued to common name cn,
	// oldest first.
	CertsByName(ctx context.Context, cn string) ([]Cert, error)
	// Certs returns every recorded certificate, oldest first.
	Certs(ctx context.Context) ([]Cert, error)

	// Revoke durably records r, assigning r.Seq, and appends a to the audit
	// log in the same transaction. It returns ErrExists if the serial is
	// already revoked.
	Revoke(ctx context.Context, r Revocation, a AuditEntry) (Revocation, error)
	// Revocations returns the revocations with Seq > after, in Seq order.
	Revocations(ctx context.Context, after int64) ([]Revocation, error)

	// NextCRLNumber durably increments and returns the CRL number of the
	// CA whose subject key id is issuerKeyID; the first number is 1.
	NextCRLNumber(ctx context.Context, issuerKeyID string) (int64, error)

	// Append appends a to the audit log, for operations that record
	// nothing else (refusals, key ceremonies).
	Append(ctx context.Context, a AuditEntry) error
	// AuditLog returns the whole audit log in Seq order.
	AuditLog(ctx context.Context) ([]AuditEntry, error)

	// Close waits for pending writes and releases the store.
	Close() error
}
