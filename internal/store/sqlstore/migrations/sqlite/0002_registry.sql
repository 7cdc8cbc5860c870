-- The registry: partner entities and registered agents. Times are INTEGER
-- Unix nanoseconds (UTC) as in 0001; NULL stands for the zero time.Time, so
-- "never" stays distinct from 1970-01-01T00:00:00Z.

-- An entity row is replaced, not versioned, when its CA is replaced; the
-- audit log keeps the history.
CREATE TABLE entities (
	name        TEXT    NOT NULL PRIMARY KEY,
	ca_pem      BLOB    NOT NULL,
	fingerprint TEXT    NOT NULL, -- not UNIQUE: a revoked entity keeps its
	                                -- CA's, which may come back under a new name
	subject     TEXT    NOT NULL,
	not_before  INTEGER,
	not_after   INTEGER,
	created_at  INTEGER,
	revoked_at  INTEGER, -- NULL while the entity is trusted
	rotated_at  INTEGER
) STRICT;

-- No foreign key to entities: an agent of the mesh's own CAs has entity
-- '', and one of a trust-dir entity has a name the table may not hold.
CREATE TABLE agents (
	id               TEXT    NOT NULL PRIMARY KEY,
	owner            TEXT    NOT NULL,
	entity           TEXT    NOT NULL,
	payload          BLOB    NOT NULL, -- the registration as the agent sent it (JSON)
	cert_serial      TEXT    NOT NULL,
	cert_fingerprint TEXT    NOT NULL,
	status           TEXT    NOT NULL,
	reason           TEXT    NOT NULL,
	registered_at    INTEGER,
	last_seen        INTEGER,
	rotate_from      INTEGER
) STRICT;
