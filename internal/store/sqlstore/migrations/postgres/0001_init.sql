-- The schema of the SQLite store as its migrations leave it, in one step.
-- Times are BIGINT Unix nanoseconds (UTC), as in SQLite, so that they
-- round-trip exactly (the audit chain hashes them) and compare as numbers;
-- NULL stands for the zero time.Time where a time may be unset.

CREATE TABLE certs (
	serial        TEXT   NOT NULL PRIMARY KEY,
	common_name   TEXT   NOT NULL,
	kind          TEXT   NOT NULL,
	sans          TEXT   NOT NULL, -- JSON array of "DNS:x", "IP:x", "URI:x"
	not_before    BIGINT NOT NULL,
	not_after     BIGINT NOT NULL,
	fingerprint   TEXT   NOT NULL UNIQUE,
	issuer_key_id TEXT   NOT NULL,
	pem           BYTEA  NOT NULL,
	issued_at     BIGINT NOT NULL,
	key_hash      TEXT   NOT NULL DEFAULT '',
	authorized_by TEXT   NOT NULL DEFAULT '',
	agent_node    TEXT   NOT NULL DEFAULT '',
	-- The order certificates were recorded in, for "oldest first" among
	-- certificates issued at the same nanosecond.
	recorded      BIGSERIAL NOT NULL
);

CREATE INDEX certs_common_name ON certs (common_name, issued_at);
CREATE INDEX certs_agent_node ON certs (agent_node, not_after) WHERE agent_node <> '';

-- A sequence draws seqs before commit; the writers serialise on the audit
-- head (below), so seqs follow commit order but for a rolled-back batch's
-- gap, which the change feed's reader waits out.
CREATE TABLE revocations (
	seq           BIGSERIAL PRIMARY KEY,
	serial        TEXT    NOT NULL UNIQUE REFERENCES certs (serial),
	common_name   TEXT    NOT NULL,
	issuer_key_id TEXT    NOT NULL,
	reason        INTEGER NOT NULL,
	revoked_at    BIGINT  NOT NULL
);

CREATE TABLE crl_numbers (
	issuer_key_id TEXT   NOT NULL PRIMARY KEY,
	number        BIGINT NOT NULL
);

-- The audit log is append-only and hash-chained (see store.HashEntry).
-- Its free text is BYTEA: a detail quoting outside input may hold a NUL,
-- which TEXT refuses, and the entry must round-trip byte for byte.
CREATE TABLE audit (
	seq       BIGINT PRIMARY KEY,
	time      BIGINT NOT NULL,
	action    BYTEA  NOT NULL,
	identity  BYTEA  NOT NULL,
	outcome   BYTEA  NOT NULL,
	detail    BYTEA  NOT NULL,
	prev_hash TEXT   NOT NULL,
	hash      TEXT   NOT NULL
);

-- The head of the chain, one row. Every write transaction locks it first
-- (SELECT ... FOR UPDATE): that serialises the writers of every replica,
-- so each links its entries to the last committed one and sees every
-- write committed before it, as SQLite's one writer does.
CREATE TABLE audit_head (
	id   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
	seq  BIGINT  NOT NULL,
	hash TEXT    NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, '');

-- The triggers stop accidental or casual edits through SQL. They are no
-- defence against someone who owns the database (they can drop them);
-- store.VerifyAuditChain is what detects that.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'audit log is append-only: rows cannot be %', lower(TG_OP) || 'd';
END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
	FOR EACH ROW EXECUTE FUNCTION audit_append_only();

CREATE FUNCTION audit_extends_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	h audit_head;
BEGIN
	SELECT * INTO h FROM audit_head;
	IF NEW.seq <> h.seq + 1 OR NEW.prev_hash <> h.hash THEN
		RAISE EXCEPTION 'audit log is append-only: a new entry must follow the last one';
	END IF;
	UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash;
	RETURN NEW;
END $$;
CREATE TRIGGER audit_extends_chain BEFORE INSERT ON audit
	FOR EACH ROW EXECUTE FUNCTION audit_extends_chain();

CREATE TABLE entities (
	name        TEXT   NOT NULL PRIMARY KEY,
	ca_pem      BYTEA  NOT NULL,
	fingerprint TEXT   NOT NULL,
	subject     TEXT   NOT NULL,
	not_before  BIGINT,
	not_after   BIGINT,
	created_at  BIGINT,
	revoked_at  BIGINT, -- NULL while the entity is trusted
	rotated_at  BIGINT
);

CREATE TABLE agents (
	id               TEXT   NOT NULL PRIMARY KEY,
	owner            TEXT   NOT NULL,
	entity           TEXT   NOT NULL,
	source           TEXT   NOT NULL DEFAULT '',
	payload          BYTEA  NOT NULL, -- the registration as the agent sent it (JSON)
	cert_serial      TEXT   NOT NULL,
	cert_fingerprint TEXT   NOT NULL,
	status           TEXT   NOT NULL,
	reason           TEXT   NOT NULL,
	registered_at    BIGINT,
	last_seen        BIGINT,
	rotate_from      BIGINT,
	version          BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE join_tokens (
	hash       TEXT   NOT NULL PRIMARY KEY, -- lowercase hex SHA-256
	node_id    TEXT   NOT NULL,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	used_at    BIGINT -- NULL until the token enrolls its node
);

CREATE TABLE revoked_identities (
	name       TEXT    NOT NULL PRIMARY KEY,
	reason     INTEGER NOT NULL,
	revoked_at BIGINT  NOT NULL
);

CREATE TABLE blocked_keys (
	key_hash   TEXT   NOT NULL PRIMARY KEY,
	serial     TEXT   NOT NULL,
	blocked_at BIGINT NOT NULL
);

CREATE TABLE events (
	seq           BIGSERIAL PRIMARY KEY,
	kind          TEXT    NOT NULL,
	serial        TEXT    NOT NULL,
	issuer_key_id TEXT    NOT NULL,
	common_name   TEXT    NOT NULL,
	entity        TEXT    NOT NULL,
	key_hash      TEXT    NOT NULL,
	reason        INTEGER NOT NULL,
	time          BIGINT  NOT NULL
);
