package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// PutEntity records e and appends a to the audit log in the same
// transaction. Without replace it returns an error wrapping
// store.ErrExists if an entity named e.Name is recorded and not revoked;
// then neither e nor a is written. A revoked entity is overwritten with or
// without replace: that is how it is registered again.
//
// An overwritten entity takes every field of e, RevokedAt and RotatedAt
// included, so Entity returns e as given. Zero times are kept as zero; a
// zero a.Time is set from the store's clock. Every other time must lie
// between the years 1678 and 2262.
func (s *Store) PutEntity(ctx context.Context, e store.Entity, replace bool, a store.AuditEntry) error {
	if e.Name == "" {
		return s.errorf("record entity: name is empty")
	}
	args, err := entityArgs(e)
	if err != nil {
		return s.errorf("record entity %q: %w", e.Name, err)
	}
	args = append(args, replace)
	if a, err = s.prepareAudit(a); err != nil {
		return s.errorf("record entity %q: %w", e.Name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		n, err := tx.execRows(ctx, tx.st().putEntity, args...)
		if err != nil {
			return s.errorf("record entity %q: %w", e.Name, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: entity %q is registered and not revoked", store.ErrExists, e.Name)
		}
		if _, err := tx.insertEvent(ctx, store.Event{Kind: store.EventEntityRegistered, Entity: e.Name}, a.Time.UnixNano()); err != nil {
			return s.errorf("record entity %q: %w", e.Name, err)
		}
		return tx.appendAudit(ctx, a)
	})
}

// entityArgs returns the column values of e in the order of the entities
// table.
func entityArgs(e store.Entity) ([]any, error) {
	args := make([]any, 0, 11) // room for PutEntity's replace
	caPEM := e.CAPEM
	if caPEM == nil {
		caPEM = []byte{} // the column is NOT NULL
	}
	args = append(args, e.Name, caPEM, e.Fingerprint, e.Subject)
	for _, f := range []struct {
		name string
		t    time.Time
	}{
		{"NotBefore", e.NotBefore},
		{"NotAfter", e.NotAfter},
		{"CreatedAt", e.CreatedAt},
		{"RevokedAt", e.RevokedAt},
		{"RotatedAt", e.RotatedAt},
	} {
		n, err := nullNanos(f.name, f.t)
		if err != nil {
			return nil, err
		}
		args = append(args, n)
	}
	return append(args, e.Namespace), nil
}

// RevokeEntity marks the entity named name revoked at t, appends an event
// for it to the change feed (see Events) and appends a to the audit log,
// all in one transaction. A zero t or a.Time is set from the store's
// clock. Revoking a revoked entity appends a but keeps the time of the
// first revocation, since the entity has been untrusted since then, and
// appends no event, since the feed has told its subscribers already. An
// entity registered again after its revocation is revoked anew, with a new
// event. RevokeEntity returns an error wrapping store.ErrNotFound, and
// writes nothing, if no entity named name is recorded.
func (s *Store) RevokeEntity(ctx context.Context, name string, t time.Time, a store.AuditEntry) error {
	return s.markEntity(ctx, "revoke", s.stmts.entityEvent, s.stmts.revokeEntity, name, t, a)
}

// RotateEntity sets the RotatedAt of the entity named name to t and appends
// its event and a in the same transaction. A zero t or a.Time is set from
// the store's clock. It returns an error wrapping store.ErrNotFound, and
// writes nothing, if no entity named name is recorded.
func (s *Store) RotateEntity(ctx context.Context, name string, t time.Time, a store.AuditEntry) error {
	return s.markEntity(ctx, "rotate", s.stmts.entityRotatedEvent, s.stmts.rotateEntity, name, t, a)
}

// markEntity runs event, which appends the entity's event (or, for a
// revoked entity's second revocation, none), then update, which sets a
// time of the entity; both take the time and the name. The event runs
// first so that it sees the entity as it was. It appends a; verb names the
// operation in errors.
func (s *Store) markEntity(ctx context.Context, verb string, event, update *sql.Stmt, name string, t time.Time, a store.AuditEntry) error {
	if t.IsZero() {
		// Zero would mean "not revoked" or "never rotated": the opposite
		// of what the caller asked for.
		t = s.now()
	}
	at, err := store.Nanos("time", t)
	if err != nil {
		return s.errorf("%s entity %q: %w", verb, name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return s.errorf("%s entity %q: %w", verb, name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		n, err := tx.execRows(ctx, event, at, name)
		if err != nil {
			return s.errorf("%s entity %q: append event: %w", verb, name, err)
		}
		tx.events = tx.events || n > 0
		if n, err = tx.execRows(ctx, update, at, name); err != nil {
			return s.errorf("%s entity %q: %w", verb, name, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: no entity %q is recorded, so it cannot be %sd", store.ErrNotFound, name, verb)
		}
		return tx.appendAudit(ctx, a)
	})
}

const entityColumns = `name, ca_pem, fingerprint, subject, not_before, not_after,
	created_at, revoked_at, rotated_at, namespace`

// Entity returns the entity named name, or an error wrapping
// store.ErrNotFound.
func (s *Store) Entity(ctx context.Context, name string) (store.Entity, error) {
	es, err := readRows(s, ctx, `SELECT `+entityColumns+` FROM entities WHERE name = ?`, []any{name}, scanEntity)
	if err != nil {
		return store.Entity{}, s.errorf("read entity %q: %w", name, err)
	}
	if len(es) == 0 {
		return store.Entity{}, fmt.Errorf("%w: no entity %q", store.ErrNotFound, name)
	}
	return es[0], nil
}

// Entities returns every entity, revoked ones included, ordered by name.
func (s *Store) Entities(ctx context.Context) ([]store.Entity, error) {
	es, err := readRows(s, ctx, `SELECT `+entityColumns+` FROM entities ORDER BY name`, nil, scanEntity)
	if err != nil {
		return nil, s.errorf("read entities: %w", err)
	}
	return es, nil
}

// scanEntity reads one row of entityColumns.
func scanEntity(row *sql.Rows) (store.Entity, error) {
	var (
		e     store.Entity
		times [5]sql.NullInt64
	)
	if err := row.Scan(&e.Name, &e.CAPEM, &e.Fingerprint, &e.Subject,
		&times[0], &times[1], &times[2], &times[3], &times[4], &e.Namespace); err != nil {
		return store.Entity{}, err
	}
	if len(e.CAPEM) == 0 {
		e.CAPEM = nil
	}
	e.NotBefore, e.NotAfter, e.CreatedAt = fromNullNanos(times[0]), fromNullNanos(times[1]), fromNullNanos(times[2])
	e.RevokedAt, e.RotatedAt = fromNullNanos(times[3]), fromNullNanos(times[4])
	return e, nil
}

// PutAgents writes agents over their stored records in one transaction:
// all of them are written or none is. It appends nothing to the audit
// log, since an agent's liveness is no audited event. An empty batch
// writes nothing.
//
// A record replaces the stored one only if that one has the same owner,
// entity and source (store.SameOwner) and a version that is not newer;
// any other record is left out without an error, and a record of an id
// not stored is never inserted (see store.Store). Records are applied
// in batch order, so a batch that names an agent twice keeps the last of
// its newest version.
//
// Zero times are kept as zero; every other time must lie between the years
// 1678 and 2262.
func (s *Store) PutAgents(ctx context.Context, agents []store.Agent) error {
	if len(agents) == 0 {
		return nil
	}
	rows, err := s.agentRows(agents)
	if err != nil {
		return err
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		put := tx.StmtContext(ctx, tx.st().updateAgent)
		for i, args := range rows {
			if _, err := put.ExecContext(ctx, args...); err != nil {
				return s.errorf("record agent %q: %w", agents[i].ID, err)
			}
		}
		return nil
	})
}

// UpdateAgent is PutAgents of ag alone, returning an error wrapping
// store.ErrNotFound when no record of ag.ID is stored and one wrapping
// store.ErrAgentOwned when the stored record has another ownership; then
// nothing is written. The update's condition and the read that explains a
// refusal run in one transaction, one at a time with every process's
// claims.
func (s *Store) UpdateAgent(ctx context.Context, ag store.Agent) error {
	rows, err := s.agentRows([]store.Agent{ag})
	if err != nil {
		return err
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		n, err := tx.execRows(ctx, tx.st().updateAgent, rows[0]...)
		if err != nil {
			return s.errorf("record agent %q: %w", ag.ID, err)
		}
		if n > 0 {
			return nil
		}
		cur, found, err := tx.agentOwner(ctx, ag.ID)
		if err != nil {
			return err
		}
		return store.UpdateRefusal(ag, cur, found)
	})
}

// PutAgentAudited is the claim of an agent id (see store.Store): ag
// written, its ownership included, with a appended to the audit log in
// the same transaction. a is appended even when ag keeps the stored
// ownership and is older than the stored record, and so is left out. A
// zero a.Time is set from the store's clock. When the recorded agent is
// owned by another (store.OwnedByOther), nothing is written and the error
// wraps store.ErrAgentOwned. The check runs in the transaction that
// writes, and the writers of every process run one at a time (the audit
// head), so no two processes both grant the id.
func (s *Store) PutAgentAudited(ctx context.Context, ag store.Agent, a store.AuditEntry) error {
	rows, err := s.agentRows([]store.Agent{ag})
	if err != nil {
		return err
	}
	if a, err = s.prepareAudit(a); err != nil {
		return s.errorf("record agent %q: %w", ag.ID, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		cur, found, err := tx.agentOwner(ctx, ag.ID)
		if err != nil {
			return err
		}
		if found && store.OwnedByOther(cur, ag) {
			return fmt.Errorf("%w: agent id %q is owned by %q", store.ErrAgentOwned, ag.ID, cur.Owner)
		}
		if err := tx.exec(ctx, tx.st().claimAgent, rows[0]...); err != nil {
			return s.errorf("record agent %q: %w", ag.ID, err)
		}
		return tx.appendAudit(ctx, a)
	})
}

// agentOwner reads the ownership (Owner, Entity, Source) of the stored
// record of the agent id; found is false when none is stored.
func (tx *writeTx) agentOwner(ctx context.Context, id string) (cur store.Agent, found bool, err error) {
	err = tx.queryRow(ctx, tx.st().agentOwner, id).Scan(&cur.Owner, &cur.Entity, &cur.Source)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.Agent{}, false, nil
	case err != nil:
		return store.Agent{}, false, tx.s.errorf("record agent %q: %w", id, err)
	}
	return cur, true, nil
}

