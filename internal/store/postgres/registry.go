package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/meshtrust/meshtrust/internal/store"
)

// nullNanos is store.Nanos for a time that may be unset: the zero
// time.Time is NULL.
func nullNanos(field string, t time.Time) (*int64, error) {
	if t.IsZero() {
		return nil, nil
	}
	n, err := store.Nanos(field, t)
	if err != nil {
		return nil, err
	}
	return &n, nil
}

// fromNullNanos is the inverse of nullNanos.
func fromNullNanos(n *int64) time.Time {
	if n == nil {
		return time.Time{}
	}
	return store.FromNanos(*n)
}

// timeArgs converts the named times to their column values.
func timeArgs(fields ...namedTime) ([]any, error) {
	out := make([]any, len(fields))
	for i, f := range fields {
		n, err := nullNanos(f.name, f.t)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

type namedTime struct {
	name string
	t    time.Time
}

// PutEntity records e and appends a in the same transaction; see
// sqlite.Store.PutEntity, whose contract this is.
func (s *Store) PutEntity(ctx context.Context, e store.Entity, replace bool, a store.AuditEntry) error {
	if e.Name == "" {
		return errors.New("postgres: record entity: name is empty")
	}
	times, err := timeArgs(namedTime{"NotBefore", e.NotBefore}, namedTime{"NotAfter", e.NotAfter},
		namedTime{"CreatedAt", e.CreatedAt}, namedTime{"RevokedAt", e.RevokedAt}, namedTime{"RotatedAt", e.RotatedAt})
	if err != nil {
		return fmt.Errorf("postgres: record entity %q: %w", e.Name, err)
	}
	caPEM := e.CAPEM
	if caPEM == nil {
		caPEM = []byte{}
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("postgres: record entity %q: %w", e.Name, err)
	}
	args := append([]any{e.Name, caPEM, e.Fingerprint, e.Subject}, times...)
	args = append(args, replace, e.Namespace)
	return s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		tag, err := tx.Exec(ctx, `INSERT INTO entities (name, ca_pem, fingerprint, subject,
			not_before, not_after, created_at, revoked_at, rotated_at, namespace)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11)
			ON CONFLICT (name) DO UPDATE SET ca_pem = excluded.ca_pem, fingerprint = excluded.fingerprint,
				subject = excluded.subject, not_before = excluded.not_before, not_after = excluded.not_after,
				created_at = excluded.created_at, revoked_at = excluded.revoked_at, rotated_at = excluded.rotated_at,
				namespace = excluded.namespace
			WHERE $10 OR entities.revoked_at IS NOT NULL`, args...)
		if err != nil {
			return fmt.Errorf("postgres: record entity %q: %w", e.Name, classify(err))
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: entity %q is registered and not revoked", store.ErrExists, e.Name)
		}
		if _, err := insertEvent(ctx, tx, store.Event{Kind: store.EventEntityRegistered, Entity: e.Name}, a.Time.UnixNano()); err != nil {
			return fmt.Errorf("postgres: record entity %q: %w", e.Name, err)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// RevokeEntity marks the entity name revoked at t with its event (unless
// it was revoked already, when the first time is kept and no event is
// added) and a, or returns an error wrapping store.ErrNotFound.
func (s *Store) RevokeEntity(ctx context.Context, name string, t time.Time, a store.AuditEntry) error {
	return s.markEntity(ctx, "revoke",
		`INSERT INTO events (kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
			SELECT 'entity.revoked', '', '', '', name, '', 0, $1 FROM entities WHERE name = $2 AND revoked_at IS NULL`,
		`UPDATE entities SET revoked_at = coalesce(revoked_at, $1) WHERE name = $2`, name, t, a)
}

// RotateEntity sets the RotatedAt of the entity name to t with its event
// and a, or returns an error wrapping store.ErrNotFound.
func (s *Store) RotateEntity(ctx context.Context, name string, t time.Time, a store.AuditEntry) error {
	return s.markEntity(ctx, "rotate",
		`INSERT INTO events (kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
			SELECT 'entity.rotated', '', '', '', name, '', 0, $1 FROM entities WHERE name = $2`,
		`UPDATE entities SET rotated_at = $1 WHERE name = $2`, name, t, a)
}

// markEntity runs event, then update, both taking the time and the name,
// and appends a; verb names the operation in errors.
func (s *Store) markEntity(ctx context.Context, verb, event, update, name string, t time.Time, a store.AuditEntry) error {
	if t.IsZero() {
		t = s.now()
	}
	at, err := store.Nanos("time", t)
	if err != nil {
		return fmt.Errorf("postgres: %s entity %q: %w", verb, name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("postgres: %s entity %q: %w", verb, name, err)
	}
	return s.submit(ctx, true, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		if _, err := tx.Exec(ctx, event, at, name); err != nil {
			return fmt.Errorf("postgres: %s entity %q: append event: %w", verb, name, classify(err))
		}
		tag, err := tx.Exec(ctx, update, at, name)
		if err != nil {
			return fmt.Errorf("postgres: %s entity %q: %w", verb, name, classify(err))
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: no entity %q is recorded, so it cannot be %sd", store.ErrNotFound, name, verb)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

const entityColumns = `name, ca_pem, fingerprint, subject, not_before, not_after, created_at, revoked_at, rotated_at, namespace`

// Entity returns the entity named name, or an error wrapping
// store.ErrNotFound.
func (s *Store) Entity(ctx context.Context, name string) (store.Entity, error) {
	es, err := s.entities(ctx, `SELECT `+entityColumns+` FROM entities WHERE name = $1`, name)
	if err != nil {
		return store.Entity{}, fmt.Errorf("postgres: read entity %q: %w", name, err)
	}
	if len(es) == 0 {
		return store.Entity{}, fmt.Errorf("%w: no entity %q", store.ErrNotFound, name)
	}
	return es[0], nil
}

// Entities returns every entity, revoked ones included, ordered by name.
func (s *Store) Entities(ctx context.Context) ([]store.Entity, error) {
	es, err := s.entities(ctx, `SELECT `+entityColumns+` FROM entities ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("postgres: read entities: %w", err)
	}
	return es, nil
}

func (s *Store) entities(ctx context.Context, query string, args ...any) ([]store.Entity, error) {
	return readRows(s, ctx, query, args, func(row pgx.Rows) (store.Entity, error) {
		var (
			e     store.Entity
			times [5]*int64
		)
		if err := row.Scan(&e.Name, &e.CAPEM, &e.Fingerprint, &e.Subject,
			&times[0], &times[1], &times[2], &times[3], &times[4], &e.Namespace); err != nil {
			return e, err
		}
		if len(e.CAPEM) == 0 {
			e.CAPEM = nil
		}
		e.NotBefore, e.NotAfter, e.CreatedAt = fromNullNanos(times[0]), fromNullNanos(times[1]), fromNullNanos(times[2])
		e.RevokedAt, e.RotatedAt = fromNullNanos(times[3]), fromNullNanos(times[4])
		return e, nil
	})
}

// PutAgents writes agents over stored records of the same ownership and
// a version not newer, in one transaction, never inserting one; see
// sqlite.Store.PutAgents, whose contract this is.
func (s *Store) PutAgents(ctx context.Context, agents []store.Agent) error {
	if len(agents) == 0 {
		return nil
	}
	rows, err := agentRows(agents)
	if err != nil {
		return err
	}
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, _ *chainHead) error {
		return updateAgentRows(ctx, tx, agents, rows)
	})
}

// UpdateAgent is PutAgents of ag alone, returning an error wrapping
// store.ErrNotFound when no record of ag.ID is stored and one wrapping
// store.ErrAgentOwned when the stored record has another ownership. The
// update's condition and the read that explains a refusal run in one
// transaction, one at a time with every replica's claims.
func (s *Store) UpdateAgent(ctx context.Context, ag store.Agent) error {
	agents := []store.Agent{ag}
	rows, err := agentRows(agents)
	if err != nil {
		return err
	}
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, _ *chainHead) error {
		tag, err := tx.Exec(ctx, updateAgentSQL, rows[0]...)
		if err != nil {
			return fmt.Errorf("postgres: record agent %q: %w", ag.ID, classify(err))
		}
		if tag.RowsAffected() > 0 {
			return nil
		}
		var cur store.Agent
		err = tx.QueryRow(ctx, `SELECT owner, entity, source FROM agents WHERE id = $1`, ag.ID).Scan(&cur.Owner, &cur.Entity, &cur.Source)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("postgres: record agent %q: %w", ag.ID, classify(err))
		}
		return store.UpdateRefusal(ag, cur, err == nil)
	})
}

// PutAgentAudited is the conditional claim of an agent id (see
// store.AgentAuditor): ag, its ownership included, with a appended, unless
// the recorded agent is owned by another (store.OwnedByOther), when
// nothing is written and the error wraps store.ErrAgentOwned. The check
// runs in the transaction that writes, and the writers of every replica
// run one at a time (the audit head's lock), so no two replicas both
// grant the id.
func (s *Store) PutAgentAudited(ctx context.Context, ag store.Agent, a store.AuditEntry) error {
	agents := []store.Agent{ag}
	rows, err := agentRows(agents)
	if err != nil {
		return err
	}
	if a, err = s.prepareAudit(a); err != nil {
		return fmt.Errorf("postgres: record agent %q: %w", ag.ID, err)
	}
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		var cur store.Agent
		err := tx.QueryRow(ctx, `SELECT owner, entity, source FROM agents WHERE id = $1`, ag.ID).Scan(&cur.Owner, &cur.Entity, &cur.Source)
		switch {
		case err == nil && store.OwnedByOther(cur, ag):
			return fmt.Errorf("%w: agent id %q is owned by %q", store.ErrAgentOwned, ag.ID, cur.Owner)
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("postgres: record agent %q: %w", ag.ID, classify(err))
		}
		if _, err := tx.Exec(ctx, claimAgentSQL, rows[0]...); err != nil {
			return fmt.Errorf("postgres: record agent %q: %w", ag.ID, classify(err))
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// agentRows converts agents to their column values before their write is
// queued.
func agentRows(agents []store.Agent) ([][]any, error) {
	rows := make([][]any, len(agents))
	for i, ag := range agents {
		if ag.ID == "" {
			return nil, fmt.Errorf("postgres: record agents: agent %d of %d has an empty id", i+1, len(agents))
		}
		times, err := timeArgs(namedTime{"RegisteredAt", ag.RegisteredAt}, namedTime{"LastSeen", ag.LastSeen}, namedTime{"RotateFrom", ag.RotateFrom})
		if err != nil {
			return nil, fmt.Errorf("postgres: record agent %q: %w", ag.ID, err)
		}
		payload := ag.Payload
		if payload == nil {
			payload = []byte{}
		}
		rows[i] = append([]any{ag.ID, ag.Owner, ag.Entity, payload, ag.CertSerial, ag.CertFingerprint, ag.Status, ag.Reason},
			append(times, ag.Version, ag.Source)...)
	}
	return rows, nil
}

// claimAgentSQL is the claim's write (PutAgentAudited), once
// store.OwnedByOther has passed: it inserts, and it alone sets owner,
// entity and source. A claim that keeps the stored ownership and is older
// than the stored record changes nothing; one that changes it is written
// whatever the stored version, one past it at least.
const claimAgentSQL = `INSERT INTO agents (id, owner, entity, payload, cert_serial, cert_fingerprint,
	status, reason, registered_at, last_seen, rotate_from, version, source)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
	ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, entity = excluded.entity,
		source = excluded.source, payload = excluded.payload, cert_serial = excluded.cert_serial,
		cert_fingerprint = excluded.cert_fingerprint, status = excluded.status,
		reason = excluded.reason, registered_at = excluded.registered_at,
		last_seen = excluded.last_seen, rotate_from = excluded.rotate_from,
		version = CASE WHEN excluded.version >= agents.version THEN excluded.version ELSE agents.version + 1 END
	WHERE excluded.version >= agents.version OR agents.owner <> excluded.owner
		OR agents.entity <> excluded.entity OR agents.source <> excluded.source`

// updateAgentSQL is every other write (PutAgents, UpdateAgent), with
// agentRows' arguments: over a stored record of the same owner ($2),
// entity ($3) and source ($13), the exact strings the writer authorised
// the change against, and not older. It never inserts.
const updateAgentSQL = `UPDATE agents SET payload = $4, cert_serial = $5, cert_fingerprint = $6,
	status = $7, reason = $8, registered_at = $9, last_seen = $10, rotate_from = $11, version = $12
	WHERE id = $1 AND owner = $2 AND entity = $3 AND source = $13 AND version <= $12`

// updateAgentRows writes the rows of agents in tx over stored records of
// the same ownership, never inserting one.
func updateAgentRows(ctx context.Context, tx pgx.Tx, agents []store.Agent, rows [][]any) error {
	b := &pgx.Batch{}
	for _, args := range rows {
		b.Queue(updateAgentSQL, args...)
	}
	res := tx.SendBatch(ctx, b)
	for i := range rows {
		if _, err := res.Exec(); err != nil {
			res.Close()
			return fmt.Errorf("postgres: record agent %q: %w", agents[i].ID, classify(err))
		}
	}
	if err := res.Close(); err != nil {
		return fmt.Errorf("postgres: record agents: %w", classify(err))
	}
	return nil
}

// DeleteAgent removes the record of the agent id and appends a in the same
// transaction, or returns an error wrapping store.ErrNotFound.
func (s *Store) DeleteAgent(ctx context.Context, id string, a store.AuditEntry) error {
	a, err := s.prepareAudit(a)
	if err != nil {
		return fmt.Errorf("postgres: delete agent %q: %w", id, err)
	}
	return s.submit(ctx, false, func(ctx context.Context, tx pgx.Tx, head *chainHead) error {
		tag, err := tx.Exec(ctx, `DELETE FROM agents WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("postgres: delete agent %q: %w", id, classify(err))
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: no agent %q is recorded, so it cannot be deleted", store.ErrNotFound, id)
		}
		return appendAudit(ctx, tx, head, a)
	})
}

// Agents returns every recorded agent, ordered by id.
func (s *Store) Agents(ctx context.Context) ([]store.Agent, error) {
	as, err := readRows(s, ctx, `SELECT id, owner, entity, source, payload, cert_serial, cert_fingerprint,
		status, reason, registered_at, last_seen, rotate_from, version FROM agents ORDER BY id`, nil,
		func(row pgx.Rows) (store.Agent, error) {
			var (
				ag    store.Agent
				times [3]*int64
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
		return nil, fmt.Errorf("postgres: read agents: %w", err)
	}
	return as, nil
}
