-- Initial schema. Times are INTEGER Unix nanoseconds (UTC), so they
-- round-trip exactly and compare as numbers.

CREATE TABLE certs (
	serial        TEXT    NOT NULL PRIMARY KEY,
	common_name   TEXT    NOT NULL,
	kind          TEXT    NOT NULL,
	sans          TEXT    NOT NULL, -- JSON array of "DNS:x", "IP:x", "URI:x"
	not_before    INTEGER NOT NULL,
	not_after     INTEGER NOT NULL,
	fingerprint   TEXT    NOT NULL UNIQUE,
	issuer_key_id TEXT    NOT NULL,
	pem           BLOB    NOT NULL,
	issued_at     INTEGER NOT NULL
) STRICT;

-- Serves CertsByName, which lists a name's certificates oldest first.
CREATE INDEX certs_common_name ON certs (common_name, issued_at);

-- AUTOINCREMENT so a seq is never reused: subscribers resume from the last
-- seq they saw. The foreign key makes revoking an unrecorded serial
-- impossible even for a writer that skips the store's own check.
CREATE TABLE revocations (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	serial        TEXT    NOT NULL UNIQUE REFERENCES certs (serial),
	common_name   TEXT    NOT NULL,
	issuer_key_id TEXT    NOT NULL,
	reason        INTEGER NOT NULL,
	revoked_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE crl_numbers (
	issuer_key_id TEXT    NOT NULL PRIMARY KEY,
	number        INTEGER NOT NULL
) STRICT;

-- The audit log is append-only and hash-chained (see store.HashEntry).
CREATE TABLE audit (
	seq       INTEGER PRIMARY KEY,
	time      INTEGER NOT NULL,
	action    TEXT    NOT NULL,
	identity  TEXT    NOT NULL,
	outcome   TEXT    NOT NULL,
	detail    TEXT    NOT NULL,
	prev_hash TEXT    NOT NULL,
	hash      TEXT    NOT NULL
) STRICT;

-- The triggers stop accidental or casual edits through SQL. They are no
-- defence against someone who can write the file (they can drop them);
-- store.VerifyAuditChain is what detects that.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
	SELECT RAISE(ABORT, 'audit log is append-only: rows cannot be updated');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
	SELECT RAISE(ABORT, 'audit log is append-only: rows cannot be deleted');
END;

-- A new row must extend the chain: the next seq, pointing at the last hash.
CREATE TRIGGER audit_extends_chain BEFORE INSERT ON audit
WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM audit)
  OR NEW.prev_hash IS NOT coalesce((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), '')
BEGIN
	SELECT RAISE(ABORT, 'audit log is append-only: a new entry must follow the last one');
END;
