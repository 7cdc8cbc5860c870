package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
)

// RevokeIdentity revokes the identity r.Name: it records the identity as
// revoked and, in the same transaction, revokes every unexpired
// certificate issued to it (and, for a node, to its agents) with r.Reason,
// each with its own event and audit entry, then appends the identity's
// event and a. A zero r.RevokedAt or a.Time is set from the store's clock.
// It returns the identity as recorded and the certificates it revoked; an
// error wrapping store.ErrExists, and nothing written, if the identity is
// already revoked. Because the writers of every process run one
// transaction at a time (the audit head) and RecordCert checks the
// identity in its own, a certificate is either recorded before this
// transaction (and revoked by it) or refused.
func (s *Store) RevokeIdentity(ctx context.Context, r store.IdentityRevocation, a store.AuditEntry) (store.IdentityRevocation, []store.Revocation, error) {
	if r.Name == "" {
		return r, nil, s.errorf("revoke identity: name is empty")
	}
	if !store.ValidReason(r.Reason) {
		return r, nil, s.errorf("revoke identity %q: %d is not an RFC 5280 CRLReason code", r.Name, r.Reason)
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = s.now()
	}
	at, err := store.Nanos("RevokedAt", r.RevokedAt)
	if err != nil {
		return r, nil, s.errorf("revoke identity %q: %w", r.Name, err)
	}
	r.RevokedAt = store.FromNanos(at)
	if a, err = s.prepareAudit(a); err != nil {
		return r, nil, s.errorf("revoke identity %q: %w", r.Name, err)
	}
	// A node's agents are "<agent>@<node>", found by their agent_node.
	agents := ""
	if id, err := identity.Parse(r.Name); err == nil && id.Kind == identity.KindNode {
		agents = id.Node
	}
	var done []store.Revocation
	err = s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		err := tx.exec(ctx, tx.st().revokeIdentity, r.Name, r.Reason, at)
		if s.d.conflict(err) != noConflict {
			return fmt.Errorf("%w: identity %q is already revoked", store.ErrExists, r.Name)
		}
		if err != nil {
			return s.errorf("revoke identity %q: %w", r.Name, err)
		}
		rows, err := tx.StmtContext(ctx, tx.st().identityCerts).QueryContext(ctx, r.Name, agents, at, nameNode(r.Name))
		if err != nil {
			return s.errorf("revoke identity %q: %w", r.Name, err)
		}
		var serials []string
		if err := collect(rows, &serials, scanString); err != nil {
			return s.errorf("revoke identity %q: %w", r.Name, err)
		}
		if done, err = store.RevokeEach(serials, func(serial string) ([]store.Revocation, error) {
			rev, err := tx.revokeCert(ctx, store.Revocation{Serial: serial, Reason: r.Reason, RevokedAt: r.RevokedAt}, at)
			if err != nil {
				return nil, err
			}
			if err := tx.appendAudit(ctx, store.AuditEntry{Time: a.Time, Action: "cert.revoke", Identity: rev.CommonName,
				Outcome: store.OutcomeOK, Detail: fmt.Sprintf("serial %s with identity %s", rev.Serial, r.Name)}); err != nil {
				return nil, err
			}
			sameKey, err := tx.revokeSameKey(ctx, rev, at, a.Time)
			return append([]store.Revocation{rev}, sameKey...), err
		}); err != nil {
			return err
		}
		if _, err := tx.insertEvent(ctx, store.Event{Kind: store.EventIdentityRevoked, CommonName: r.Name, Reason: r.Reason}, at); err != nil {
			return s.errorf("revoke identity %q: %w", r.Name, err)
		}
		return tx.appendAudit(ctx, a)
	})
	if err != nil {
		return r, nil, err
	}
	return r, done, nil
}

// ReinstateIdentity lifts the revocation of the identity name and appends
// its event and a in the same transaction; the certificates revoked with
// it stay revoked. It returns an error wrapping store.ErrNotFound, and
// writes nothing, if name is not revoked.
func (s *Store) ReinstateIdentity(ctx context.Context, name string, t time.Time, a store.AuditEntry) error {
	if t.IsZero() {
		t = s.now()
	}
	at, err := store.Nanos("time", t)
	if err != nil {
		return s.errorf("reinstate identity %q: %w", name, err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return s.errorf("reinstate identity %q: %w", name, err)
	}
	return s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		n, err := tx.execRows(ctx, tx.st().reinstate, name)
		if err != nil {
			return s.errorf("reinstate identity %q: %w", name, err)
		}
		if n == 0 {
			return fmt.Errorf("%w: identity %q is not revoked", store.ErrNotFound, name)
		}
		if _, err := tx.insertEvent(ctx, store.Event{Kind: store.EventIdentityReinstated, CommonName: name}, at); err != nil {
			return s.errorf("reinstate identity %q: %w", name, err)
		}
		return tx.appendAudit(ctx, a)
	})
}

// RevokedIdentities returns every revoked identity, ordered by name.
func (s *Store) RevokedIdentities(ctx context.Context) ([]store.IdentityRevocation, error) {
	out, err := readRows(s, ctx, `SELECT name, reason, revoked_at FROM revoked_identities ORDER BY name`, nil,
		func(row *sql.Rows) (store.IdentityRevocation, error) {
			var (
				r  store.IdentityRevocation
				at int64
			)
			err := row.Scan(&r.Name, &r.Reason, &at)
			r.RevokedAt = store.FromNanos(at)
			return r, err
		})
	if err != nil {
		return nil, s.errorf("read revoked identities: %w", err)
	}
	return out, nil
}

