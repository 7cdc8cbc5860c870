package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/internal/store"
)

// A request is one write waiting for the writer goroutine.
type request struct {
	// op performs the write inside the batch's transaction. It appends to
	// the audit log through tx, whose head it may advance; the writer
	// keeps the advance only if op succeeds.
	op func(ctx context.Context, tx *writeTx) error
	// done receives op's outcome once the batch has committed or failed.
	done chan error
}

// chainHead is the last entry of the audit log: the one a new entry links to.
type chainHead struct {
	seq  int64
	hash string
}

// submit queues op for the writer and waits until the transaction that
// carries it has committed. It gives up with ctx's error only while op waits
// to be queued: a queued write is carried out, and its caller told the
// outcome, whatever happens to ctx.
func (s *Store) submit(ctx context.Context, op func(context.Context, *writeTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &request{op: op, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return store.ErrClosed
	}
	select {
	case s.reqs <- r:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	return <-r.done
}

// writer is the store's only writer. It takes the first waiting request,
// gathers every other request already queued (up to maxBatch), carries them
// out in one transaction and answers them all after that transaction
// commits. It returns when Close has closed reqs and the queue is empty.
func (s *Store) writer() {
	defer close(s.writerDone)
	batch := make([]*request, 0, maxBatch)
	for first := range s.reqs {
		if s.beforeBatch != nil {
			s.beforeBatch()
		}
		batch = append(batch[:0], first)
	gather:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			default:
				break gather
			}
		}
		s.commit(batch)
		clear(batch)
	}
}

// commit carries out batch in one transaction and answers every request in
// it. A batch of several first runs its requests one after another with
// no savepoints: that is the common case (every request succeeds), and a
// savepoint and its release are two more statements per request, round
// trips on PostgreSQL. If one of them fails, that transaction is rolled
// back, nothing of it committed, and the batch runs again with each
// request in its own savepoint (as a batch of one always runs), so a request that fails (a duplicate
// serial, a refused certificate) is rolled back alone and the others
// commit. A failing request thus costs its batch one extra run at most.
// If the transaction itself fails, every request in it is answered with
// that error: none of them was written (or, for a commit whose answer was
// lost with the connection, none was acknowledged).
func (s *Store) commit(batch []*request) {
	errs := make([]error, len(batch))
	err := s.execBatch(batch, errs, len(batch) == 1)
	if errors.Is(err, errRequestFailed) {
		clear(errs)
		err = s.execBatch(batch, errs, true)
	}
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
	} else {
		s.commits.Add(1)
		s.writes.Add(int64(len(batch)))
	}
	for i, r := range batch {
		r.done <- errs[i]
	}
}

// errRequestFailed is execBatch's answer, without savepoints, when a
// request failed: the transaction was rolled back, and the batch is to
// be run again with savepoints.
var errRequestFailed = errors.New("a request of the batch failed")

// execBatch runs batch in one transaction, recording each request's own
// failure in errs. It returns an error, having rolled back, if the
// transaction as a whole could not be carried out. With alone, each
// request runs in its own savepoint and one that fails is rolled back
// alone; without, the first request that fails rolls back the whole
// transaction and execBatch returns errRequestFailed.
func (s *Store) execBatch(batch []*request, errs []error, alone bool) (err error) {
	// Not the callers' contexts: the batch belongs to all of them, and a
	// queued write is carried out regardless of its caller.
	ctx := context.Background()
	sqlTx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return s.errorf("begin write transaction on %s: %w", s.where, err)
	}
	defer func() {
		if err != nil {
			sqlTx.Rollback()
		}
	}()
	tx := &writeTx{Tx: sqlTx, s: s}

	// Read (and, where several processes write, lock) the chain head
	// inside the write transaction rather than trusting a copy held in
	// memory: it costs one primary-key lookup per batch and stays right
	// after a failed commit or a write by another process.
	err = tx.queryRow(ctx, tx.st().head).Scan(&tx.head.seq, &tx.head.hash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return s.errorf("read the audit log's head on %s: %w", s.where, err)
	}
	events := false
	for i, r := range batch {
		if !alone {
			tx.events = false
			if errs[i] = r.op(ctx, tx); errs[i] != nil {
				if errors.Is(errs[i], store.ErrUnavailable) {
					// The connection is gone: so is the transaction.
					return errs[i]
				}
				return errRequestFailed
			}
			events = events || tx.events
			continue
		}
		if err := tx.exec(ctx, tx.st().savepoint); err != nil {
			return s.errorf("savepoint: %w", err)
		}
		head := tx.head
		tx.events = false
		if errs[i] = r.op(ctx, tx); errs[i] != nil {
			tx.head = head
			// If op's failure was one the database answers by ending the
			// whole transaction (a full disk, an I/O error, a lost
			// connection), the savepoint is gone and this fails, failing
			// the batch.
			if err := tx.exec(ctx, tx.st().rollbackTo); err != nil {
				return s.errorf("roll back failed write (%v): %w", errs[i], err)
			}
			if errors.Is(errs[i], store.ErrUnavailable) {
				// The connection is gone: so is the transaction.
				return errs[i]
			}
		} else {
			events = events || tx.events
		}
		if err := tx.exec(ctx, tx.st().release); err != nil {
			return s.errorf("release savepoint: %w", err)
		}
	}
	if events {
		if err := s.d.notify(ctx, sqlTx); err != nil {
			return s.errorf("notify: %w", err)
		}
	}
	if err := sqlTx.Commit(); err != nil {
		return s.errorf("commit on %s: %w", s.where, err)
	}
	return nil
}

