// Package console is meshd's operator console: server-rendered pages over
// the admin surface (never the agent port), reached through `meshctl
// console`, which forwards a loopback port to the admin API and prints a
// one-time login URL.
//
// The console reads and acts through a Backend, which internal/server
// implements over the registry, the store, the CA and the change feed; the
// console itself owns the sessions (one-time login token → short-lived
// HttpOnly SameSite=Strict cookie), the CSRF tokens, the templates and the
// server-sent events.
package console

import (
	"context"
	"errors"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// Backend is what the console reads and does. Every method is called with
// the request's context; an error wrapping ErrInput is the operator's
// (shown to them as is, 400), any other error is meshd's (logged, 500 with
// a generic message).
type Backend interface {
	// Agents lists the agents this meshd knows, every status.
	Agents(ctx context.Context) ([]Agent, error)
	// Certificates lists the certificates the store recorded that have
	// not expired and are not revoked, soonest expiry first.
	Certificates(ctx context.Context) ([]Certificate, error)
	// Revocations lists revoked certificates, newest first, and the
	// revoked identities.
	Revocations(ctx context.Context) ([]Revocation, []IdentityRevocation, error)
	// Entities lists the entities, as GET /admin/entities does.
	Entities(ctx context.Context) ([]meshapi.EntityInfo, error)
	// TrustSources lists the trust backends in the chain's order.
	TrustSources(ctx context.Context) ([]TrustSource, error)
	// Audit returns the newest limit entries of the audit log, newest
	// first, and the result of verifying the whole chain.
	Audit(ctx context.Context, limit int) (AuditLog, error)
	// Intermediates lists the CA's intermediates (active, prepared,
	// retired, tainted, revoked), newest first, each with its count of
	// live certificates.
	Intermediates(ctx context.Context) ([]Intermediate, error)
	// Policies names the stored policies the explainer can ask.
	Policies(ctx context.Context) ([]string, error)
	// Explain decides q against the stored policy q.Policy.
	Explain(ctx context.Context, q Question) (Decision, error)

	// Revoke revokes a certificate (serial) or an identity (name) for the
	// RFC 5280 reason named, audited as done by actor, and returns once
	// this meshd applied it (evicted, disconnected).
	Revoke(ctx context.Context, actor, target, reason string) (meshapi.RevokeResponse, error)
	// Reinstate lifts an identity's revocation, audited as done by actor.
	Reinstate(ctx context.Context, actor, name string) error
	// RevokeEntity revokes a partner entity, audited as done by actor.
	RevokeEntity(ctx context.Context, actor, name string) error

	// Watch streams what changes on this meshd (registrations,
	// evictions, revocations, reinstatements, entity changes) until ctx
	// ends, when the channel is closed. A slow reader loses events, never
	// blocks meshd: the console then reloads the page.
	Watch(ctx context.Context) <-chan Event
}

// ErrInput marks a Backend error caused by the operator's input.
var ErrInput = errors.New("bad input")

// Agent is one row of the agents page.
type Agent struct {
	ID string
	// Owner is the identity whose certificate claimed the id
	// ("opus@ct111"); Node is its node ("ct111").
	Owner, Node string
	// Entity is "" for the mesh's own agents; Source is the trust backend
	// that verified its certificate ("localca", "filestore", "spire"…).
	Entity, Source string
	// Status is "healthy", "unhealthy", "evicted"…; Reason why, if any.
	Status, Reason string
	// Unauthenticated marks an agent registered without a certificate
	// (auto mode).
	Unauthenticated bool
	Endpoint        string
	LastSeen        time.Time
	CertExpires     *time.Time
}

// Certificate is one row of the certificates page.
type Certificate struct {
	Serial, CommonName string
	// Kind is "intermediate", "node", "agent" or "external".
	Kind                string
	IssuerKeyID         string
	NotBefore, NotAfter time.Time
	// RenewAfter is when its holder should renew (2/3 of its lifetime);
	// Due is set once that moment has passed.
	RenewAfter time.Time
	Due        bool
}

// Revocation is one revoked certificate.
type Revocation struct {
	Seq                             int64
	Serial, CommonName, IssuerKeyID string
	// Reason is the RFC 5280 reason's name ("keyCompromise").
	Reason    string
	RevokedAt time.Time
	// KeyHash is set when the key was blocked with it.
	KeyHash string
	// By is the admin identity the audit log names for it, "" if unknown.
	By string
	// Evicted lists the agent ids this meshd evicted for it, Closed the
	// connections it closed; both are this replica's, since it started.
	Evicted []string
	Closed  int
}

// IdentityRevocation is one revoked identity.
type IdentityRevocation struct {
	Name, Reason string
	RevokedAt    time.Time
	By           string
}

// TrustSource is one trust backend.
type TrustSource struct {
	// Name is the backend's name ("localca", "filestore", "k8s-secrets",
	// "spire").
	Name string
	// Entities it vouches for ("" is the mesh's own).
	Entities []string
	// Stale is set when the backend stopped updating past its bound;
	// Detail says what it is waiting for.
	Stale  bool
	Detail string
}

// AuditEntry is one audit log line.
type AuditEntry struct {
	Seq                               int64
	Time                              time.Time
	Action, Identity, Outcome, Detail string
	Hash                              string
}

// AuditLog is the audit page: the newest entries and the verification of
// the whole chain.
type AuditLog struct {
	Entries []AuditEntry
	Total   int
	// Verified is set when the whole hash chain and its checkpoints
	// verify; VerifyError says why not.
	Verified    bool
	VerifyError string
	CheckedAt   time.Time
}

// Intermediate is one of the CA's intermediates.
type Intermediate struct {
	KeyID, Subject string
	// State is "active", "prepared", "retired", "tainted" (every leaf
	// it signed is to renew now) or "revoked" (nothing trusts it).
	State               string
	NotBefore, NotAfter time.Time
	// LiveCerts counts the certificates it issued that have neither
	// expired nor been revoked.
	LiveCerts int
}

// Question asks a stored policy about a modelled caller, as `meshctl
// policy check` does.
type Question struct {
	Policy, Identity, Source, Entity, Operation string
}

// Decision is a policy's answer and the rule that made it.
type Decision struct {
	Allowed bool
	Rule    string
}

// Event is one change shown live.
type Event struct {
	// Kind is "registered", "evicted", "revoked", "reinstated",
	// "entity.revoked", "entity.registered"….
	Kind string
	// Subject is the agent id, identity, serial or entity it concerns.
	Subject string
	Detail  string
	At      time.Time
}
