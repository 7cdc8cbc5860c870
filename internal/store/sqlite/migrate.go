package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"
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

// A migration is one step of the schema.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order.
func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names { // fs.Glob returns names sorted
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with its version number and '_'", base)
		}
		if v != len(ms)+1 {
			return nil, fmt.Errorf("migration %s: version %d follows version %d", base, v, len(ms))
		}
		text, err := migrationFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(text)})
	}
	return ms, nil
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
func applyMigrations(ctx context.Context, db *sql.DB, path string, now func() time.Time, ms []migration) error {
	latest := ms[len(ms)-1].version

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
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("sqlite: migrate %s to version %d (%s): %w", path, m.version, m.name, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)`,
			m.version, m.name, now().UnixNano()); err != nil {
			return fmt.Errorf("sqlite: migrate %s to version %d (%s): %w", path, m.version, m.name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", path, err)
	}
	return nil
}
