// Package database opens the store a configuration names: the embedded
// SQLite file by default, or a PostgreSQL database that several meshd
// replicas share. meshd and meshctl both open their store here, so one
// setting (--database, or DATABASE_URL as MCP Mesh names it) means the
// same to both.
package database

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// EnvVar is the environment variable that names the database, MCP Mesh's.
const EnvVar = "DATABASE_URL"

// IsPostgres reports whether url names a PostgreSQL database
// (postgres:// or postgresql://).
func IsPostgres(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// SQLitePath returns the SQLite file url names ("sqlite:" or
// "sqlite://" followed by a path, or a bare path), or def when url is
// empty: the CA directory's meshtrust.db, where meshd and meshctl look by
// default.
func SQLitePath(url, def string) string {
	switch {
	case url == "":
		return def
	case strings.HasPrefix(url, "sqlite://"):
		return strings.TrimPrefix(url, "sqlite://")
	case strings.HasPrefix(url, "sqlite:"):
		return strings.TrimPrefix(url, "sqlite:")
	}
	return url
}

// ErrWrongStore reports a store that is not the one the CA directory
// belongs to, or a CA directory whose store cannot be found without
// --database: nothing was opened, created or written.
var ErrWrongStore = errors.New("database: not the CA directory's store")

// Options tune Open.
type Options struct {
	Logger *slog.Logger
	// Follow is set by a process that follows the change feed (meshd):
	// a PostgreSQL store then LISTENs for its notifications.
	Follow bool
	// CAExists is set when the CA directory holds a CA already. Such a
	// directory without a record of its store (store.json, which older
	// meshtrust did not write) and without its SQLite file was used with
	// a PostgreSQL database: Open then refuses, rather than create an
	// empty SQLite store for it, unless a database is named.
	CAExists bool
}

// Open opens the store of the CA directory caDir: the one url names
// (--database or DATABASE_URL: see IsPostgres and SQLitePath), or when
// url is empty, the one caDir records, by default caDir/meshtrust.db.
// Every process that opens a store for a CA directory opens it here.
//
// A CA directory records its store (store.json: the kind, where it is,
// never a password, and its id) when a store is first opened for it, and
// from then on Open opens that store or refuses with ErrWrongStore,
// naming it: a PostgreSQL store without url; another store's url; an
// SQLite file at another path. The refusal comes before anything is
// created or migrated.
func Open(ctx context.Context, caDir, url string, o Options) (store.Store, error) {
	if caDir == "" {
		return nil, errors.New("database: no CA directory to open the store of")
	}
	if !IsPostgres(url) && strings.Contains(url, "://") && !strings.HasPrefix(url, "sqlite://") {
		return nil, errors.New("database: the URL's scheme is not one meshtrust knows; want postgres://user:password@host:port/database, or an SQLite file path")
	}
	b, err := readBinding(caDir)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return adopt(ctx, caDir, url, o)
	}
	return openBound(ctx, caDir, *b, url, o)
}

// openBound opens the store of caDir, which records b, or refuses.
func openBound(ctx context.Context, caDir string, b binding, url string, o Options) (store.Store, error) {
	where := "--database (or " + EnvVar + ")"
	if url == "" {
		if b.Kind == kindPostgres {
			return nil, fmt.Errorf("%w: the CA directory %s belongs to %s, and no database was named: pass its URL with --database or %s (%s records no password)",
				ErrWrongStore, caDir, b.describe(caDir), EnvVar, filepath.Join(caDir, bindingFile))
		}
		url, where = b.sqlitePath(caDir), filepath.Join(caDir, bindingFile)
	}
	given, err := bindingOf(caDir, url, "")
	if err != nil {
		return nil, err
	}
	// Before anything is opened: a database of another kind, or an SQLite
	// file at another path (a copy is another store to write), is not
	// the CA directory's.
	if !b.sameWhere(caDir, given) {
		return nil, fmt.Errorf("%w: %s names %s, but the CA directory %s belongs to %s: pass that store, or run the command with the CA directory of this one",
			ErrWrongStore, where, given.describe(caDir), caDir, b.describe(caDir))
	}
	// Compared: the store id the database holds, read before anything is
	// migrated or created (sqlstore.ExpectID), with store.json's store_id,
	// byte for byte. Not the URL: one PostgreSQL database has as many
	// host names as there are places to reach it from, and one URL can
	// reach another database tomorrow.
	st, err := openURL(ctx, url, o, sqlstore.ExpectID(b.StoreID))
	switch {
	case errors.Is(err, sqlstore.ErrOtherStore):
		return nil, fmt.Errorf("%w: the CA directory %s belongs to %s, and the database named is another: %w", ErrWrongStore, caDir, b.describe(caDir), err)
	case b.Kind == kindSQLite && errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: the CA directory %s belongs to %s, which does not exist: restore it from a backup (nothing was created): %w", ErrWrongStore, caDir, b.describe(caDir), err)
	}
	return st, err
}

// adopt opens the store of caDir, which records none yet, and records it.
func adopt(ctx context.Context, caDir, url string, o Options) (store.Store, error) {
	def := filepath.Join(caDir, defaultFile)
	if url == "" {
		if o.CAExists && !pemfile.Exists(def) {
			return nil, fmt.Errorf("%w: the CA directory %s holds a CA but neither %s nor the SQLite store %s: its store is elsewhere (a PostgreSQL database its meshd replicas share?). Pass it with --database or %s; nothing was created",
				ErrWrongStore, caDir, bindingFile, def, EnvVar)
		}
		url = def
	}
	st, err := openURL(ctx, url, o)
	if err != nil {
		return nil, err
	}
	b, err := bindingOf(caDir, url, st.ID())
	if err == nil {
		err = writeBinding(caDir, b)
	}
	switch {
	case err == nil:
		if o.Logger != nil {
			o.Logger.Info("recorded the CA directory's store", "file", filepath.Join(caDir, bindingFile), "store", b.describe(caDir))
		}
		return st, nil
	case errors.Is(err, fs.ErrExist):
		// Another process bound the directory meanwhile: its record
		// decides.
		if theirs, rerr := readBinding(caDir); rerr == nil && theirs != nil && theirs.StoreID == st.ID() {
			return st, nil
		}
		st.Close()
		return Open(ctx, caDir, url, o)
	case errors.Is(err, syscall.EROFS):
		// A read-only CA directory (a mounted Secret) can record nothing,
		// and no SQLite store grows in it either.
		if o.Logger != nil {
			o.Logger.Warn("the CA directory is read-only: its store is not recorded", "dir", caDir, "store", b.describe(caDir))
		}
		return st, nil
	}
	st.Close()
	return nil, fmt.Errorf("database: record the CA directory's store in %s: %w", filepath.Join(caDir, bindingFile), err)
}

// openURL opens the store url names, an SQLite file or a PostgreSQL URL.
func openURL(ctx context.Context, url string, o Options, opts ...sqlstore.Option) (store.Store, error) {
	if !IsPostgres(url) {
		return sqlstore.OpenSQLite(ctx, SQLitePath(url, ""), opts...)
	}
	if o.Logger != nil {
		opts = append(opts, sqlstore.WithLogger(o.Logger))
	}
	if !o.Follow {
		opts = append(opts, sqlstore.WithoutListen())
	}
	return sqlstore.OpenPostgres(ctx, url, opts...)
}
