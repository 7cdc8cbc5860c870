-- The CA's intermediates and their slots (store.CAState), one row shared
-- by every process that opens the CA, so that a rotation prepared on one
-- replica is active on all. document is the state as JSON; version is
-- compared and incremented by every write (a compare-and-set).
CREATE TABLE ca_state (
	id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	version    INTEGER NOT NULL,
	document   TEXT    NOT NULL,
	updated_at INTEGER NOT NULL -- Unix nanoseconds, UTC
) STRICT;
