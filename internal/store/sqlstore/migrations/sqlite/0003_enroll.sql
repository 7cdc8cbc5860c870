-- Enrollment: one-time join tokens and the revocation feed. Times are
-- INTEGER Unix nanoseconds (UTC) as in 0001; NULL stands for the zero
-- time.Time.

-- Only the token's SHA-256 is kept, never the token. A used token stays,
-- so that presenting it again is told apart from presenting an unknown one.
CREATE TABLE join_tokens (
	hash       TEXT    NOT NULL PRIMARY KEY, -- lowercase hex SHA-256
	node_id    TEXT    NOT NULL,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER -- NULL until the token enrolls its node
) STRICT;

-- The revocation feed: certificate and entity revocations in one order,
-- so a subscriber resumes from one seq. AUTOINCREMENT so a seq is never
-- reused. An event is a certificate's (serial set) or an entity's (entity
-- set), never both; the other columns are '' or 0.
CREATE TABLE revocation_events (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	serial        TEXT    NOT NULL,
	issuer_key_id TEXT    NOT NULL,
	common_name   TEXT    NOT NULL,
	entity        TEXT    NOT NULL,
	reason        INTEGER NOT NULL, -- RFC 5280 CRLReason of a certificate's
	time          INTEGER NOT NULL,
	CHECK ((serial = '') <> (entity = ''))
) STRICT;

-- An upgraded database's feed starts complete: every certificate revoked
-- so far, in the order of revocation, then every entity revoked so far, by
-- the time of its revocation.
-- SQLite assigns the rowids of INSERT ... SELECT in the SELECT's order.
INSERT INTO revocation_events (serial, issuer_key_id, common_name, entity, reason, time)
	SELECT serial, issuer_key_id, common_name, '', reason, revoked_at
	FROM revocations ORDER BY seq;

INSERT INTO revocation_events (serial, issuer_key_id, common_name, entity, reason, time)
	SELECT '', '', '', name, 0, revoked_at
	FROM entities WHERE revoked_at IS NOT NULL ORDER BY revoked_at, name;
