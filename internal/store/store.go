// Package store holds meshtrust's durable state: issued certificates,
// revocations, CRL numbers and the hash-chained audit log.
//
// Every write is durable before its method returns. Implementations batch
// concurrent writers into one transaction (group commit) so throughput grows
// with concurrency without weakening that promise. Package store/sqlstore
// implements it once, on an embedded SQLite file (the default) or on a
// PostgreSQL database that several meshd replicas share.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/meshtrust/meshtrust/identity"
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
	// ErrIdentityRevoked reports a certificate for an identity that is
	// revoked (or whose node is): it is not recorded, so it is never
	// handed out.
	ErrIdentityRevoked = errors.New("store: identity is revoked")
	// ErrKeyBlocked reports a certificate for a public key that a
	// keyCompromise revocation blocked.
	ErrKeyBlocked = errors.New("store: public key was revoked for key compromise")
	// ErrAuthorizerRevoked reports a certificate requested by the holder of
	// a certificate that was revoked meanwhile (a renewal racing the
	// revocation of the certificate it renews).
	ErrAuthorizerRevoked = errors.New("store: the certificate that requested this one is revoked")
	// ErrLiveCert reports an exclusive certificate (Cert.Exclusive) for an
	// identity that holds an unexpired, unrevoked certificate already.
	ErrLiveCert = errors.New("store: the identity already holds a valid certificate")
	// ErrAgentOwned reports a claim of an agent id (PutAgentAudited) that
	// another owner, entity or trust source holds in the store, or a
	// change to an agent (UpdateAgent) whose stored ownership is no
	// longer the one the change was authorised against.
	ErrAgentOwned = errors.New("store: the agent id is owned by another certificate")
	// ErrUnavailable reports a write or read the database could not carry
	// out because it cannot be reached (restarting, network down): nothing
	// was written, and the same call may succeed once it is back.
	ErrUnavailable = errors.New("store: the database is unavailable")
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
	// KeyHash is the lowercase hex SHA-256 of the certificate's
	// SubjectPublicKeyInfo (see trust.KeyHash); a keyCompromise revocation
	// blocks it.
	KeyHash string
	// AuthorizedBy is the serial of the certificate whose holder asked for
	// this one (a renewal, a node minting its agent's); "" when an
	// operator issued it. It is recorded only while that certificate is
	// not revoked.
	AuthorizedBy string
	// Exclusive, when set, records the certificate only while its common
	// name holds no unexpired, unrevoked certificate at IssuedAt (checked
	// in the transaction that would record it): a node enrolled with the
	// bootstrap secret is enrolled once, whichever replica the requests
	// reach. It is a condition of the write, not kept with the record.
	Exclusive bool
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
	// KeyHash is set by the store when the revocation blocked the
	// certificate's key (Reason is keyCompromise).
	KeyHash string
}

// ReasonKeyCompromise is RFC 5280's keyCompromise: a certificate revoked
// for it also blocks its public key.
const ReasonKeyCompromise = 1

