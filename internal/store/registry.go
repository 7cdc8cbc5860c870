package store

import (
	"fmt"
	"time"
)

// Entity is a partner organisation whose CA the mesh trusts.
type Entity struct {
	// Name is the entity id: the name it was registered under, never a
	// name its CA writes into its own certificates.
	Name string
	// CAPEM is the entity's CA certificate(s) in PEM form.
	CAPEM []byte
	// Fingerprint is the lowercase hex SHA-256 of the first CA certificate.
	Fingerprint string
	// Subject is the first CA certificate's subject, for display.
	Subject   string
	NotBefore time.Time
	NotAfter  time.Time
	CreatedAt time.Time
	// RevokedAt is set once the entity is revoked; a revoked entity's
	// agents are evicted and refused until it is registered again.
	RevokedAt time.Time
	// RotatedAt is the last `entity rotate`: agents whose certificate was
	// issued before it must re-register with a fresh one.
	RotatedAt time.Time
	// Namespace is the set of agent ids the entity's agents may claim,
	// chosen at registration, in the form registry.ParseNamespace reads:
	// "" (the prefix "<name>-"), "first-claim" or "ids:<id>,…".
	Namespace string
}

// Revoked reports whether the entity is revoked.
func (e Entity) Revoked() bool { return !e.RevokedAt.IsZero() }

// Agent is the durable part of a registered agent. Liveness (last seen)
// lives in the registry's memory and is written only in batches.
type Agent struct {
	ID string
	// Owner is the common name of the certificate that claimed the id;
	// Entity the entity it belongs to ("" for the mesh's own CAs); Source
	// the trust backend that admitted it ("localca", "filestore",
	// "entities"). None changes for the life of the record, except that a
	// record written before sources were kept (Source "") is bound to the
	// source of its owner's next heartbeat.
	Owner  string
	Entity string
	Source string
	// Payload is the agent's registration as the agent sent it (JSON).
	Payload []byte
	// CertSerial and CertFingerprint identify the certificate the agent
	// last registered with.
	CertSerial      string
	CertFingerprint string
	// Status is "healthy", "unhealthy" or "evicted".
	Status string
	// Reason explains an eviction.
	Reason       string
	RegisteredAt time.Time
	LastSeen     time.Time
	// RotateFrom is set when the agent must re-register with a certificate
	// other than CertFingerprint (after an entity rotation).
	RotateFrom time.Time
	// Version increases with every change the registry makes to the
	// record; the store never replaces a record with an older version.
	// Liveness alone (LastSeen) may change without it, so a write of an
	// equal version still carries newer liveness.
	Version int64
}

// OwnedByOther reports whether claim would take the agent id of the stored
// record from another owner: the record has an owner, and claim names
// another owner or entity, or another trust source where both name one (a
// record kept from before sources were stored has none).
//
// Owner is the canonical name of the claiming certificate (its CN, or its
// one SPIFFE ID when it has no CN), vouched for by the trust source named
// in Source (the backend that verified the chain); Entity the registered
// name of the partner entity whose CA that source matched ("" for the
// mesh's own CAs). Each is compared as the exact string stored.
func OwnedByOther(stored, claim Agent) bool {
	if stored.Owner == "" {
		return false
	}
	return stored.Owner != claim.Owner || stored.Entity != claim.Entity ||
		stored.Source != "" && claim.Source != "" && stored.Source != claim.Source
}

// SameOwner reports whether two records of one agent id have one
// ownership: the exact same Owner, Entity and Source strings (see
// OwnedByOther for what each is and who vouches for it). A write other
// than a claim applies only over a stored record of the same ownership as
// the record the writer authorised it against.
func SameOwner(a, b Agent) bool {
	return a.Owner == b.Owner && a.Entity == b.Entity && a.Source == b.Source
}

// UpdateRefusal is why UpdateAgent left ag out, given the ownership of the
// stored record cur (found is false when none is stored): an error
// wrapping ErrNotFound or ErrAgentOwned, or nil when ag was left out only
// for being older than cur. Both stores answer with it.
func UpdateRefusal(ag, cur Agent, found bool) error {
	switch {
	case !found:
		return fmt.Errorf("%w: no agent %q is recorded (deleted or released since it was read); only a claim can record it again", ErrNotFound, ag.ID)
	case !SameOwner(cur, ag):
		return fmt.Errorf("%w: agent id %q is owned by %q (entity %q, source %q), not by %q as the change assumed", ErrAgentOwned, ag.ID, cur.Owner, cur.Entity, cur.Source, ag.Owner)
	}
	return nil
}
