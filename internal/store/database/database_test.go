package database

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// open opens the store of caDir for url and closes it when t ends.
func open(t *testing.T, caDir, url string, o Options) store.Store {
	t.Helper()
	st, err := Open(t.Context(), caDir, url, o)
	if err != nil {
		t.Fatalf("Open(%s, %q): %v", caDir, url, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// recorded returns caDir's binding and fails t unless it is a 0644 file.
func recorded(t *testing.T, caDir string) binding {
	t.Helper()
	path := filepath.Join(caDir, bindingFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("%s has mode %v, want 0644", path, fi.Mode().Perm())
	}
	b, err := readBinding(caDir)
	if err != nil || b == nil {
		t.Fatalf("readBinding = %v, %v", b, err)
	}
	return *b
}

// refused fails t unless err wraps ErrWrongStore and names every one of
// names.
func refused(t *testing.T, what string, err error, names ...string) {
	t.Helper()
	if !errors.Is(err, ErrWrongStore) {
		t.Fatalf("%s = %v, want ErrWrongStore", what, err)
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("%s: %q does not name %q", what, err, n)
		}
	}
}

func absent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (%v); a refused open must create nothing", path, err)
	}
}

func TestSQLiteBinding(t *testing.T) {
	caDir := t.TempDir()
	st := open(t, caDir, "", Options{})
	id := st.ID()
	b := recorded(t, caDir)
	if want := (binding{Kind: kindSQLite, Path: defaultFile, StoreID: id}); b != want {
		t.Fatalf("the binding of a new CA directory = %+v, want %+v", b, want)
	}
	st.Close()

	def := filepath.Join(caDir, defaultFile)
	for _, url := range []string{"", def, "sqlite://" + def, "sqlite:" + def} {
		if got := open(t, caDir, url, Options{}).ID(); got != id {
			t.Errorf("Open(%q) opened store %s, want %s", url, got, id)
		}
	}

	other := filepath.Join(t.TempDir(), "other.db")
	_, err := Open(t.Context(), caDir, other, Options{})
	refused(t, "Open(another SQLite file)", err, other, def, id)
	absent(t, other)

	// The file replaced by another store (a new one at the same path).
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(def + suffix)
	}
	_, err = Open(t.Context(), caDir, "", Options{})
	refused(t, "Open(the store deleted)", err, def, id, "does not exist")
	absent(t, def)
	s2, err := sqlstore.OpenSQLite(t.Context(), def)
	if err != nil {
		t.Fatal(err)
	}
	id2 := s2.ID()
	s2.Close()
	_, err = Open(t.Context(), caDir, "", Options{})
	refused(t, "Open(another store at the recorded path)", err, id, id2)
}

// TestSQLiteBindingOutside: a store outside the CA directory is recorded
// by its absolute path, and used without --database from then on.
func TestSQLiteBindingOutside(t *testing.T) {
	caDir := t.TempDir()
	path := filepath.Join(t.TempDir(), "elsewhere.db")
	id := open(t, caDir, path, Options{}).ID()
	if b := recorded(t, caDir); b.Path != path || b.StoreID != id {
		t.Errorf("binding = %+v, want path %s and store id %s", b, path, id)
	}
	if got := open(t, caDir, "", Options{}).ID(); got != id {
		t.Errorf("Open without a database opened %s, want the recorded %s", got, id)
	}
	absent(t, filepath.Join(caDir, defaultFile))
}

// TestAdoptOlderCADir: a CA directory an older meshtrust made (its store,
// no store.json) records the store it opens.
func TestAdoptOlderCADir(t *testing.T) {
	caDir := t.TempDir()
	old, err := sqlstore.OpenSQLite(t.Context(), filepath.Join(caDir, defaultFile))
	if err != nil {
		t.Fatal(err)
	}
	id := old.ID()
	old.Close()
	absent(t, filepath.Join(caDir, bindingFile))
	if got := open(t, caDir, "", Options{CAExists: true}).ID(); got != id {
		t.Fatalf("Open opened %s, want the older directory's store %s", got, id)
	}
	if b := recorded(t, caDir); b.StoreID != id || b.Path != defaultFile {
		t.Errorf("binding after the upgrade = %+v, want %s at %s", b, id, defaultFile)
	}
}

// TestOlderCADirWithoutStore: a CA directory with a CA but neither a
// binding nor its SQLite file had its store elsewhere: no store is made
// for it unless one is named.
func TestOlderCADirWithoutStore(t *testing.T) {
	caDir := t.TempDir()
	_, err := Open(t.Context(), caDir, "", Options{CAExists: true})
	refused(t, "Open(a CA without its store)", err, "--database", EnvVar)
	absent(t, filepath.Join(caDir, defaultFile))
	absent(t, filepath.Join(caDir, bindingFile))
}

