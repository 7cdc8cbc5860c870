package ca_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestMaterialise: a replica's empty CA directory gets the CA's roots
// from the store's state, and with the intermediate's key reachable
// (here its file copied; on a PKCS#11 token, its reference, which the
// state carries) it opens and signs; a directory holding another CA's
// root is refused naming both fingerprints, and nothing is written.
func TestMaterialise(t *testing.T) {
	a := newCA(t, caOptions{})
	ctx := t.Context()
	// A rollover leaves two roots: the new one current, the replaced one
	// kept while its intermediate signs.
	a.clock.Advance(time.Hour)
	oldRoot := readCert(t, a.rootPath())
	for _, p := range []string{a.rootPath(), a.rootKeyPath()} {
		if err := os.Rename(p, p+".old"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ca.Init(ctx, a.cfg, a.store); err != nil {
		t.Fatal(err)
	}
	newRoot := readCert(t, a.rootPath())
	prepared, err := ca.PrepareIntermediate(ctx, a.cfg, a.store)
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.store.CAState(ctx)
	if err != nil || len(s.Roots) != 2 || !bytes.Equal(s.Roots[0], newRoot.Raw) || !bytes.Equal(s.Roots[1], oldRoot.Raw) {
		t.Fatalf("the store's roots after a rollover: %d, %v; want the new root, then the old one", len(s.Roots), err)
	}

	b := a.cfg
	b.Dir = filepath.Join(t.TempDir(), "replica")
	if ok, err := ca.Materialise(ctx, b, a.store); err != nil || !ok {
		t.Fatalf("Materialise into an empty directory = %v, %v; want a CA", ok, err)
	}
	if got := readCert(t, filepath.Join(b.Dir, "intermediate", "root.crt")); !got.Equal(newRoot) {
		t.Errorf("root.crt is %q, want the store's current root", got.Subject)
	}
	if got := readCert(t, filepath.Join(b.Dir, "intermediate", "roots", hex.EncodeToString(oldRoot.SubjectKeyId)+".crt")); !got.Equal(oldRoot) {
		t.Errorf("the replaced root is %q, want the old root", got.Subject)
	}
	// The file keys live only where they were made: copy them, as
	// keyHint tells an operator to.
	keys := filepath.Join("intermediate", "keys")
	if err := os.MkdirAll(filepath.Join(b.Dir, keys), 0o700); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(a.cfg.Dir, keys))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".key") {
			copyFile(t, filepath.Join(a.cfg.Dir, keys, e.Name()), filepath.Join(b.Dir, keys, e.Name()))
		}
	}
	replica, err := ca.Open(ctx, b, a.store)
	if err != nil {
		t.Fatal(err)
	}
	if got := replica.PreparedIntermediate(); got == nil || !got.Equal(prepared) {
		t.Fatal("the replica does not see the prepared intermediate")
	}
	is, err := replica.Sign(ctx, ca.NodeRequest("ct9"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := is.Cert.CheckSignatureFrom(replica.ActiveIntermediate()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{b.BundlePath(), b.ChainPath(), filepath.Join(b.Dir, "intermediate", "state.json")} {
		want, _ := os.ReadFile(filepath.Join(a.cfg.Dir, strings.TrimPrefix(p, b.Dir)))
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from the first CA directory's: %v", p, err)
		}
	}

	// Another CA's directory: its root is not the store's.
	other := newCA(t, caOptions{})
	c := other.cfg
	c.Dir = filepath.Join(t.TempDir(), "other")
	if err := os.MkdirAll(filepath.Join(c.Dir, "intermediate"), 0o700); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(other.cfg.Dir, "intermediate", "root.crt"), filepath.Join(c.Dir, "intermediate", "root.crt"))
	before := snapshotFiles(t, c.Dir)
	_, err = ca.Materialise(ctx, c, a.store)
	if !errors.Is(err, ca.ErrRootMismatch) || !strings.Contains(err.Error(), fingerprint(readCert(t, other.rootPath()))) || !strings.Contains(err.Error(), fingerprint(newRoot)) {
		t.Fatalf("Materialise over another CA's root = %v; want ErrRootMismatch naming both fingerprints", err)
	}
	requireSameFiles(t, before, snapshotFiles(t, c.Dir))

	// A directory still holding the root a rollover replaced: the error
	// says so.
	d := a.cfg
	d.Dir = filepath.Join(t.TempDir(), "stale")
	if err := os.MkdirAll(filepath.Join(d.Dir, "intermediate"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "intermediate", "root.crt"), pemfile.EncodeCerts(oldRoot), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Materialise(ctx, d, a.store); !errors.Is(err, ca.ErrRootMismatch) || !strings.Contains(err.Error(), "rolled over") {
		t.Fatalf("Materialise over the replaced root = %v; want ErrRootMismatch saying the root was rolled over", err)
	}
}

// TestMaterialiseOlderState: a store whose CA state was written before
// roots were recorded gets the CA directory's root on the next open; until
// then an empty directory is refused with what to do. A store without a
// state has no CA to open.
func TestMaterialiseOlderState(t *testing.T) {
	a := newCA(t, caOptions{})
	ctx := t.Context()
	empty := a.cfg
	empty.Dir = filepath.Join(t.TempDir(), "replica")
	s, err := a.store.CAState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Roots = nil
	e := store.AuditEntry{Time: a.clock.Now(), Action: "test.forget-roots", Outcome: store.OutcomeOK}
	if _, err := a.store.PutCAState(ctx, s, s.Version, store.Event{Kind: store.EventCARotated}, e); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Materialise(ctx, empty, a.store); !errors.Is(err, ca.ErrNotInitialized) || !strings.Contains(err.Error(), "meshctl ca crl") {
		t.Fatalf("Materialise from a state without roots = %v; want ErrNotInitialized saying what to do", err)
	}
	if ok, err := ca.Materialise(ctx, a.cfg, a.store); err != nil || !ok {
		t.Fatalf("Materialise of the CA's own directory = %v, %v", ok, err)
	}
	a.open(t)
	s, err = a.store.CAState(ctx)
	if err != nil || len(s.Roots) != 1 || !bytes.Equal(s.Roots[0], readCert(t, a.rootPath()).Raw) {
		t.Fatalf("the store's roots after an open: %d, %v; want the CA directory's root", len(s.Roots), err)
	}
	a.requireLastAudit(t, "ca.state.roots", store.OutcomeOK, "recorded 1 root")
	if ok, err := ca.Materialise(ctx, empty, a.store); err != nil || !ok {
		t.Fatalf("Materialise after the roots were recorded = %v, %v", ok, err)
	}

	bare := newBare(t, caOptions{})
	if ok, err := ca.Materialise(ctx, bare.cfg, bare.store); err != nil || ok {
		t.Fatalf("Materialise without a CA = %v, %v; want no CA", ok, err)
	}
}

// fingerprint is cert's SHA-256 fingerprint as openssl prints it
// (AB:CD:…), which is how an operator compares the two roots named.
func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}
