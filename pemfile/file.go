package pemfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteAtomic writes data to path with mode perm so that readers see
// either the old file or the whole new one: a temporary file in the same
// directory is written, synced and renamed over path, then the directory
// is synced so the rename survives a crash.
func WriteAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs the directory dir, so that a file created in it or
// renamed into it survives a crash along with its directory entry.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Exists reports whether something occupies path, without following a
// final symlink: a dangling symlink counts, so a caller deciding whether
// to create a file there never writes over (or through) what an operator
// put in its place, and a caller deciding to load finds the breakage and
// reports it rather than silently starting afresh.
func Exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// MkdirPrivate creates dir, and any missing parents, with mode 0700, and
// refuses an existing dir that other users can write, wrapping
// ErrPermissions: they could replace the files in it.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: directory %s has mode %04o; other users could replace the files in it (run `chmod 700 %s`)", ErrPermissions, dir, perm, dir)
	}
	return nil
}