func TestBadBinding(t *testing.T) {
	for name, content := range map[string]string{
		"not JSON":      "{",
		"unknown kind":  `{"kind":"mysql","store_id":"` + strings.Repeat("a", 32) + `"}`,
		"short id":      `{"kind":"sqlite","path":"meshtrust.db","store_id":"abc"}`,
		"no path":       `{"kind":"sqlite","store_id":"` + strings.Repeat("a", 32) + `"}`,
		"no dbname":     `{"kind":"postgres","host":"h:5432","store_id":"` + strings.Repeat("a", 32) + `"}`,
		"unknown field": `{"kind":"sqlite","path":"meshtrust.db","password":"x","store_id":"` + strings.Repeat("a", 32) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			caDir := t.TempDir()
			path := filepath.Join(caDir, bindingFile)
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(t.Context(), caDir, "", Options{}); err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open with store.json %q = %v, want an error naming %s", content, err, path)
			}
			absent(t, filepath.Join(caDir, defaultFile))
			if got, _ := os.ReadFile(path); string(got) != content {
				t.Errorf("store.json changed to %q", got)
			}
		})
	}
}

// TestConcurrentAdopt: processes that open the store of a CA directory
// that records none yet, at once, record it once, and all use the store
// recorded. (The store exists already: SQLite can refuse openers of one
// new file at once with SQLITE_BUSY, which is not what this checks.)
func TestConcurrentAdopt(t *testing.T) {
	caDir := t.TempDir()
	first, err := sqlstore.OpenSQLite(t.Context(), filepath.Join(caDir, defaultFile))
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	const n = 8
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := Open(t.Context(), caDir, "", Options{})
			if err != nil {
				errs[i] = err
				return
			}
			ids[i] = st.ID()
			st.Close()
		}()
	}
	wg.Wait()
	b := recorded(t, caDir)
	for i := range n {
		if errs[i] != nil || ids[i] != b.StoreID {
			t.Errorf("opener %d: store %s, %v; want the recorded %s", i, ids[i], errs[i], b.StoreID)
		}
	}
	matches, _ := filepath.Glob(filepath.Join(caDir, "."+bindingFile+".tmp-*"))
	if len(matches) != 0 {
		t.Errorf("temporary files left behind: %v", matches)
	}
}

// TestPostgresBinding: a CA directory bound to PostgreSQL opens it only
// when it is named, refuses another database, and records no password.
func TestPostgresBinding(t *testing.T) {
	srv := pgtest.Start(t)
	dsn, otherDSN := srv.Schema(t), srv.Schema(t)
	caDir := t.TempDir()
	id := open(t, caDir, dsn, Options{}).ID()
	b := recorded(t, caDir)
	if b.Kind != kindPostgres || b.StoreID != id || b.Host == "" || b.DBName == "" || b.Schema == "" {
		t.Fatalf("binding = %+v, want postgres with host, dbname, schema and store id %s", b, id)
	}
	raw, err := os.ReadFile(filepath.Join(caDir, bindingFile))
	if err != nil {
		t.Fatal(err)
	}
	if pw := password(t, dsn); pw != "" && strings.Contains(string(raw), pw) {
		t.Errorf("store.json holds the password: %s", raw)
	}

	_, err = Open(t.Context(), caDir, "", Options{CAExists: true})
	refused(t, "Open without a database", err, b.Host, b.DBName, "--database", EnvVar)
	absent(t, filepath.Join(caDir, defaultFile))

	_, err = Open(t.Context(), caDir, otherDSN, Options{})
	refused(t, "Open(another schema)", err, id, b.Host)
	_, err = Open(t.Context(), caDir, filepath.Join(caDir, defaultFile), Options{})
	refused(t, "Open(an SQLite file)", err, b.Host, defaultFile)
	absent(t, filepath.Join(caDir, defaultFile))

	// The other schema got nothing from the refusal: opened on its own,
	// it is a new store with an id of its own.
	other, err := sqlstore.OpenPostgres(t.Context(), otherDSN, sqlstore.WithoutListen())
	if err != nil {
		t.Fatal(err)
	}
	otherID := other.ID()
	other.Close()
	_, err = Open(t.Context(), caDir, otherDSN, Options{})
	refused(t, "Open(another store)", err, id, otherID)

	if got := open(t, caDir, dsn, Options{}).ID(); got != id {
		t.Errorf("Open(its own database) opened %s, want %s", got, id)
	}
}

// password returns the password dsn carries, if any.
func password(t *testing.T, dsn string) string {
	t.Helper()
	_, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		return ""
	}
	userinfo, _, ok := strings.Cut(rest, "@")
	if !ok {
		return ""
	}
	_, pw, _ := strings.Cut(userinfo, ":")
	return pw
}
