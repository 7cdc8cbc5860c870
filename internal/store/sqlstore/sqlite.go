package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	msqlite "modernc.org/sqlite" // also the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/meshtrust/meshtrust/pemfile"
)

// busyTimeout is how long an SQLite connection waits for a lock held by
// another connection (another process, or a checkpoint) before failing.
const busyTimeout = 10 * time.Second

// sqliteDialect is the embedded SQLite file: one process writes it at a
// time (the file's write lock), and the change feed is polled.
type sqliteDialect struct{}

func (sqliteDialect) name() string { return "sqlite" }

func (sqliteDialect) query(q string) string {
	return replaceRecorded(q, "rowid")
}

// lockHead reads the last audit entry: the write transaction holds the
// file's write lock from its start (_txlock=immediate), which already
// makes writers run one at a time.
func (sqliteDialect) lockHead() string {
	return `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`
}

func (sqliteDialect) conflict(err error) conflict {
	var e *msqlite.Error
	if !errors.As(err, &e) {
		return noConflict
	}
	switch e.Code() {
	case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return primaryKey
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return unique
	}
	return noConflict
}

// classify leaves err as it is: the file is always there to be reached.
func (sqliteDialect) classify(err error) error { return err }

func (sqliteDialect) auditText(s string) any { return s }

// notify does nothing: the feed's followers poll an SQLite store.
func (sqliteDialect) notify(context.Context, *sql.Tx) error { return nil }

func (sqliteDialect) migrations() ([]migration, error) { return loadMigrations("migrations/sqlite") }

// prepareMigration turns foreign keys off on conn, as SQLite's procedure
// for changing a table's schema asks (a table rebuild drops and recreates
// a table others refer to, and the pragma is a no-op inside a
// transaction); checkMigration then checks every foreign key before the
// migration commits, and restore turns them back on.
func (sqliteDialect) prepareMigration(ctx context.Context, conn *sql.Conn) (func(context.Context) error, error) {
	if _, err := conn.ExecContext(ctx, `PRAGMA foreign_keys = OFF`); err != nil {
		return nil, fmt.Errorf("foreign keys off: %w", err)
	}
	return func(ctx context.Context) error {
		// context.WithoutCancel: a connection left with foreign keys off
		// would go back to the pool.
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), `PRAGMA foreign_keys = ON`); err != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn }) // never reused
			return fmt.Errorf("foreign keys on: %w", err)
		}
		return nil
	}, nil
}

// checkMigration fails if any row breaks a foreign key (PRAGMA
// foreign_key_check returns one row per broken reference).
func (sqliteDialect) checkMigration(ctx context.Context, tx *sql.Tx) error {
	var table, parent string
	var rowid sql.NullInt64
	var fkid int
	err := tx.QueryRowContext(ctx, `PRAGMA foreign_key_check`).Scan(&table, &rowid, &parent, &fkid)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("foreign key check: %w", err)
	}
	return fmt.Errorf("foreign key check: row %d of %s refers to a missing row of %s", rowid.Int64, table, parent)
}

// beginMigration does nothing: the transaction begins IMMEDIATE, so two
// processes opening the same new file migrate it once.
func (sqliteDialect) beginMigration(context.Context, *sql.Tx) error { return nil }

func (sqliteDialect) schemaVersionDDL() string {
	return `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	) STRICT`
}

func (sqliteDialect) hasTable() string {
	return `SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?`
}

// OpenSQLite opens the store in the SQLite file at path, creating the file
// with mode 0600 if it does not exist and bringing its schema up to date.
// The directory that holds path must exist. It fails with an error
// wrapping ErrSchemaTooNew if the file was written by a newer meshtrust.
//
// The file is in WAL mode with synchronous=FULL, so a write that has
// returned survives a crash of the process or of the machine as far as
// SQLite and the file system guarantee it.
func OpenSQLite(ctx context.Context, path string, opts ...Option) (*Store, error) {
	o := newOptions(opts)
	d := sqliteDialect{}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if o.expectID != "" {
		// The store expected is there or nowhere: a new file would be
		// another store.
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("sqlite: open %s, expected to hold store %s: %w", abs, o.expectID, err)
		}
	} else if err := createFile(abs); err != nil {
		return nil, err
	}

	wdb, err := sql.Open("sqlite", sqliteDSN(abs,
		"busy_timeout("+fmt.Sprint(busyTimeout.Milliseconds())+")",
		"foreign_keys(1)",
		"journal_mode(WAL)",
		"synchronous(FULL)",
		// Every certificate dirties a page of each index it is in, at a
		// place its serial, fingerprint or name decides: a write cache
		// (here up to 32 MiB) that holds those pages saves reading them
		// back, and checkpointing every 8,000 pages rather than SQLite's
		// 1,000 copies each hot page into the database once for many
		// group commits rather than once for a few. The WAL then grows to
		// about 32 MiB before it is reused.
		"cache_size(-32768)",
		"wal_autocheckpoint(8000)",
		// Every request of a batch runs in a savepoint, and a page a
		// request changes is first copied to the sub-journal that rolls
		// it back alone. That journal exists only for the transaction's
		// own rollbacks (a crash is recovered from the WAL), so it lives
		// in memory rather than spilling, past 64 KiB, to a temporary
		// file with a system call per page.
		"temp_store(MEMORY)",
	))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	if err := checkWriteConn(ctx, wdb); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	if err := checkID(ctx, d, wdb, abs, o.expectID); err != nil {
		wdb.Close()
		return nil, err
	}
	if err := migrate(ctx, d, wdb, abs, o.now); err != nil {
		wdb.Close()
		return nil, err
	}

	rdb, err := sql.Open("sqlite", sqliteDSN(abs,
		"busy_timeout("+fmt.Sprint(busyTimeout.Milliseconds())+")",
		"query_only(1)",
	))
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	rdb.SetMaxOpenConns(n)
	rdb.SetMaxIdleConns(n)
	if err := rdb.PingContext(ctx); err != nil {
		rdb.Close()
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	return start(ctx, d, abs, wdb, rdb, o)
}

// createFile creates the database file with mode 0600 unless it exists, so
// SQLite never creates it with the process umask's wider default. SQLite
// gives the -wal and -shm files the mode of the database file.
func createFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, os.ErrExist):
		return nil
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("sqlite: open %s: directory %s does not exist; create it first: %w", path, filepath.Dir(path), err)
	case err != nil:
		return fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// Make the new directory entry durable too, or a power loss could take
	// the whole file with it.
	if err := pemfile.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("sqlite: sync directory %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// sqliteDSN returns the modernc.org/sqlite data source name for the file at
// the absolute path abs, running pragmas on every new connection. Writes
// begin IMMEDIATE so that a transaction takes the write lock up front,
// where busy_timeout applies, rather than failing when it upgrades later.
func sqliteDSN(abs string, pragmas ...string) string {
	q := url.Values{}
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	// A file: URI with an escaped path, so a '?' or '#' in the path is
	// part of the name and not the start of the parameters.
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	return u.String()
}

// checkWriteConn confirms that the pragmas that durability depends on took
// effect; journal_mode in particular reports, rather than fails, when it
// cannot switch to WAL.
func checkWriteConn(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, not WAL (is the file on a file system that supports shared memory?)", mode)
	}
	var synchronous, fk int
	if err := db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&synchronous); err != nil {
		return err
	}
	if synchronous != 2 {
		return fmt.Errorf("synchronous is %d, not FULL (2)", synchronous)
	}
	if err := db.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return err
	}
	if fk != 1 {
		return errors.New("foreign keys are not enforced")
	}
	return nil
}
