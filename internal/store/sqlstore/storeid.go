package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ErrOtherStore reports a database that is not the store an open
// expected (ExpectID): another store, or a database that holds none yet.
// Nothing was written to it.
var ErrOtherStore = errors.New("store: the database is not the store expected")

// ExpectID opens the store only if its id (store.Store's ID) is id, and
// fails with an error wrapping ErrOtherStore otherwise. The id is read
// before the schema is migrated and, for SQLite, without creating the
// file, so an open refused for the wrong database writes nothing to it.
func ExpectID(id string) Option {
	return func(o *options) { o.expectID = id }
}

// idQuery reads the store's id, made by the store_id migration.
const idQuery = `SELECT id FROM store_identity WHERE one = 1`

// checkID fails, before any migration, when want is set and the database
// on db (named where) holds another store id than want, or none.
func checkID(ctx context.Context, d dialect, db *sql.DB, where, want string) error {
	if want == "" {
		return nil
	}
	var has bool
	if err := db.QueryRowContext(ctx, d.query(d.hasTable()), "store_identity").Scan(&has); err != nil {
		return fmt.Errorf("%s: read the store id of %s: %w", d.name(), where, d.classify(err))
	}
	if !has {
		return fmt.Errorf("%w: %s holds no meshtrust store (or one older than store ids), not store %s", ErrOtherStore, where, want)
	}
	got, err := readID(ctx, d, db, where)
	if err != nil {
		return err
	}
	// Compared: the random ids, byte for byte (both lowercase hex as the
	// migration writes them), never the path or URL that reached them.
	if got != want {
		return fmt.Errorf("%w: %s is store %s, not store %s", ErrOtherStore, where, got, want)
	}
	return nil
}

// readID reads the store's id from db.
func readID(ctx context.Context, d dialect, db *sql.DB, where string) (string, error) {
	var id string
	if err := db.QueryRowContext(ctx, idQuery).Scan(&id); err != nil {
		return "", fmt.Errorf("%s: read the store id of %s: %w", d.name(), where, d.classify(err))
	}
	return id, nil
}

// ID returns the store's id, read when it opened; see store.Store.
func (s *Store) ID() string { return s.id }
