package sqlstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/meshtrust/meshtrust/internal/store/pgtest"
)

// TestExpectIDSQLite: an open that expects a store id opens that store
// only; a missing file is not created and another file is not migrated.
func TestExpectIDSQLite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "meshtrust.db")
	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	s.Close()

	s, err = OpenSQLite(t.Context(), path, ExpectID(id))
	if err != nil {
		t.Fatalf("OpenSQLite(ExpectID(its own id)): %v", err)
	}
	s.Close()

	other := strings.Repeat("ab", 16)
	if _, err := OpenSQLite(t.Context(), path, ExpectID(other)); !errors.Is(err, ErrOtherStore) || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), other) {
		t.Errorf("OpenSQLite(ExpectID(another id)) = %v, want ErrOtherStore naming both ids", err)
	}

	missing := filepath.Join(dir, "missing.db")
	if _, err := OpenSQLite(t.Context(), missing, ExpectID(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenSQLite(a missing file, ExpectID) = %v, want os.ErrNotExist", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused open created %s (%v)", missing, err)
	}

	// A file that is no store yet (an empty one) is refused unmigrated.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSQLite(t.Context(), empty, ExpectID(id)); !errors.Is(err, ErrOtherStore) {
		t.Errorf("OpenSQLite(an empty file, ExpectID) = %v, want ErrOtherStore", err)
	}
	var tables int
	if err := rawDB(t, empty).QueryRow(`SELECT count(*) FROM sqlite_schema`).Scan(&tables); err != nil || tables != 0 {
		t.Errorf("the refused open left %d tables in the empty file (%v), want 0", tables, err)
	}
}

// TestStoreIDFixed: the migration's triggers refuse to change or delete
// the id.
func TestStoreIDFixed(t *testing.T) {
	_, path := openTest(t)
	db := rawDB(t, path)
	for _, q := range []string{`UPDATE store_identity SET id = '` + strings.Repeat("0", 32) + `'`, `DELETE FROM store_identity`} {
		if _, err := db.Exec(q); err == nil || !strings.Contains(err.Error(), "never changes") {
			t.Errorf("%s = %v, want the trigger's refusal", q, err)
		}
	}
}

// TestExpectIDPostgres: a PostgreSQL schema of another store, or one that
// holds none, is refused, and the empty one is left without a table.
func TestExpectIDPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.Schema(t)
	s, err := OpenPostgres(t.Context(), dsn, WithoutListen())
	if err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	s.Close()
	s, err = OpenPostgres(t.Context(), dsn, WithoutListen(), ExpectID(id))
	if err != nil {
		t.Fatalf("OpenPostgres(ExpectID(its own id)): %v", err)
	}
	s.Close()

	other := srv.Schema(t)
	if _, err := OpenPostgres(t.Context(), other, WithoutListen(), ExpectID(id)); !errors.Is(err, ErrOtherStore) {
		t.Fatalf("OpenPostgres(an empty schema, ExpectID) = %v, want ErrOtherStore", err)
	}
	conn, err := pgx.Connect(t.Context(), other)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var tables int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&tables); err != nil || tables != 0 {
		t.Errorf("the refused open left %d tables in the empty schema (%v), want 0", tables, err)
	}

	s2, err := OpenPostgres(t.Context(), other, WithoutListen())
	if err != nil {
		t.Fatal(err)
	}
	id2 := s2.ID()
	s2.Close()
	if _, err := OpenPostgres(t.Context(), other, WithoutListen(), ExpectID(id)); !errors.Is(err, ErrOtherStore) || !strings.Contains(err.Error(), id2) {
		t.Errorf("OpenPostgres(another store, ExpectID) = %v, want ErrOtherStore naming %s", err, id2)
	}
}
