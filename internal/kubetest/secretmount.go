package kubetest

import (
	"os"
	"path/filepath"
	"testing"
)

// MountSecret writes files into dir the way the kubelet updates a mounted
// Secret volume: the new version in a directory of its own (mode 0400
// files), a ..data_tmp link to it renamed over ..data in one step, and
// each file a link through ..data; the previous version is then removed.
// A reader of dir/name sees either the old or the new version, never a
// mix, and a watcher of dir sees the rename.
func MountSecret(tb testing.TB, dir string, files map[string][]byte) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	// A directory of its own per version, as the kubelet's timestamped ones.
	vdir, err := os.MkdirTemp(dir, "..version_")
	if err != nil {
		tb.Fatal(err)
	}
	ts := filepath.Base(vdir)
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, name), data, 0o400); err != nil {
			tb.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(ts, tmp); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		tb.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			tb.Fatal(err)
		}
	}
	if old != "" && old != ts {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			tb.Fatal(err)
		}
	}
}
