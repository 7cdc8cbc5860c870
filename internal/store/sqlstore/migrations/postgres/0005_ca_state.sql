-- The CA's intermediates and their slots (store.CAState), as SQLite's
-- 0013: one row, compared and incremented on every write.
CREATE TABLE ca_state (
	id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	version    BIGINT  NOT NULL,
	document   TEXT    NOT NULL,
	updated_at BIGINT  NOT NULL -- Unix nanoseconds, UTC
);
