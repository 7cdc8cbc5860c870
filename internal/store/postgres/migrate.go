package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrSchemaTooNew reports a database whose schema was written by a newer
// version of meshtrust than the running one; using it could corrupt it.
var ErrSchemaTooNew = errors.New("postgres: database schema is newer than this program")

// migrationFiles holds the schema migrations, named NNNN_what.sql, from
// version 1 without gaps. A released migration is never edited: a change
// to the schema is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations returns the embedded migrations in version order.
func migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrationFiles, "migrations")
}

// migrate brings the schema up to the newest migration. Pending migrations
// and their records commit in one transaction, under an advisory lock
// (keyed by the schema), so replicas starting together migrate once.
func migrate(ctx context.Context, pool *pgxpool.Pool, where string, now func() time.Time) error {
	ms, err := migrations()
	if err != nil {
		return fmt.Errorf("postgres: load migrations: %w", err)
	}
	latest := ms[len(ms)-1].Version
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", where, classify(err))
	}
	defer tx.Rollback(ctx) // no-op after Commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('meshtrust migrate ' || current_schema()))`); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", where, classify(err))
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at BIGINT  NOT NULL
	)`); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", where, classify(err))
	}
	var current int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return fmt.Errorf("postgres: migrate %s: read schema version: %w", where, classify(err))
	}
	if current > latest {
		return fmt.Errorf("%w: %s has schema version %d but this meshtrust knows versions up to %d; run a newer meshtrust", ErrSchemaTooNew, where, current, latest)
	}
	for _, m := range ms[current:] {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return fmt.Errorf("postgres: migrate %s to version %d (%s): %w", where, m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)`,
			m.Version, m.Name, now().UnixNano()); err != nil {
			return fmt.Errorf("postgres: migrate %s to version %d (%s): %w", where, m.Version, m.Name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", where, classify(err))
	}
	return nil
}