// BlockedKeys returns the hashes of the keys keyCompromise revocations
// blocked, sorted.
func (s *Store) BlockedKeys(ctx context.Context) ([]string, error) {
	out, err := readRows(s, ctx, `SELECT key_hash FROM blocked_keys ORDER BY key_hash`, nil, scanString)
	if err != nil {
		return nil, s.errorf("read blocked keys: %w", err)
	}
	return out, nil
}

// identityCertsQuery selects, at ?3, the live certificates that revoking
// the identity ?1 revokes: its own (agent_node ?4, nameNode(?1)) and, when
// it is a node, those of the node's agents (agent_node ?2, ” for any
// other identity), both found by certs_names.
const identityCertsQuery = `SELECT serial FROM certs
	WHERE ((agent_node IN ('', ?4) AND common_name = ?1) OR (?2 <> '' AND agent_node = ?2))
	  AND kind <> 'intermediate' AND not_after > ?3
	  AND serial NOT IN (SELECT serial FROM revocations)
	ORDER BY issued_at, {{recorded}}`

// liveAgentsQuery is LiveAgents' query, of a node (?1) at a time (?2).
// It is a skip scan over certs_names: each step jumps to the node's next
// agent name; each name is then kept if any certificate of it is live,
// looked up by certs_names too (a row of that name holds agent_node ?1,
// or ” if it was recorded before 0006 under another kind; see nameNode).
const liveAgentsQuery = `WITH RECURSIVE names(cn) AS (
		SELECT (SELECT min(common_name) FROM certs WHERE agent_node = ?1 AND agent_node <> '')
		UNION ALL
		SELECT (SELECT min(common_name) FROM certs WHERE agent_node = ?1 AND agent_node <> '' AND common_name > names.cn)
			FROM names WHERE names.cn IS NOT NULL
	)
	SELECT cn FROM names WHERE cn IS NOT NULL AND EXISTS (
		SELECT 1 FROM certs c WHERE c.agent_node IN ('', ?1) AND c.common_name = names.cn AND c.not_after > ?2
			AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial))
	ORDER BY cn`

// issuanceBlockQuery is IssuanceBlock's query, of an identity (?1), its
// node's identity (?2, ” for none) and a key hash (?3).
const issuanceBlockQuery = `SELECT
	coalesce((SELECT name FROM revoked_identities WHERE name = ?1),
		(SELECT name FROM revoked_identities WHERE ?2 <> '' AND name = ?2), ''),
	EXISTS (SELECT 1 FROM blocked_keys WHERE key_hash = ?3)`

// IssuanceBlock reports what would refuse a certificate for commonName
// under the key whose hash is keyHash; see store.Store.
func (s *Store) IssuanceBlock(ctx context.Context, commonName, keyHash string) (string, bool, error) {
	node := store.BlockingNodeName(commonName)
	var (
		revoked string
		blocked bool
	)
	if err := s.read(func() error {
		return s.issuanceBlock.QueryRowContext(ctx, commonName, node, keyHash).Scan(&revoked, &blocked)
	}); err != nil {
		return "", false, s.errorf("what blocks issuance to %q: %w", commonName, err)
	}
	return revoked, blocked, nil
}

// hasLiveCertQuery is HasLiveCert's query, of a common name (?1) at a
// time (?2), by certs_names (?3 is nameNode(?1)).
const hasLiveCertQuery = `SELECT EXISTS (SELECT 1 FROM certs c WHERE c.agent_node IN ('', ?3) AND c.common_name = ?1 AND c.not_after > ?2
	AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial))`

// HasLiveCert reports whether commonName holds an unexpired, unrevoked
// certificate at now.
func (s *Store) HasLiveCert(ctx context.Context, commonName string, now time.Time) (bool, error) {
	at, err := store.Nanos("now", now)
	if err != nil {
		return false, s.errorf("live certificate of %q: %w", commonName, err)
	}
	var live bool
	if err := s.read(func() error {
		return s.hasLiveCert.QueryRowContext(ctx, commonName, at, nameNode(commonName)).Scan(&live)
	}); err != nil {
		return false, s.errorf("live certificate of %q: %w", commonName, err)
	}
	return live, nil
}

// LiveAgents returns the agent identities of node ("opus@ct200") that hold
// an unexpired, unrevoked certificate at now, sorted.
func (s *Store) LiveAgents(ctx context.Context, node string, now time.Time) ([]string, error) {
	at, err := store.Nanos("now", now)
	if err != nil {
		return nil, s.errorf("live agents of %q: %w", node, err)
	}
	var out []string
	if err := s.read(func() error {
		rows, err := s.liveAgents.QueryContext(ctx, node, at)
		if err != nil {
			return err
		}
		return collect(rows, &out, scanString)
	}); err != nil {
		return nil, s.errorf("live agents of %q: %w", node, err)
	}
	return out, nil
}

// nameNode is the agent_node, besides ”, that a certificate of the common
// name cn may have been recorded with: the text after cn's first '@'
// ("ct111" for "opus@ct111"), ” for a name without one. certArgs stores
// store.AgentNodeID(cn), which is that text for an agent's name (its
// identity.Parse node) and ” for any other, and SQLite's migration 0006
// stored that text for every agent row before; so every row of cn holds ”
// or nameNode(cn), and a lookup of cn's certificates asks for agent_node
// IN (”, nameNode(cn)) AND common_name = cn, the exact recorded name, to
// be answered from certs_names, whose first column is agent_node.
func nameNode(cn string) string {
	_, node, _ := strings.Cut(cn, "@")
	return node
}
