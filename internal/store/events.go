package store

import (
	"time"
)

// EventKind says what changed. Every change that a second process (another
// replica, or meshd beside an offline meshctl) must converge on is an
// event, appended in the same transaction as the change itself.
type EventKind string

// The event kinds.
const (
	// EventCertRevoked: one certificate (Serial, IssuerKeyID, CommonName,
	// Reason) was revoked; KeyHash is set when its key is blocked too
	// (keyCompromise).
	EventCertRevoked EventKind = "cert.revoked"
	// EventIdentityRevoked: the identity CommonName was revoked (Reason);
	// its certificates were revoked in the same transaction, each with
	// its own EventCertRevoked.
	EventIdentityRevoked EventKind = "identity.revoked"
	// EventIdentityReinstated: an operator lifted CommonName's revocation.
	EventIdentityReinstated EventKind = "identity.reinstated"
	// EventEntityRevoked: the entity Entity was revoked.
	EventEntityRevoked EventKind = "entity.revoked"
	// EventEntityRegistered: the entity Entity was registered, or its CA
	// replaced; its current record is the store's Entity.
	EventEntityRegistered EventKind = "entity.registered"
	// EventEntityRotated: agents of Entity ("" for every agent) must
	// re-register with a certificate issued after Time.
	EventEntityRotated EventKind = "entity.rotated"
	// EventCARotated: an intermediate was prepared, activated or retired
	// (IssuerKeyID names it); processes with the CA open reload it.
	EventCARotated EventKind = "ca.rotated"
	// EventPolicySet: the policy named CommonName was set; its document
	// is the store's Policy.
	EventPolicySet EventKind = "policy.set"
)

// Event is one entry of the change feed. Seq orders the feed; a subscriber
// resumes after the last Seq it has seen. The fields a kind has no use for
// are empty.
type Event struct {
	Seq         int64
	Kind        EventKind
	Serial      string
	IssuerKeyID string
	CommonName  string
	Entity      string
	// KeyHash is the lowercase hex SHA-256 of a blocked public key's
	// SubjectPublicKeyInfo.
	KeyHash string
	// Reason is the RFC 5280 CRLReason code of a revocation.
	Reason int
	Time   time.Time
}

// Revocation reports whether the event revokes something (a certificate,
// an identity or an entity), which the revocation stream carries.
func (e Event) Revocation() bool {
	switch e.Kind {
	case EventCertRevoked, EventIdentityRevoked, EventEntityRevoked, EventIdentityReinstated:
		return true
	}
	return false
}
