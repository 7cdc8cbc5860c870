package pemfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshtrust/meshtrust/pemfile"
)

// TestExists pins the one rule meshd, meshctl and the CA share: something
// at the path counts, a final symlink is not followed, so a dangling
// symlink exists (nothing gets created over it) and a symlink to a file
// exists as before.
func TestExists(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), dangling); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want bool
	}{
		{file, true},
		{dir, true},
		{link, true},
		{dangling, true},
		{filepath.Join(dir, "missing"), false},
		{filepath.Join(file, "under-a-file"), false},
	} {
		if got := pemfile.Exists(tc.path); got != tc.want {
			t.Errorf("Exists(%s) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

func TestSyncDir(t *testing.T) {
	if err := pemfile.SyncDir(t.TempDir()); err != nil {
		t.Fatalf("SyncDir: %v", err)
	}
	if err := pemfile.SyncDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
}
