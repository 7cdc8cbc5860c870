package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// checkPrivate refuses a directory or file meshd trusts (the data dir, the
// CA and root dirs, a secret file) when another user owns it or, for a
// directory, when others may write it: whoever can replace what is in it
// can replace the bootstrap secret, the CA's keys or the store. A path
// that does not exist yet is fine; meshd creates it 0700.
func checkPrivate(what, path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := os.Geteuid(); int(st.Uid) != uid {
			return fmt.Errorf("%s %s is owned by uid %d, not by meshd's user (uid %d); another user could replace what meshd trusts there: chown it to meshd's user (chown -R %d %s)", what, path, st.Uid, uid, uid, path)
		}
	}
	if fi.IsDir() && fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %04o: others can write it and replace what meshd trusts there; chmod 700 %s", what, path, fi.Mode().Perm(), path)
	}
	return nil
}