// IdentityRevocation is a revoked identity: every certificate of it is
// revoked with it, and none is recorded for it again (nor, for a node, for
// any of its agents) until it is reinstated.
type IdentityRevocation struct {
	// Name is the identity's common name ("opus@ct111", "ct200.mesh").
	Name string
	// Reason is the RFC 5280 CRLReason code its certificates are revoked
	// with.
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

// Store is meshtrust's durable state, the one interface every store
// implements whole (package store/sqlstore): certificates, revocations, CRL
// numbers and the audit log; partner entities and registered agents (the
// registry's); join tokens; the change feed; allow-list policies. Every
// method is required, so no guarantee a caller relies on (an agent id's
// conditional claim, a change's event) can be missing from a store.
// Consumers declare the small interfaces of what they use. Methods are
// safe for concurrent use.
type Store interface {
	// RecordCert durably records c and appends a to the audit log in the
	// same transaction. It returns ErrExists if the serial is recorded, and
	// records nothing (the refusal is the caller's to audit) when c's
	// identity is revoked (ErrIdentityRevoked), its key blocked
	// (ErrKeyBlocked) or c.AuthorizedBy revoked (ErrAuthorizerRevoked):
	// checked in the transaction that would record c, so no issuance races
	// a revocation past it; nor, with ErrLiveCert, an exclusive c whose
	// identity holds a live certificate.
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
	// already revoked. With keyCompromise it also blocks the key and, in
	// the same transaction, revokes every other unexpired certificate of
	// that key (same-key renewals, another identity's certificate) with
	// keyCompromise, each with its own audit entry and event, so the next
	// CRL lists all of them and every agent registered with one is
	// evicted; sameKey is what it revoked so, oldest first.
	Revoke(ctx context.Context, r Revocation, a AuditEntry) (rev Revocation, sameKey []Revocation, err error)
	// Revocations returns the revocations with Seq > after, in Seq order.
	Revocations(ctx context.Context, after int64) ([]Revocation, error)

	// RevokeIdentity revokes the identity r.Name and, in the same
	// transaction, every unexpired certificate of it (for a node, of its
	// agents too), each with its own audit entry and event, and, when the
	// reason is keyCompromise, the other live certificates of their keys
	// as Revoke does; a is the identity's audit entry. From then on RecordCert refuses the identity
	// with ErrIdentityRevoked. It returns ErrExists if the identity is
	// already revoked.
	RevokeIdentity(ctx context.Context, r IdentityRevocation, a AuditEntry) (IdentityRevocation, []Revocation, error)
	// ReinstateIdentity lifts the revocation of the identity name (its
	// revoked certificates stay revoked), or returns ErrNotFound.
	ReinstateIdentity(ctx context.Context, name string, at time.Time, a AuditEntry) error
	// RevokedIdentities returns every revoked identity, by name.
	RevokedIdentities(ctx context.Context) ([]IdentityRevocation, error)
	// BlockedKeys returns the key hashes keyCompromise revocations blocked.
	BlockedKeys(ctx context.Context) ([]string, error)
	// LiveAgents returns the agent identities of node ("opus@ct200") that
	// hold an unexpired, unrevoked certificate at now, sorted.
	LiveAgents(ctx context.Context, node string, now time.Time) ([]string, error)
	// IssuanceBlock reports what would refuse a certificate for
	// commonName under the key whose hash is keyHash (trust.KeyHash): revoked is
	// the first of BlockingNames(commonName) that is revoked ("" for
	// none), and keyBlocked whether the key is. Lookups by key, never a
	// read of every revocation; RecordCert enforces the same, in the
	// transaction that records.
	IssuanceBlock(ctx context.Context, commonName, keyHash string) (revoked string, keyBlocked bool, err error)
	// HasLiveCert reports whether commonName holds an unexpired, unrevoked
	// certificate at now: one index lookup, where LiveAgents lists a
	// node's every agent.
	HasLiveCert(ctx context.Context, commonName string, now time.Time) (bool, error)

	// NextCRLNumber durably increments and returns the CRL number of the
	// CA whose subject key id is issuerKeyID; the first number is 1.
	NextCRLNumber(ctx context.Context, issuerKeyID string) (int64, error)

	// Append appends a to the audit log, for operations that record
	// nothing else (refusals, key ceremonies).
	Append(ctx context.Context, a AuditEntry) error
	// AuditLog returns the whole audit log in Seq order.
	AuditLog(ctx context.Context) ([]AuditEntry, error)
	// AuditHead returns the last entry of the audit log, or the zero
	// AuditEntry (Seq 0) when the log is empty, reading only that entry.
	AuditHead(ctx context.Context) (AuditEntry, error)

	// Partner entities.

	// PutEntity records e with its audit entry. Without replace it returns
	// ErrExists when an entity of that name exists and is not revoked.
	PutEntity(ctx context.Context, e Entity, replace bool, a AuditEntry) error
	// Entity returns one entity, or ErrNotFound.
	Entity(ctx context.Context, name string) (Entity, error)
	// Entities returns every entity, revoked ones included, by name.
	Entities(ctx context.Context) ([]Entity, error)
	// RevokeEntity marks an entity revoked at t, or returns ErrNotFound.
	RevokeEntity(ctx context.Context, name string, t time.Time, a AuditEntry) error
	// RotateEntity sets an entity's RotatedAt to t, or returns ErrNotFound.
	RotateEntity(ctx context.Context, name string, t time.Time, a AuditEntry) error

	// Registered agents.
	//
	// Ownership (Owner, Entity, Source) changes only through the audited,
	// conditional claim (PutAgentAudited), checked in the transaction that
	// writes it. Every other write is a change to a record whose ownership
	// the writer authorised it against: it applies only while the stored
	// record still has that ownership, and never inserts a record that is
	// not stored (one deleted or released meanwhile, by this process or by
	// a replica sharing the store).

	// PutAgents writes agents over their stored records in one
	// transaction. A record replaces the stored one only if the stored
	// one has the same ownership (SameOwner) and a Version that is not
	// newer: an equal version carries newer liveness. Any other record is
	// left out without an error: an older version is a stale copy, and a
	// record whose id is not stored, or is stored with another ownership,
	// was overtaken by a delete, a release or a claim. PutAgents never
	// inserts a record and never changes an ownership.
	PutAgents(ctx context.Context, agents []Agent) error
	// UpdateAgent is PutAgents of the one agent ag, telling why it was
	// left out: an error wrapping ErrNotFound when no record of ag.ID is
	// stored, ErrAgentOwned when the stored one has another ownership.
	// An older version is left out without an error, as in PutAgents.
	UpdateAgent(ctx context.Context, ag Agent) error
	// DeleteAgent removes an agent with its audit entry, or returns
	// ErrNotFound.
	DeleteAgent(ctx context.Context, id string, a AuditEntry) error
	// Agents returns every agent, by id.
	Agents(ctx context.Context) ([]Agent, error)
	// PutAgentAudited is the claim of an agent id: it writes the one
	// agent ag, its ownership included, with a appended to the audit log
	// in the same transaction. It is conditional: when the stored record
	// of ag.ID has an owner other than ag's (OwnedByOther), it writes
	// nothing and returns ErrAgentOwned, so two processes cannot both
	// grant one id to different owners. An id not stored is inserted
	// whatever ag's version. A claim that changes the stored ownership
	// (an owner or a source where the record had none) is written
	// whatever the stored version, with the newer of ag's version and
	// one past the stored one, so the audit entry never names an owner
	// the store does not hold; one that keeps it follows PutAgents'
	// version rule. The agent and its audit entry (the record of who
	// claimed it) are durable together or not at all; a claim is the only
	// write that inserts a record or sets its ownership.
	PutAgentAudited(ctx context.Context, ag Agent, a AuditEntry) error

	// Join tokens.

	// PutToken records a new token with its audit entry; ErrExists if the
	// hash is known.
	PutToken(ctx context.Context, t JoinToken, a AuditEntry) error
	// UseToken atomically marks the token with hash used at now, for node,
	// and appends a in the same transaction. It returns ErrNotFound,
	// ErrTokenUsed, ErrTokenExpired or ErrTokenNode (and writes nothing)
	// when the token may not enroll node.
	UseToken(ctx context.Context, hash, node string, now time.Time, a AuditEntry) (JoinToken, error)

	// The change feed. Every write that changes what the feed
	// describes appends its event in the same transaction.
	//
	// Seq numbers are unique and increase in the order events are assigned
	// them, which need not be the order they commit in (a PostgreSQL sequence
	// is drawn before commit): a reader that has seen Seq n must still expect
	// events below n for a while. internal/events copes with both.

	// Events returns up to limit events with Seq > after, in Seq order;
	// limit <= 0 means no limit.
	Events(ctx context.Context, after int64, limit int) ([]Event, error)
	// LastEventSeq returns the highest Seq in the feed (0 when empty): a
	// process that loads the state from the store follows the feed from
	// there.
	LastEventSeq(ctx context.Context) (int64, error)
	// AppendEvent appends an event that records a change made outside the
	// store (an intermediate rotated in the CA directory), with its audit
	// entry, and returns it with Seq assigned.
	AppendEvent(ctx context.Context, e Event, a AuditEntry) (Event, error)

	// Allow-list policies. Setting one appends an EventPolicySet (its
	// name in CommonName) in the same transaction.

	// Policy returns the policy named name, or an error wrapping
	// ErrNotFound.
	Policy(ctx context.Context, name string) (Policy, error)
	// PolicyNames returns the names of the recorded policies, sorted.
	PolicyNames(ctx context.Context) ([]string, error)
	// PutPolicy records p (a zero Updated is set from the store's clock),
	// its event and a in one transaction.
	PutPolicy(ctx context.Context, p Policy, a AuditEntry) error

	// The CA's intermediates (CAState).

	// CAState returns the CA's state, or an error wrapping ErrNotFound
	// when none was written.
	CAState(ctx context.Context) (CAState, error)
	// PutCAState writes s as the CA's state if the stored one is still at
	// version prev (0: none stored), with the event e (its Time set from
	// a.Time) and a in the same transaction, and returns the new version.
	// It writes nothing and returns ErrConflict when another writer got
	// there first, so two processes rotating at once cannot both win.
	PutCAState(ctx context.Context, s CAState, prev int64, e Event, a AuditEntry) (int64, error)

	// ID returns the store's identity, 32 lowercase hex digits: random,
	// made once with the schema and never changed, read once when the
	// store opens. Every process that opens this database reads the same
	// id, any other database (another file, another PostgreSQL database
	// or schema) has another, and a restored backup keeps it. A CA
	// directory records it (package store/database) to tell its store
	// from any other, whatever path or URL names it. It is not a secret.
	ID() string

	// Close waits for pending writes and releases the store.
	Close() error
}

// BlockingNodeName returns the second of BlockingNames(cn), the common
// name of the node identity whose revocation blocks the agent cn
// ("ct200.mesh" for "opus@ct200"), or "" when there is none. AgentNodeID
// returns the node's id instead ("ct200").
func BlockingNodeName(cn string) string {
	if names := BlockingNames(cn); len(names) > 1 {
		return names[1]
	}
	return ""
}

// BlockingNames returns the identity names whose revocation blocks a
// certificate for cn: cn itself and, for an agent "a@n", its node "n.mesh"
// (a node key mints its agents' certificates). A cn that is not a mesh
// identity is blocked by its own name only.
func BlockingNames(cn string) []string {
	id, err := identity.Parse(cn)
	if err != nil || id.Kind != identity.KindAgent {
		return []string{cn}
	}
	node, err := identity.NewNode(id.Node)
	if err != nil {
		return []string{cn}
	}
	return []string{cn, node.CommonName()}
}