// writeStmts are the writer's statements, prepared once on the write
// connection: parsing a statement, and compiling the audit triggers into
// it, would otherwise cost more than executing it.
type writeStmts struct {
	savepoint, rollbackTo, release *sql.Stmt

	head             *sql.Stmt
	insertAudit      *sql.Stmt
	insertCert       *sql.Stmt
	certNames        *sql.Stmt
	insertRevocation *sql.Stmt
	nextCRL          *sql.Stmt
	insertEvent      *sql.Stmt
	certBlocked      *sql.Stmt
	liveCert         *sql.Stmt
	agentOwner       *sql.Stmt
	blockKey         *sql.Stmt
	keyCerts         *sql.Stmt
	identityCerts    *sql.Stmt
	revokeIdentity   *sql.Stmt
	reinstate        *sql.Stmt

	entityRotatedEvent *sql.Stmt

	putEntity    *sql.Stmt
	revokeEntity *sql.Stmt
	entityEvent  *sql.Stmt
	rotateEntity *sql.Stmt
	claimAgent   *sql.Stmt
	updateAgent  *sql.Stmt
	deleteAgent  *sql.Stmt

	putPolicy *sql.Stmt

	insertCAState *sql.Stmt
	updateCAState *sql.Stmt

	insertToken *sql.Stmt
	token       *sql.Stmt
	useToken    *sql.Stmt

	// all holds every statement above that was prepared, for close.
	all []*sql.Stmt
}

