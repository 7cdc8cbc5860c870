-- Revocation that sticks, and one change feed. Times are INTEGER Unix
-- nanoseconds (UTC) as in 0001.

-- A revoked identity: every certificate of it was revoked with it, and no
-- certificate is issued to it again until an operator reinstates it. A
-- revoked node ("ct200.mesh") also blocks its agents ("x@ct200").
CREATE TABLE revoked_identities (
	name       TEXT    NOT NULL PRIMARY KEY, -- the identity's common name
	reason     INTEGER NOT NULL,
	revoked_at INTEGER NOT NULL
) STRICT;

-- Public keys revoked for keyCompromise: never certified again.
CREATE TABLE blocked_keys (
	key_hash   TEXT    NOT NULL PRIMARY KEY, -- lowercase hex SHA-256 of the SubjectPublicKeyInfo
	serial     TEXT    NOT NULL,             -- the certificate whose revocation blocked it
	blocked_at INTEGER NOT NULL
) STRICT;

-- The key of every certificate, so a keyCompromise revocation blocks it,
-- and the serial of the certificate whose holder asked for it ('' when an
-- operator issued it), so a renewal racing the revocation of the
-- certificate it renews is refused in the transaction that would record it.
ALTER TABLE certs ADD COLUMN key_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE certs ADD COLUMN authorized_by TEXT NOT NULL DEFAULT '';

-- The change feed replaces the revocation feed: every change a replica (or
-- a meshd beside an offline meshctl) must converge on, in one order.
-- kind is one of store's Event kinds; the other columns are '' or 0 where
-- the kind has no use for them. The seqs of the old feed are kept, so a
-- subscriber's resume point stays valid across the upgrade.
CREATE TABLE events (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	kind          TEXT    NOT NULL,
	serial        TEXT    NOT NULL,
	issuer_key_id TEXT    NOT NULL,
	common_name   TEXT    NOT NULL,
	entity        TEXT    NOT NULL,
	key_hash      TEXT    NOT NULL,
	reason        INTEGER NOT NULL,
	time          INTEGER NOT NULL
) STRICT;

INSERT INTO events (seq, kind, serial, issuer_key_id, common_name, entity, key_hash, reason, time)
	SELECT seq, CASE WHEN serial <> '' THEN 'cert.revoked' ELSE 'entity.revoked' END,
		serial, issuer_key_id, common_name, entity, '', reason, time
	FROM revocation_events ORDER BY seq;

DROP TABLE revocation_events;
