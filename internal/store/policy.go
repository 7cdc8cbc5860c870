package store

import (
	"context"
	"time"
)

// Policy is an allow-list policy document (meshauth's YAML) by name.
type Policy struct {
	Name     string
	Document string
	Updated  time.Time
}

// PolicyStore keeps policies. Setting one appends an EventPolicySet (its
// name in CommonName) in the same transaction.
type PolicyStore interface {
	// Policy returns the policy named name, or an error wrapping
	// ErrNotFound.
	Policy(ctx context.Context, name string) (Policy, error)
	// PutPolicy records p (a zero Updated is set from the store's clock),
	// its event and a in one transaction.
	PutPolicy(ctx context.Context, p Policy, a AuditEntry) error
}