// prepareWriteStmts prepares the writer's statements on db, in d's form.
func prepareWriteStmts(ctx context.Context, d dialect, db *sql.DB) (*writeStmts, error) {
	st := new(writeStmts)
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&st.savepoint, `SAVEPOINT request`},
		{&st.rollbackTo, `ROLLBACK TO SAVEPOINT request`},
		{&st.release, `RELEASE SAVEPOINT request`},
		{&st.head, d.lockHead()},
		{&st.insertAudit, `INSERT INTO audit (seq, time, action, identity, outcome, detail, prev_hash, hash)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`},
		{&st.insertCert, `INSERT INTO certs (serial, common_name, kind, sans,
			not_before, not_after, fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by, agent_node)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		// What would refuse a certificate: its identity (or its node)
		// revoked, its key blocked, the certificate that asked for it
		// revoked. One statement, since it runs on every issuance.
		{&st.certBlocked, `SELECT
			(SELECT count(*) FROM revoked_identities WHERE name IN (?1, ?2)),
			(SELECT count(*) FROM blocked_keys WHERE ?3 <> '' AND key_hash = ?3),
			(SELECT count(*) FROM revocations WHERE ?4 <> '' AND serial = ?4)`},
		{&st.liveCert, liveCertQuery},
		{&st.agentOwner, `SELECT owner, entity, source FROM agents WHERE id = ?`},
		{&st.certNames, `SELECT common_name, issuer_key_id, key_hash, pem FROM certs WHERE serial = ?`},
		{&st.blockKey, `INSERT INTO blocked_keys (key_hash, serial, blocked_at) VALUES (?, ?, ?)
			ON CONFLICT (key_hash) DO NOTHING`},
		// The live certificates a keyCompromise revocation of the key ?1
		// at ?2 reaches: by their key's hash, and those recorded without
		// one (store.SameKey reads their key), by certs_key_hash.
		{&st.keyCerts, `SELECT serial, key_hash, pem FROM certs
			WHERE key_hash IN (?1, '') AND kind <> 'intermediate' AND not_after > ?2
			  AND serial NOT IN (SELECT serial FROM revocations)
			ORDER BY issued_at, {{recorded}}`},
		{&st.identityCerts, identityCertsQuery},
		{&st.revokeIdentity, `INSERT INTO revoked_identities (name, reason, revoked_at) VALUES (?, ?, ?)`},
		{&st.reinstate, `DELETE FROM revoked_identities WHERE name = ?`},
		{&st.insertRevocation, `INSERT INTO revocations (serial, common_name, issuer_key_id, reason, revoked_at)
			VALUES (?, ?, ?, ?, ?) RETURNING seq`},
		// The increment is the database's, so CRL numbers only grow
		// whichever replica asks.
		{&st.nextCRL, `INSERT INTO crl_numbers (issuer_key_id, number) VALUES (?, 1)
			ON CONFLICT (issuer_key_id) DO UPDATE SET number = crl_numbers.number + 1
			RETURNING number`},
		{&st.insertEvent, `INSERT INTO events (kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq`},
		// Without replace (the last argument), a live entity of the same
		// name is left as it is and the statement changes no row.
		{&st.putEntity, `INSERT INTO entities (name, ca_pem, fingerprint, subject,
			not_before, not_after, created_at, revoked_at, rotated_at, namespace)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET ca_pem = excluded.ca_pem, fingerprint = excluded.fingerprint,
				subject = excluded.subject, not_before = excluded.not_before, not_after = excluded.not_after,
				created_at = excluded.created_at, revoked_at = excluded.revoked_at, rotated_at = excluded.rotated_at,
				namespace = excluded.namespace
			WHERE ? OR entities.revoked_at IS NOT NULL`},
		{&st.putPolicy, `INSERT INTO policies (name, document, updated_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at`},
		// The CA state's compare-and-set (PutCAState): the first write
		// inserts version 1 unless a row exists; every later one moves
		// the version on from the one the writer read, or changes no row.
		{&st.insertCAState, `INSERT INTO ca_state (id, version, document, updated_at) VALUES (1, 1, ?, ?)
			ON CONFLICT (id) DO NOTHING`},
		{&st.updateCAState, `UPDATE ca_state SET version = version + 1, document = ?, updated_at = ?
			WHERE id = 1 AND version = ?`},
		// A second revocation keeps the time of the first.
		{&st.revokeEntity, `UPDATE entities SET revoked_at = coalesce(revoked_at, ?) WHERE name = ?`},
		// An event for the entity named by the second argument, at the
		// first, but only while it is not revoked: a second revocation is
		// no news to the feed.
		{&st.entityEvent, `INSERT INTO events (kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
			SELECT 'entity.revoked', '', '', '', name, '', 0, ? FROM entities WHERE name = ? AND revoked_at IS NULL`},
		{&st.entityRotatedEvent, `INSERT INTO events (kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
			SELECT 'entity.rotated', '', '', '', name, '', 0, ? FROM entities WHERE name = ?`},
		{&st.rotateEntity, `UPDATE entities SET rotated_at = ? WHERE name = ?`},
		// The claim (PutAgentAudited), once store.OwnedByOther has
		// passed: it inserts, and it alone sets owner, entity and source.
		// A claim that keeps the stored ownership and is older than the
		// stored record changes nothing (a copy taken before the write
		// that stored the newer); one that changes it is written whatever
		// the stored version, one past it at least.
		{&st.claimAgent, `INSERT INTO agents (id, owner, entity, payload, cert_serial, cert_fingerprint,
			status, reason, registered_at, last_seen, rotate_from, version, source)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, entity = excluded.entity,
				source = excluded.source, payload = excluded.payload, cert_serial = excluded.cert_serial,
				cert_fingerprint = excluded.cert_fingerprint, status = excluded.status,
				reason = excluded.reason, registered_at = excluded.registered_at,
				last_seen = excluded.last_seen, rotate_from = excluded.rotate_from,
				version = CASE WHEN excluded.version >= agents.version THEN excluded.version ELSE agents.version + 1 END
			WHERE excluded.version >= agents.version OR agents.owner <> excluded.owner
				OR agents.entity <> excluded.entity OR agents.source <> excluded.source`},
		// Every other write (PutAgents, UpdateAgent), with agentArgs'
		// arguments: over a stored record of the same owner (?2), entity
		// (?3) and source (?13), the exact strings the writer authorised
		// the change against, and not older. It never inserts.
		{&st.updateAgent, `UPDATE agents SET payload = ?4, cert_serial = ?5, cert_fingerprint = ?6,
			status = ?7, reason = ?8, registered_at = ?9, last_seen = ?10, rotate_from = ?11, version = ?12
			WHERE id = ?1 AND owner = ?2 AND entity = ?3 AND source = ?13 AND version <= ?12`},
		{&st.deleteAgent, `DELETE FROM agents WHERE id = ?`},
		{&st.insertToken, `INSERT INTO join_tokens (hash, node_id, created_at, expires_at, used_at)
			VALUES (?, ?, ?, ?, ?)`},
		{&st.token, `SELECT node_id, created_at, expires_at, used_at FROM join_tokens WHERE hash = ?`},
		// used_at IS NULL again, though UseToken has checked it: a token
		// is spent once, whatever the code around this statement does.
		{&st.useToken, `UPDATE join_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL`},
	} {
		var err error
		if *p.dst, err = db.PrepareContext(ctx, d.query(p.query)); err != nil {
			st.close()
			return nil, fmt.Errorf("prepare %q: %w", p.query, err)
		}
		st.all = append(st.all, *p.dst)
	}
	return st, nil
}

// liveCertQuery selects a live certificate of the common name ?1 at ?2
// (RecordCert of an exclusive certificate), by certs_names (?3 is
// nameNode(?1)).
const liveCertQuery = `SELECT serial FROM certs WHERE agent_node IN ('', ?3) AND common_name = ?1 AND not_after > ?2
	AND serial NOT IN (SELECT serial FROM revocations) LIMIT 1`

// close closes the statements that were prepared.
func (st *writeStmts) close() {
	for _, s := range st.all {
		s.Close()
	}
}

// writeTx is the transaction of one batch, with the writer's statements
// and the audit log's head as the requests so far left it.
type writeTx struct {
	*sql.Tx
	s    *Store
	head chainHead
	// events is set by a request that appended to the change feed.
	events bool
}

func (tx *writeTx) st() *writeStmts { return tx.s.stmts }

// exec runs the prepared statement stmt in the transaction.
func (tx *writeTx) exec(ctx context.Context, stmt *sql.Stmt, args ...any) error {
	_, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
	return err
}

// execRows runs the prepared statement stmt in the transaction and returns
// the number of rows it changed.
func (tx *writeTx) execRows(ctx context.Context, stmt *sql.Stmt, args ...any) (int64, error) {
	res, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// queryRow runs the prepared statement stmt in the transaction.
func (tx *writeTx) queryRow(ctx context.Context, stmt *sql.Stmt, args ...any) *sql.Row {
	return tx.StmtContext(ctx, stmt).QueryRowContext(ctx, args...)
}

// appendAudit writes a as the entry after the head and advances the head
// to it.
func (tx *writeTx) appendAudit(ctx context.Context, a store.AuditEntry) error {
	a.Seq = tx.head.seq + 1
	a.PrevHash = tx.head.hash
	a.Hash = store.HashEntry(a.PrevHash, a)
	d := tx.s.d
	if err := tx.exec(ctx, tx.st().insertAudit, a.Seq, a.Time.UnixNano(),
		d.auditText(a.Action), d.auditText(a.Identity), d.auditText(a.Outcome), d.auditText(a.Detail), a.PrevHash, a.Hash); err != nil {
		return tx.s.errorf("append audit entry %d: %w", a.Seq, err)
	}
	tx.head.seq, tx.head.hash = a.Seq, a.Hash
	return nil
}

// insertEvent appends e to the change feed in tx at time at (Unix
// nanoseconds) and returns its Seq.
func (tx *writeTx) insertEvent(ctx context.Context, e store.Event, at int64) (int64, error) {
	var seq int64
	err := tx.queryRow(ctx, tx.st().insertEvent, string(e.Kind), e.Serial, e.IssuerKeyID, e.CommonName,
		e.Entity, e.KeyHash, e.Reason, at).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("append %s event: %w", e.Kind, tx.s.d.classify(err))
	}
	tx.events = true
	return seq, nil
}
