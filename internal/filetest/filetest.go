// Package filetest snapshots directory trees, for the tests that must show
// an operation left every file as it found it: a refused CA operation or
// meshctl command.
package filetest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Snapshot maps every file and directory under dirs to its mode and, for a
// file, its SHA-256. Names beginning with leaveOut are left out (the
// store's database, which tests compare through the store's API), and so
// is a dir that does not exist.
func Snapshot(tb testing.TB, leaveOut string, dirs ...string) map[string]string {
	tb.Helper()
	out := make(map[string]string)
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return nil
			}
			if err != nil {
				return err
			}
			if leaveOut != "" && strings.HasPrefix(d.Name(), leaveOut) {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if d.IsDir() {
				out[p] = fi.Mode().String()
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			out[p] = fi.Mode().String() + " " + hex.EncodeToString(sum[:])
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// CheckSame reports as errors of tb every entry of the snapshot before
// that changed or is gone in after, and every entry that appeared.
func CheckSame(tb testing.TB, before, after map[string]string) {
	tb.Helper()
	for p, v := range before {
		if after[p] != v {
			tb.Errorf("%s changed: %q -> %q", p, v, after[p])
		}
	}
	for p, v := range after {
		if _, ok := before[p]; !ok {
			tb.Errorf("%s appeared (%s)", p, v)
		}
	}
}
