-- The certs table without the UNIQUE index on fingerprint. A fingerprint
-- is the SHA-256 of the certificate's DER, and the DER holds the serial,
-- so the serial's primary key already refuses a certificate recorded
-- twice; no query looks a certificate up by fingerprint. That index put
-- each certificate at a random place of its own b-tree, one more page
-- every commit wrote to the WAL. SQLite drops a column constraint only by
-- rebuilding the table (its 12-step ALTER procedure); migrations run with
-- foreign_keys off and a foreign_key_check before they commit (see
-- sqliteDialect.beginMigration), and the rowids are kept, since they
-- order certificates recorded in the same nanosecond.
CREATE TABLE certs_new (
	serial        TEXT    NOT NULL PRIMARY KEY,
	common_name   TEXT    NOT NULL,
	kind          TEXT    NOT NULL,
	sans          TEXT    NOT NULL, -- JSON array of "DNS:x", "IP:x", "URI:x"
	not_before    INTEGER NOT NULL,
	not_after     INTEGER NOT NULL,
	fingerprint   TEXT    NOT NULL, -- lowercase hex SHA-256 of the DER
	issuer_key_id TEXT    NOT NULL,
	pem           BLOB    NOT NULL,
	issued_at     INTEGER NOT NULL,
	key_hash      TEXT    NOT NULL DEFAULT '',
	authorized_by TEXT    NOT NULL DEFAULT '',
	agent_node    TEXT    NOT NULL DEFAULT ''
) STRICT;

INSERT INTO certs_new (rowid, serial, common_name, kind, sans, not_before, not_after,
	fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by, agent_node)
SELECT rowid, serial, common_name, kind, sans, not_before, not_after,
	fingerprint, issuer_key_id, pem, issued_at, key_hash, authorized_by, agent_node
FROM certs;

DROP TABLE certs;
ALTER TABLE certs_new RENAME TO certs;

CREATE INDEX certs_common_name ON certs (common_name, issued_at);
CREATE INDEX certs_agent_names ON certs (agent_node, common_name, not_after) WHERE agent_node <> '';
CREATE INDEX certs_key_hash ON certs (key_hash, not_after);
