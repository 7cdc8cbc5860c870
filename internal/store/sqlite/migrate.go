package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// ErrSchemaTooNew reports a database whose schema was written by a newer
// version of meshtrust than the running one; opening it could corrupt it.
var ErrSchemaTooNew = errors.New("sqlite: database schema is newer than this program")

// migrationFiles holds the schema migrations, named NNNN_what.sql. Version
// N is the file numbered N; versions start at 1 and have no gaps. A released
// migration is never edited: a change to the schema is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations returns the embedded migrations in version order.
func migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrationFiles, "migrations")
}

// migrate brings the schema of the database in db, the file at path, up to
// the newest embedded migration. Every pending migration and its record in
// schema_version commit in one transaction, so a failure leaves the schema
// as it was. The transaction begins IMMEDIATE, so two processes opening the
// same new file migrate it once.
func migrate(ctx context.Context, db *sql.DB, path string, now func() time.Time) error {
	ms, err := migrations()
	if err != nil {
		return fmt.Errorf("sqlite: load migrations: %w", err)
	}
	return applyMigrations(ctx, db, path, now, ms)
}

// applyMigrations is migrate with the migrations ms, which run from
// version 1 without gaps. Tests give it the first few to make a file as an
// older meshtrust left it.
func applyMigrations(ctx context.Context, db *sql.DB, path string, now func() time.Time, ms []store.Migration) error {
	latest := ms[len(ms)-1].Version

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", path, err)
	}
	defer tx.Rollback() // no-op after Commit

	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	) STRICT`); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", path, err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return fmt.Errorf("sqlite: migrate %s: read schema version: %w", path, err)
	}
	if current > latest {
		return fmt.Errorf("%w: %s has schema version %d but this meshtrust knows versions up to %d; run a newer meshtrust, or restore a backup made by this one", ErrSchemaTooNew, path, current, latest)
	}
	for _, m := range ms[current:] {
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("sqlite: migrate %s to version %d (%s): %w", path, m.Version, m.Name, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)`,
			m.Version, m.Name, now().UnixNano()); err != nil {
			return fmt.Errorf("sqlite: migrate %s to version %d (%s): %w", path, m.Version, m.Name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", path, err)
	}
	return nil
}
