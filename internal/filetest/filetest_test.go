package filetest_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshtrust/meshtrust/internal/filetest"
)

// TestSnapshot: a snapshot sees a file's content and mode change, leaves
// out the names it is told to, and takes a missing dir as empty.
func TestSnapshot(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(file, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "meshtrust.db-wal"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := filetest.Snapshot(t, "meshtrust.db", dir, filepath.Join(dir, "missing"))
	if len(before) != 2 {
		t.Fatalf("snapshot %v, want the dir and ca.pem", before)
	}
	if err := os.WriteFile(filepath.Join(dir, "meshtrust.db-wal"), []byte("y"), 0o600); err != nil {
		t.Fatal(err)
	}
	if after := filetest.Snapshot(t, "meshtrust.db", dir); after[file] != before[file] || len(after) != 2 {
		t.Fatalf("a left-out file's change shows: %v -> %v", before, after)
	}
	for _, change := range []func() error{
		func() error { return os.WriteFile(file, []byte("b"), 0o644) },
		func() error { return os.Chmod(file, 0o600) },
	} {
		if err := change(); err != nil {
			t.Fatal(err)
		}
		after := filetest.Snapshot(t, "meshtrust.db", dir)
		if after[file] == before[file] {
			t.Errorf("a change to ca.pem does not show: %q", after[file])
		}
		before = after
	}
}
