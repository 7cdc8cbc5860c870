package store

import (
	"context"
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

// EntityStore holds partner entities.
type EntityStore interface {
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
}

// AgentStore holds registered agents.
type AgentStore interface {
	// PutAgents upserts agents in one transaction. A record replaces the
	// stored one only if its Version is the same or newer: an equal
	// version carries newer liveness, an older one is a stale copy and is
	// ignored without an error. An agent not stored (a deleted one, too)
	// is inserted whatever its version.
	PutAgents(ctx context.Context, agents []Agent) error
	// DeleteAgent removes an agent with its audit entry, or returns
	// ErrNotFound.
	DeleteAgent(ctx context.Context, id string, a AuditEntry) error
	// Agents returns every agent, by id.
	Agents(ctx context.Context) ([]Agent, error)
}

// AgentAuditor is an AgentStore that writes an agent together with an
// audit entry, so that an agent id's claim and its record of who claimed
// it are durable together or not at all. meshd's stores all are one; the
// registry audits claims only in one.
type AgentAuditor interface {
	// PutAgentAudited is PutAgents of the one agent ag, with a appended
	// to the audit log in the same transaction: the claim of an agent id.
	// It is conditional: when the stored record of ag.ID has an owner
	// other than ag's (owner, entity, or a trust source both name), it
	// writes nothing and returns ErrAgentOwned, so two processes cannot
	// both grant one id to different owners.
	PutAgentAudited(ctx context.Context, ag Agent, a AuditEntry) error
}

// OwnedByOther reports whether claim would take the agent id of the stored
// record from another owner: the record has an owner, and claim names
// another owner or entity, or another trust source where both name one (a
// record kept from before sources were stored has none).
func OwnedByOther(stored, claim Agent) bool {
	if stored.Owner == "" {
		return false
	}
	return stored.Owner != claim.Owner || stored.Entity != claim.Entity ||
		stored.Source != "" && claim.Source != "" && stored.Source != claim.Source
}
