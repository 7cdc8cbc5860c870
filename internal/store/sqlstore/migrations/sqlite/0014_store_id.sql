-- The store's identity: a random id made once, with the schema, and never
-- changed. A CA directory records it (store.json) so that a command which
-- opens a store for that directory can tell the store the directory
-- belongs to from any other, whatever path or URL names it. It is not a
-- secret: it grants nothing, it only tells stores apart.
CREATE TABLE store_identity (
	one INTEGER NOT NULL PRIMARY KEY CHECK (one = 1),
	id  TEXT    NOT NULL CHECK (length(id) = 32)
) STRICT;
INSERT INTO store_identity (one, id) VALUES (1, lower(hex(randomblob(16))));
CREATE TRIGGER store_identity_fixed BEFORE UPDATE ON store_identity
BEGIN
	SELECT RAISE(ABORT, 'the store id never changes');
END;
CREATE TRIGGER store_identity_kept BEFORE DELETE ON store_identity
BEGIN
	SELECT RAISE(ABORT, 'the store id never changes');
END;
