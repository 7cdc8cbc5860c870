// Package database opens the store a configuration names: the embedded
// SQLite file by default, or a PostgreSQL database that several meshd
// replicas share. meshd and meshctl both open their store here, so one
// setting (--database, or DATABASE_URL as MCP Mesh names it) means the
// same to both.
package database

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
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

// Options tune Open.
type Options struct {
	Logger *slog.Logger
	// Follow is set by a process that follows the change feed (meshd):
	// a PostgreSQL store then LISTENs for its notifications.
	Follow bool
}

// Open opens the store url names; see IsPostgres and SQLitePath. def is
// the SQLite file used when url is empty.
func Open(ctx context.Context, url, def string, o Options) (store.Store, error) {
	if !IsPostgres(url) {
		if strings.Contains(url, "://") && !strings.HasPrefix(url, "sqlite://") {
			return nil, errors.New("database: the URL's scheme is not one meshtrust knows; want postgres://user:password@host:port/database, or an SQLite file path")
		}
		return sqlstore.OpenSQLite(ctx, SQLitePath(url, def))
	}
	opts := []sqlstore.Option{}
	if o.Logger != nil {
		opts = append(opts, sqlstore.WithLogger(o.Logger))
	}
	if !o.Follow {
		opts = append(opts, sqlstore.WithoutListen())
	}
	return sqlstore.OpenPostgres(ctx, url, opts...)
}
