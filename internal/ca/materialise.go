package ca

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// ErrRootMismatch reports a CA directory whose root is not the root the
// store's CA state records: the directory belongs to another CA, or to
// this one before a root rollover. Nothing was written.
var ErrRootMismatch = errors.New("ca: the CA directory's root is not the store's")

// Materialise prepares cfg.Dir for Open from the CA state st holds, and
// reports whether there is a CA to open: a new replica starts with an
// empty CA directory (an emptyDir volume) and the store alone. It writes
// the roots the state records (intermediate/root.crt and
// intermediate/roots/<id>.crt) where they are missing; Open then writes
// the rest from the state as it does on every reload (state.json,
// keys/<id>.crt, the keys' PKCS#11 references, int.crt, chain.pem,
// bundle.pem). A root already in the directory that is not the state's is
// an error naming both fingerprints (ErrRootMismatch), never replaced.
//
// Without a state in the store, there is a CA to open only if the
// directory has a state.json from before the state moved into the store,
// which Open imports.
func Materialise(ctx context.Context, cfg Config, st store.Store) (bool, error) {
	cfg = cfg.withDefaults()
	s, err := st.CAState(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return pemfile.Exists(cfg.statePath()), nil
	}
	if err != nil {
		return false, fmt.Errorf("read the CA's state: %w", err)
	}
	return true, materialiseRoots(cfg, s)
}

// materialiseRoots writes the roots s records into cfg.Dir where they are
// missing, after checking every one of them and that the directory's own
// root is s's current one.
//
// Which trust source vouches for a root written here: the store, the same
// source that already vouches for the CA's intermediates and their slots.
// Whoever can write the store's CA state can make a replica with an empty
// CA directory trust a root of their choosing, as they could make it
// sign with an intermediate of their choosing; a directory that holds a
// root keeps it, and compares it (its DER bytes, exactly) with the
// state's current root before anything else is read from the store.
func materialiseRoots(cfg Config, s store.CAState) error {
	roots := make([]*x509.Certificate, 0, len(s.Roots))
	for i, der := range s.Roots {
		r, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("root %d in the store's CA state: %w", i, err)
		}
		if !r.IsCA || !bytes.Equal(r.RawIssuer, r.RawSubject) || r.CheckSignatureFrom(r) != nil {
			return fmt.Errorf("root %d in the store's CA state, %q (%s), is not a self-signed CA certificate", i, r.Subject, fingerprint(r))
		}
		roots = append(roots, r)
	}
	cur, err := pemfile.ReadCert(cfg.rootCopyPath())
	switch {
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return err
	case len(roots) == 0 && err == nil:
		return nil // a state written before roots were recorded: Open records this directory's
	case len(roots) == 0:
		return fmt.Errorf("%w: the store holds the CA's state but not its root (an older meshtrust wrote it) and %s is missing: run `meshctl ca crl` once on a CA directory that holds the root, which records it in the store, or copy its intermediate/root.crt here", ErrNotInitialized, cfg.rootCopyPath())
	case err == nil && !cur.Equal(roots[0]):
		hint := "this CA directory belongs to another CA: point it at its own store, or give this store an empty CA directory"
		if slices.ContainsFunc(roots[1:], cur.Equal) {
			hint = "the CA's root was rolled over since this CA directory was written: copy intermediate/root.crt and intermediate/roots/ from the CA directory where the rollover was done, or empty this one to take them from the store"
		}
		return fmt.Errorf("%w: %s is the root %s, the store's CA state names the root %s; nothing was written (%s)", ErrRootMismatch, cfg.rootCopyPath(), fingerprint(cur), fingerprint(roots[0]), hint)
	}
	for _, dir := range []string{cfg.Dir, cfg.intDir()} {
		if err := pemfile.MkdirPrivate(dir); err != nil {
			return err
		}
	}
	// The replaced roots first, the current one last: a crash in between
	// leaves no root.crt, and the next start writes them all again.
	for _, r := range roots[1:] {
		path := filepath.Join(cfg.oldRootsDir(), keyID(r)+".crt")
		old, err := pemfile.ReadCert(path)
		switch {
		case err == nil && !old.Equal(r):
			return fmt.Errorf("%w: %s is the root %s, the store's CA state has the root %s under its key id; nothing more was written", ErrRootMismatch, path, fingerprint(old), fingerprint(r))
		case err == nil:
			continue
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
		if err := pemfile.MkdirPrivate(cfg.oldRootsDir()); err != nil {
			return err
		}
		if err := pemfile.WriteAtomic(path, pemfile.EncodeCerts(r), 0o644); err != nil {
			return err
		}
	}
	if cur != nil {
		return nil
	}
	return pemfile.WriteAtomic(cfg.rootCopyPath(), pemfile.EncodeCerts(roots[0]), 0o644)
}

// recordRoots returns s with the roots cfg.Dir holds (localRoots) that s
// lacks, and whether there were any. With current, the directory's
// current root leads (the writer acts for the CA, a root rollover's new
// root included); without, the roots s records keep their order and the
// directory's others follow, so that replicas recording theirs never
// undo one another's order. A directory without a root leaves s as it is.
func recordRoots(cfg Config, s store.CAState, current bool) (store.CAState, bool, error) {
	local, err := localRoots(cfg)
	if errors.Is(err, os.ErrNotExist) {
		return s, false, nil
	}
	if err != nil {
		return s, false, err
	}
	out := make([][]byte, 0, len(local)+len(s.Roots))
	add := func(der []byte) {
		if !slices.ContainsFunc(out, func(o []byte) bool { return bytes.Equal(o, der) }) {
			out = append(out, der)
		}
	}
	if current {
		add(local[0].Raw)
	}
	for _, der := range s.Roots {
		add(der)
	}
	for _, r := range local {
		add(r.Raw)
	}
	changed := !slices.EqualFunc(out, s.Roots, bytes.Equal)
	s.Roots = out
	return s, changed, nil
}

// fingerprint is cert's SHA-256 fingerprint as `openssl x509 -noout
// -fingerprint -sha256` prints it, so an operator can compare the two.
func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	hex := make([]string, len(sum))
	for i, b := range sum {
		hex[i] = fmt.Sprintf("%02X", b)
	}
	return "SHA256 " + strings.Join(hex, ":")
}