// agentRows converts agents to their column values (the order of the
// agents table) before their write is queued, so that the writer, which
// every other write waits for, only executes.
func (s *Store) agentRows(agents []store.Agent) ([][]any, error) {
	rows := make([][]any, len(agents))
	for i, ag := range agents {
		if ag.ID == "" {
			return nil, s.errorf("record agents: agent %d of %d has an empty id", i+1, len(agents))
		}
		payload := ag.Payload
		if payload == nil {
			payload = []byte{} // the column is NOT NULL
		}
		args := make([]any, 0, 13)
		args = append(args, ag.ID, ag.Owner, ag.Entity, payload,
			ag.CertSerial, ag.CertFingerprint, ag.Status, ag.Reason)
		for _, f := range []struct {
			name string
			t    time.Time
		}{
			{"RegisteredAt", ag.RegisteredAt},
			{"LastSeen", ag.LastSeen},
			{"RotateFrom", ag.RotateFrom},
		} {
			n, err := nullNanos(f.name, f.t)
			if err != nil {
				return nil, s.errorf("record agent %q: %w", ag.ID, err)
			}
			args = append(args, n)
		}
		rows[i] = append(args, ag.Version, ag.Source)
	}
	return rows, nil
}

// DeleteAgent removes the record of the agent id and appends a to the audit
// log in the same transaction. A zero a.Time is set from the store's clock.
// It returns an error wrapping store.ErrNotFound, and writes nothing, if no
// agent id is recorded.
func (s *Store) DeleteAgent(ctx context.Context, id string, a store.AuditEntry) error {
	a, err := s.prepareAudit(a)
	if err != nil {
		return s.errorf("delete agent %q: %w", id, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		n, err := tx.execRows(ctx, tx.st().deleteAgent, id)
		if err != nil {
			return s.errorf("delete agent %q: %w", id, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: no agent %q is recorded, so it cannot be deleted", store.ErrNotFound, id)
		}
		return tx.appendAudit(ctx, a)
	})
}

// Agents returns every recorded agent, ordered by id.
func (s *Store) Agents(ctx context.Context) ([]store.Agent, error) {
	as, err := readRows(s, ctx, `SELECT id, owner, entity, source, payload, cert_serial, cert_fingerprint,
		status, reason, registered_at, last_seen, rotate_from, version
		FROM agents ORDER BY id`, nil,
		func(row *sql.Rows) (store.Agent, error) {
			var (
				ag    store.Agent
				times [3]sql.NullInt64
			)
			if err := row.Scan(&ag.ID, &ag.Owner, &ag.Entity, &ag.Source, &ag.Payload, &ag.CertSerial, &ag.CertFingerprint,
				&ag.Status, &ag.Reason, &times[0], &times[1], &times[2], &ag.Version); err != nil {
				return ag, err
			}
			if len(ag.Payload) == 0 {
				ag.Payload = nil
			}
			ag.RegisteredAt, ag.LastSeen, ag.RotateFrom = fromNullNanos(times[0]), fromNullNanos(times[1]), fromNullNanos(times[2])
			return ag, nil
		})
	if err != nil {
		return nil, s.errorf("read agents: %w", err)
	}
	return as, nil
}
