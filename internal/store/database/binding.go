package database

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// bindingFile is the file in a CA directory that records the store the
// directory belongs to.
const bindingFile = "store.json"

// defaultFile is the SQLite store of a CA directory that names no other.
const defaultFile = "meshtrust.db"

// Store kinds in a binding.
const (
	kindSQLite   = "sqlite"
	kindPostgres = "postgres"
)

// binding is what a CA directory records of its store, in store.json
// (mode 0644: it holds no secret, never a password). StoreID is what is
// compared; the rest says where to find the store and names it in
// messages.
type binding struct {
	// Kind is "sqlite" or "postgres".
	Kind string `json:"kind"`
	// Path is the SQLite file: relative to the CA directory when it is
	// inside it (so a CA directory moved or mounted elsewhere keeps its
	// store), absolute otherwise.
	Path string `json:"path,omitempty"`
	// Host is the PostgreSQL server, host:port; DBName its database, User
	// the role, Schema the search_path the URL set (if any).
	Host   string `json:"host,omitempty"`
	DBName string `json:"dbname,omitempty"`
	User   string `json:"user,omitempty"`
	Schema string `json:"schema,omitempty"`
	// StoreID is the store's id (store.Store's ID).
	StoreID string `json:"store_id"`
}

// maxBindingSize bounds what readBinding reads: the file is a few lines.
const maxBindingSize = 64 << 10

// readBinding returns the binding of caDir, or nil when it has none (a
// new CA directory, or one an older meshtrust made).
func readBinding(caDir string) (*binding, error) {
	path := filepath.Join(caDir, bindingFile)
	data, err := pemfile.ReadRegular(path, maxBindingSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("database: read %s, the record of the CA directory's store: %w", path, err)
	}
	var b binding
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("database: %s, the record of the CA directory's store, does not parse: %w; restore it from a backup of the CA directory", path, err)
	}
	if err := b.valid(); err != nil {
		return nil, fmt.Errorf("database: %s, the record of the CA directory's store: %w; restore it from a backup of the CA directory", path, err)
	}
	return &b, nil
}

// valid checks what a binding must hold.
func (b binding) valid() error {
	if !store.ValidID(b.StoreID) {
		return fmt.Errorf("store_id %q is not 32 lowercase hex digits", b.StoreID)
	}
	switch b.Kind {
	case kindSQLite:
		if b.Path == "" {
			return errors.New("an sqlite store without a path")
		}
	case kindPostgres:
		if b.Host == "" || b.DBName == "" {
			return errors.New("a postgres store without host or dbname")
		}
	default:
		return fmt.Errorf("kind %q is neither sqlite nor postgres", b.Kind)
	}
	return nil
}

// bindingOf describes the store url names (the SQLite file or the
// PostgreSQL database, without a password) for caDir, with id storeID.
// url is a postgres:// URL or an SQLite file (see SQLitePath), never
// empty.
func bindingOf(caDir, url, storeID string) (binding, error) {
	b := binding{StoreID: storeID}
	if !IsPostgres(url) {
		abs, err := filepath.Abs(SQLitePath(url, ""))
		if err != nil {
			return b, fmt.Errorf("database: %w", err)
		}
		b.Kind, b.Path = kindSQLite, abs
		if dir, err := filepath.Abs(caDir); err == nil {
			if rel, err := filepath.Rel(dir, abs); err == nil && filepath.IsLocal(rel) {
				b.Path = rel
			}
		}
		return b, nil
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password and all.
		return b, errors.New("database: the PostgreSQL URL does not parse; want postgres://user:password@host:port/database")
	}
	b.Kind = kindPostgres
	b.Host = cfg.Host + ":" + strconv.Itoa(int(cfg.Port))
	b.DBName, b.User, b.Schema = cfg.Database, cfg.User, cfg.RuntimeParams["search_path"]
	return b, nil
}

// sqlitePath is the absolute path of b's SQLite file, for caDir.
func (b binding) sqlitePath(caDir string) string {
	p := b.Path
	if !filepath.IsAbs(p) {
		p = filepath.Join(caDir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return filepath.Clean(p)
}

// sameWhere reports whether a and b (b as recorded for caDir) name the
// same database: the same SQLite file, or the same PostgreSQL kind. It
// decides nothing about PostgreSQL, whose host names vary with where a
// process runs: the store id decides.
func (b binding) sameWhere(caDir string, a binding) bool {
	if a.Kind != b.Kind {
		return false
	}
	if b.Kind != kindSQLite {
		return true
	}
	x, y := a.sqlitePath(caDir), b.sqlitePath(caDir)
	if x == y {
		return true
	}
	fx, err1 := os.Stat(x)
	fy, err2 := os.Stat(y)
	return err1 == nil && err2 == nil && os.SameFile(fx, fy)
}

// describe names the store for a message, without a password, and with
// its id when b has one.
func (b binding) describe(caDir string) string {
	var s string
	if b.Kind == kindSQLite {
		s = "the SQLite store " + b.sqlitePath(caDir)
	} else {
		s = fmt.Sprintf("the PostgreSQL store %s/%s (user %s", b.Host, b.DBName, b.User)
		if b.Schema != "" {
			s += ", schema " + b.Schema
		}
		s += ")"
	}
	if b.StoreID != "" {
		s += " with store id " + b.StoreID
	}
	return s
}

// writeBinding records b in caDir unless caDir records a binding
// already: the file appears whole or not at all (a temporary file linked
// into place), and of two processes binding one directory at once the
// first wins; the other gets an error wrapping fs.ErrExist.
func writeBinding(caDir string, b binding) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	f, err := os.CreateTemp(caDir, "."+bindingFile+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(0o644), f.Sync(), f.Close())
	if err != nil {
		return err
	}
	if err := os.Link(tmp, filepath.Join(caDir, bindingFile)); err != nil {
		return err
	}
	return pemfile.SyncDir(caDir)
}
