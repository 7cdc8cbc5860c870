package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// Compile-time check that Store implements the registry's stores.
var (
	_ store.EntityStore  = (*Store)(nil)
	_ store.AgentStore   = (*Store)(nil)
	_ store.AgentAuditor = (*Store)(nil)
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
		return errors.New("sqlite: record entity: name is empty")
	}
	args, err := entityArgs(e)
	if err != nil {
		return fmt.Errorf("sqlite: record entity %q: %w", e.Name, err)
	}
	args = append(args, replace)
	a, err = s.prepareAudit(a)
	if err != nil {
		return fmt.Errorf("sqlite: record entity %q: %w", e.Name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, head *chainHead) error {
		n, err := tx.execRows(ctx, tx.st.putEntity, args...)
		if err != nil {
			return fmt.Errorf("sqlite: record entity %q: %w", e.Name, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: entity %q is registered and not revoked", store.ErrExists, e.Name)
		}
		if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventEntityRegistered, Entity: e.Name}, a.Time.UnixNano()); err != nil {
			return fmt.Errorf("sqlite: record entity %q: %w", e.Name, err)
		}
		return appendAudit(ctx, tx, head, a)
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
// for it to the change feed (see Events) and appends a to the
// audit log, all in one transaction. A zero t or a.Time is set from the
// store's clock. Revoking a revoked entity appends a but keeps the time of
// the first revocation, since the entity has been untrusted since then,
// and appends no event, since the feed has told its subscribers already.
// An entity registered again after its revocation is revoked anew, with a
// new event. RevokeEntity returns an error wrapping store.ErrNotFound, and
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

// markEntity sets a time of the entity named name with stmt, which takes
// the time and the name, and appends a; verb names the operation in errors.
// If event is not nil, it runs first, with the same arguments, so that it
// sees the entity as it was before stmt changed it.
func (s *Store) markEntity(ctx context.Context, verb string, event, stmt *sql.Stmt, name string, t time.Time, a store.AuditEntry) error {
	if t.IsZero() {
		// Zero would mean "not revoked" or "never rotated": the opposite
		// of what the caller asked for.
		t = s.now()
	}
	at, err := nanos("time", t)
	if err != nil {
		return fmt.Errorf("sqlite: %s entity %q: %w", verb, name, err)
	}
	a, err = s.prepareAudit(a)
	if err != nil {
		return fmt.Errorf("sqlite: %s entity %q: %w", verb, name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, head *chainHead) error {
		if event != nil {
			if err := tx.exec(ctx, event, at, name); err != nil {
				return fmt.Errorf("sqlite: %s entity %q: append event: %w", verb, name, err)
			}
		}
		n, err := tx.execRows(ctx, stmt, at, name)
		if err != nil {
			return fmt.Errorf("sqlite: %s entity %q: %w", verb, name, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: no entity %q is recorded, so it cannot be %sd", store.ErrNotFound, name, verb)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

const entityColumns = `name, ca_pem, fingerprint, subject, not_before, not_after,
	created_at, revoked_at, rotated_at, namespace`

// Entity returns the entity named name, or an error wrapping
// store.ErrNotFound.
func (s *Store) Entity(ctx context.Context, name string) (store.Entity, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.Entity{}, store.ErrClosed
	}
	e, err := scanEntity(s.rdb.QueryRowContext(ctx, `SELECT `+entityColumns+` FROM entities WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Entity{}, fmt.Errorf("%w: no entity %q", store.ErrNotFound, name)
	}
	if err != nil {
		return store.Entity{}, fmt.Errorf("sqlite: read entity %q: %w", name, err)
	}
	return e, nil
}

// Entities returns every entity, revoked ones included, ordered by name.
func (s *Store) Entities(ctx context.Context) ([]store.Entity, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+entityColumns+` FROM entities ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read entities: %w", err)
	}
	defer rows.Close()
	var es []store.Entity
	for rows.Next() {
		e, err := scanEntity(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: read entities: %w", err)
		}
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read entities: %w", err)
	}
	return es, nil
}

// scanEntity reads one row of entityColumns.
func scanEntity(row interface{ Scan(...any) error }) (store.Entity, error) {
	var (
		e                                                    store.Entity
		notBefore, notAfter, createdAt, revokedAt, rotatedAt sql.NullInt64
	)
	if err := row.Scan(&e.Name, &e.CAPEM, &e.Fingerprint, &e.Subject,
		&notBefore, &notAfter, &createdAt, &revokedAt, &rotatedAt, &e.Namespace); err != nil {
		return store.Entity{}, err
	}
	if len(e.CAPEM) == 0 {
		e.CAPEM = nil
	}
	e.NotBefore, e.NotAfter = fromNullNanos(notBefore), fromNullNanos(notAfter)
	e.CreatedAt = fromNullNanos(createdAt)
	e.RevokedAt, e.RotatedAt = fromNullNanos(revokedAt), fromNullNanos(rotatedAt)
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
// not stored is never inserted (see store.AgentStore). Records are applied
// in batch order, so a batch that names an agent twice keeps the last of
// its newest version.
//
// Zero times are kept as zero; every other time must lie between the years
// 1678 and 2262.
func (s *Store) PutAgents(ctx context.Context, agents []store.Agent) error {
	if len(agents) == 0 {
		return nil
	}
	rows, err := agentRows(agents)
	if err != nil {
		return err
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, _ *chainHead) error {
		return updateAgentRows(ctx, tx, agents, rows)
	})
}

// UpdateAgent is PutAgents of ag alone, returning an error wrapping
// store.ErrNotFound when no record of ag.ID is stored and one wrapping
// store.ErrAgentOwned when the stored record has another ownership; then
// nothing is written. The writer's one transaction at a time makes the
// check and the write one step.
func (s *Store) UpdateAgent(ctx context.Context, ag store.Agent) error {
	agents := []store.Agent{ag}
	rows, err := agentRows(agents)
	if err != nil {
		return err
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, _ *chainHead) error {
		n, err := tx.execRows(ctx, tx.st.updateAgent, rows[0]...)
		if err != nil {
			return fmt.Errorf("sqlite: record agent %q: %w", ag.ID, err)
		}
		if n > 0 {
			return nil
		}
		var cur store.Agent
		err = tx.queryRow(ctx, tx.st.agentOwner, ag.ID).Scan(&cur.Owner, &cur.Entity, &cur.Source)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sqlite: record agent %q: %w", ag.ID, err)
		}
		return store.UpdateRefusal(ag, cur, err == nil)
	})
}

// PutAgentAudited is the claim of an agent id (see store.AgentAuditor):
// ag written, its ownership included, with a appended to the audit log
// in the same transaction. a is appended even when ag keeps the stored
// ownership and is older than the stored record, and so is left out. A
// zero a.Time is set from the store's clock. When the recorded agent is
// owned by another (store.OwnedByOther), nothing is written and the error
// wraps store.ErrAgentOwned: the writer's one transaction at a time makes
// the check and the write one step.
func (s *Store) PutAgentAudited(ctx context.Context, ag store.Agent, a store.AuditEntry) error {
	agents := []store.Agent{ag}
	rows, err := agentRows(agents)
	if err != nil {
		return err
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("sqlite: record agent %q: %w", ag.ID, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, head *chainHead) error {
		var cur store.Agent
		err := tx.queryRow(ctx, tx.st.agentOwner, ag.ID).Scan(&cur.Owner, &cur.Entity, &cur.Source)
		switch {
		case err == nil && store.OwnedByOther(cur, ag):
			return fmt.Errorf("%w: agent id %q is owned by %q", store.ErrAgentOwned, ag.ID, cur.Owner)
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("sqlite: record agent %q: %w", ag.ID, err)
		}
		if err := tx.exec(ctx, tx.st.claimAgent, rows[0]...); err != nil {
			return fmt.Errorf("sqlite: record agent %q: %w", ag.ID, err)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// agentRows converts agents to their column values before their write is
// queued, so that the writer, which every other write waits for, only
// executes.
func agentRows(agents []store.Agent) ([][]any, error) {
	rows := make([][]any, len(agents))
	for i, ag := range agents {
		if ag.ID == "" {
			return nil, fmt.Errorf("sqlite: record agents: agent %d of %d has an empty id", i+1, len(agents))
		}
		var err error
		if rows[i], err = agentArgs(ag); err != nil {
			return nil, fmt.Errorf("sqlite: record agent %q: %w", ag.ID, err)
		}
	}
	return rows, nil
}

// updateAgentRows writes the rows of agents in tx over stored records of
// the same ownership, never inserting one.
func updateAgentRows(ctx context.Context, tx writeTx, agents []store.Agent, rows [][]any) error {
	put := tx.StmtContext(ctx, tx.st.updateAgent)
	for i, args := range rows {
		if _, err := put.ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("sqlite: record agent %q: %w", agents[i].ID, err)
		}
	}
	return nil
}

// agentArgs returns the column values of ag in the order of the agents
// table.
func agentArgs(ag store.Agent) ([]any, error) {
	args := make([]any, 0, 13)
	payload := ag.Payload
	if payload == nil {
		payload = []byte{} // the column is NOT NULL
	}
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
			return nil, err
		}
		args = append(args, n)
	}
	return append(args, ag.Version, ag.Source), nil
}

// DeleteAgent removes the record of the agent id and appends a to the audit
// log in the same transaction. A zero a.Time is set from the store's clock.
// It returns an error wrapping store.ErrNotFound, and writes nothing, if no
// agent id is recorded.
func (s *Store) DeleteAgent(ctx context.Context, id string, a store.AuditEntry) error {
	a, err := s.prepareAudit(a)
	if err != nil {
		return fmt.Errorf("sqlite: delete agent %q: %w", id, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx writeTx, head *chainHead) error {
		n, err := tx.execRows(ctx, tx.st.deleteAgent, id)
		if err != nil {
			return fmt.Errorf("sqlite: delete agent %q: %w", id, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: no agent %q is recorded, so it cannot be deleted", store.ErrNotFound, id)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// Agents returns every recorded agent, ordered by id.
func (s *Store) Agents(ctx context.Context) ([]store.Agent, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, owner, entity, source, payload, cert_serial, cert_fingerprint,
		status, reason, registered_at, last_seen, rotate_from, version
		FROM agents ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read agents: %w", err)
	}
	defer rows.Close()
	var as []store.Agent
	for rows.Next() {
		var (
			ag                               store.Agent
			registeredAt, lastSeen, rotateAt sql.NullInt64
		)
		if err := rows.Scan(&ag.ID, &ag.Owner, &ag.Entity, &ag.Source, &ag.Payload, &ag.CertSerial, &ag.CertFingerprint,
			&ag.Status, &ag.Reason, &registeredAt, &lastSeen, &rotateAt, &ag.Version); err != nil {
			return nil, fmt.Errorf("sqlite: read agents: %w", err)
		}
		if len(ag.Payload) == 0 {
			ag.Payload = nil
		}
		ag.RegisteredAt, ag.LastSeen, ag.RotateFrom = fromNullNanos(registeredAt), fromNullNanos(lastSeen), fromNullNanos(rotateAt)
		as = append(as, ag)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read agents: %w", err)
	}
	return as, nil
}
