// Package catest is test support: a mesh CA, root and intermediate, over
// an SQLite store in a directory, as `meshctl ca init` and `meshctl ca
// issue-intermediate` leave it, for the tests of the packages that run
// meshd or speak to it.
package catest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// New creates a mesh CA in dir (the root in dir/root, the CA and its
// store in dir/ca) whose root and intermediate were made at made, and
// opens it with the real clock. The caller closes the store.
func New(tb testing.TB, dir string, made time.Time) (ca.Config, *sqlstore.Store, *ca.CA) {
	tb.Helper()
	ctx := context.Background()
	cfg := ca.Config{RootDir: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "ca")}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(ctx, cfg.StorePath())
	if err != nil {
		tb.Fatal(err)
	}
	past := cfg
	past.Now = func() time.Time { return made }
	if _, err := ca.Init(ctx, past, st); err != nil {
		st.Close()
		tb.Fatal(err)
	}
	if _, err := ca.IssueIntermediate(ctx, past, st); err != nil {
		st.Close()
		tb.Fatal(err)
	}
	auth, err := ca.Open(ctx, cfg, st)
	if err != nil {
		st.Close()
		tb.Fatal(err)
	}
	return cfg, st, auth
}
