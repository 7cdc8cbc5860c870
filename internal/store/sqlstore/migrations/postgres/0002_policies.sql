-- A node's agent identities by an index (as SQLite's 0008), and the
-- allow-list policies (meshauth's YAML documents) by name (as SQLite's
-- 0009). Every set appends a policy.set event, so every replica
-- recompiles it.
CREATE INDEX certs_agent_names ON certs (agent_node, common_name);

CREATE TABLE policies (
	name       TEXT   NOT NULL PRIMARY KEY,
	document   TEXT   NOT NULL,
	updated_at BIGINT NOT NULL -- Unix nanoseconds, UTC
);
