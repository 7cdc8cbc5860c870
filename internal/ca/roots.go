package ca

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/meshtrust/meshtrust/pemfile"
)

// archiveRootCopy keeps the root intermediate/root.crt names in
// intermediate/roots/<key id>.crt before root (a new root, in a root
// rollover) replaces it there, so the intermediates the old root signed
// stay trusted (localRoots) while they still sign.
func archiveRootCopy(cfg Config, root *x509.Certificate) error {
	cur, err := pemfile.ReadCert(cfg.rootCopyPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if bytes.Equal(cur.Raw, root.Raw) {
		return nil
	}
	if err := pemfile.MkdirPrivate(cfg.oldRootsDir()); err != nil {
		return err
	}
	return pemfile.WriteAtomic(filepath.Join(cfg.oldRootsDir(), keyID(cur)+".crt"), pemfile.EncodeCerts(cur), 0o644)
}

// localRoots returns the roots this CA directory holds: its root
// (intermediate/root.crt) first, then the ones a rollover replaced
// (intermediate/roots/*.crt). Only files of this directory count, written
// by whoever held a root key: the store alone vouches for no root.
func localRoots(cfg Config) ([]*x509.Certificate, error) {
	root, err := pemfile.ReadCert(cfg.rootCopyPath())
	if err != nil {
		return nil, err
	}
	out := []*x509.Certificate{root}
	paths, err := filepath.Glob(filepath.Join(cfg.oldRootsDir(), "*.crt"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	for _, p := range paths {
		c, err := pemfile.ReadCert(p)
		if err != nil {
			return nil, fmt.Errorf("an older root of this CA: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// signedByLocalRoot reports whether one of roots signed cert (the
// signature is what is compared, not a name).
func signedByLocalRoot(cert *x509.Certificate, roots []*x509.Certificate) error {
	var first error
	for _, r := range roots {
		err := cert.CheckSignatureFrom(r)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}
