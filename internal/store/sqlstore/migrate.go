package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"
)

// migrationFiles holds each dialect's schema migrations, in
// migrations/<dialect>/ and named NNNN_what.sql, from version 1 without
// gaps. The DDL differs (types, STRICT tables, triggers), so each dialect
// has its own. A released migration is never edited: a change to a schema
// is a new file.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// migration is one step of a schema.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the migrations in dir of migrationFiles, in
// version order.
func loadMigrations(dir string) ([]migration, error) {
	names, err := fs.Glob(migrationFiles, path.Join(dir, "*.sql"))
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
		text, err := fs.ReadFile(migrationFiles, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(text)})
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("no migrations in %s", dir)
	}
	return ms, nil
}

// migrate brings the schema of db, the database where names, up to d's
// newest migration.
func migrate(ctx context.Context, d dialect, db *sql.DB, where string, now func() time.Time) error {
	ms, err := d.migrations()
	if err != nil {
		return fmt.Errorf("%s: load migrations: %w", d.name(), err)
	}
	return applyMigrations(ctx, d, db, where, now, ms)
}

// applyMigrations is migrate with the migrations ms, which run from
// version 1 without gaps. Tests give it the first few to make a database
// as an older meshtrust left it. Every pending migration and its record in
// schema_version commit in one transaction, so a failure leaves the schema
// as it was, and processes opening one new database together migrate it
// once (d.beginMigration).
func applyMigrations(ctx context.Context, d dialect, db *sql.DB, where string, now func() time.Time, ms []migration) error {
	fail := func(format string, args ...any) error {
		for i, a := range args {
			if err, ok := a.(error); ok {
				args[i] = d.classify(err)
			}
		}
		return fmt.Errorf("%s: migrate %s"+format, append([]any{d.name(), where}, args...)...)
	}
	// One connection for the whole migration: what d.prepareMigration
	// sets on it (SQLite's foreign_keys) must hold for the transaction.
	conn, err := db.Conn(ctx)
	if err != nil {
		return fail(": %w", err)
	}
	defer conn.Close()
	restore, err := d.prepareMigration(ctx, conn)
	if err != nil {
		return fail(": %w", err)
	}
	if err := applyMigrationsTx(ctx, d, conn, where, now, ms, fail); err != nil {
		restore(ctx) // the error of the migration is the one to report
		return err
	}
	if err := restore(ctx); err != nil {
		return fail(": %w", err)
	}
	return nil
}

// applyMigrationsTx applies the pending migrations of ms in one
// transaction on conn.
func applyMigrationsTx(ctx context.Context, d dialect, conn *sql.Conn, where string, now func() time.Time, ms []migration, fail func(string, ...any) error) error {
	latest := ms[len(ms)-1].version
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fail(": %w", err)
	}
	defer tx.Rollback() // no-op after Commit
	if err := d.beginMigration(ctx, tx); err != nil {
		return fail(": %w", err)
	}
	if _, err := tx.ExecContext(ctx, d.schemaVersionDDL()); err != nil {
		return fail(": %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return fail(": read schema version: %w", err)
	}
	if current > latest {
		return fmt.Errorf("%w: %s has schema version %d but this meshtrust knows versions up to %d; run a newer meshtrust, or restore a backup made by this one", ErrSchemaTooNew, where, current, latest)
	}
	for _, m := range ms[current:] {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fail(" to version %d (%s): %w", m.version, m.name, err)
		}
		if _, err := tx.ExecContext(ctx, d.query(`INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)`),
			m.version, m.name, now().UnixNano()); err != nil {
			return fail(" to version %d (%s): %w", m.version, m.name, err)
		}
	}
	if err := d.checkMigration(ctx, tx); err != nil {
		return fail(": %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fail(": %w", err)
	}
	return nil
}
