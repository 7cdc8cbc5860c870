-- Allow-list policies (package meshauth's YAML documents) by name: meshd's
-- own ("meshd-admin" guards the admin API over mTLS), and others kept for
-- `meshctl policy get|set|check`. Every set appends a policy.set event, so
-- every replica recompiles it.
CREATE TABLE policies (
	name       TEXT    NOT NULL PRIMARY KEY,
	document   TEXT    NOT NULL,
	updated_at INTEGER NOT NULL -- Unix nanoseconds, UTC
) STRICT;
