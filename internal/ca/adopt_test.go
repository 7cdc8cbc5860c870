package ca_test

import (
	"bytes"
	"encoding/hex"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// secretIntermediate returns an intermediate of f's root made outside the
// CA, as cert-manager's CA issuer would, with its key written as
// <dir>/tls.key; it returns the key's base.
func secretIntermediate(t *testing.T, f *fixture, name string) (*pkitest.CA, string) {
	t.Helper()
	rootCert, err := pemfile.ReadCert(f.rootPath())
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := pemfile.ReadKey(f.rootKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	root := &pkitest.CA{Cert: rootCert, Key: rootKey, Root: rootCert}
	in := root.Intermediate(t, name)
	base := filepath.Join(t.TempDir(), "tls")
	if err := pemfile.WriteKey(base+".key", in.Key); err != nil {
		t.Fatal(err)
	}
	return in, base
}

// TestAdoptIntermediate makes an intermediate from a Secret the active
// one: replicas adopting it at once all succeed with one write, the CA
// signs with it, adopting the next retires it, and what is not this
// root's intermediate, or not with its key, changes nothing.
func TestAdoptIntermediate(t *testing.T) {
	f := newBare(t, caOptions{})
	ctx := t.Context()
	if _, err := ca.Init(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	f.cfg.TrustDomain = "mesh"
	root, err := pemfile.ReadCert(f.rootPath())
	if err != nil {
		t.Fatal(err)
	}
	first, base := secretIntermediate(t, f, "from a secret")

	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = ca.AdoptIntermediate(ctx, f.cfg, f.store, root, first.Cert, base)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("AdoptIntermediate %d: %v", i, err)
		}
	}
	s, err := f.store.CAState(ctx)
	if err != nil || s.Version != 1 || len(s.Intermediates) != 1 || s.Intermediates[0].Slot != store.SlotActive {
		t.Fatalf("state after concurrent adoptions = %+v, %v; want one write", s, err)
	}
	f.open(t)
	leaf := f.sign(t, ca.NodeRequest("ct1"))
	if err := leaf.Cert.CheckSignatureFrom(first.Cert); err != nil {
		t.Fatalf("leaf not signed by the adopted intermediate: %v", err)
	}

	second, base2 := secretIntermediate(t, f, "the next secret")
	if _, err := ca.AdoptIntermediate(ctx, f.cfg, f.store, root, second.Cert, base2); err != nil {
		t.Fatal(err)
	}
	ints, err := ca.Intermediates(ctx, f.cfg, f.store)
	if err != nil || len(ints) != 2 {
		t.Fatalf("Intermediates = %v, %v", ints, err)
	}
	slots := map[string]string{}
	for _, in := range ints {
		slots[in.KeyID] = in.Slot
	}
	if slots[hex.EncodeToString(second.Cert.SubjectKeyId)] != ca.SlotActive || slots[hex.EncodeToString(first.Cert.SubjectKeyId)] != ca.SlotRetired {
		t.Fatalf("slots after the second adoption: %v", slots)
	}

	other := pkitest.NewRoot(t, "another root")
	foreign := other.Intermediate(t, "foreign")
	foreignBase := filepath.Join(t.TempDir(), "tls")
	if err := pemfile.WriteKey(foreignBase+".key", foreign.Key); err != nil {
		t.Fatal(err)
	}
	third, _ := secretIntermediate(t, f, "key elsewhere")
	for _, tc := range []struct {
		name       string
		root, cert *pkitest.CA
		base, want string
	}{
		{"another root's intermediate", &pkitest.CA{Cert: root}, foreign, foreignBase, "not signed by the root"},
		{"another root", other, foreign, foreignBase, "not this CA's root"},
		{"the key of another intermediate", &pkitest.CA{Cert: root}, third, base, "is not the key"},
		{"a leaf", &pkitest.CA{Cert: root}, &pkitest.CA{Cert: leaf.Cert}, base, "not a CA certificate"},
	} {
		files := snapshotFiles(t, f.cfg.Dir)
		before, _ := f.store.CAState(ctx)
		_, err := ca.AdoptIntermediate(ctx, f.cfg, f.store, tc.root.Cert, tc.cert.Cert, tc.base)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tc.name, err, tc.want)
		}
		after, _ := f.store.CAState(ctx)
		if after.Version != before.Version {
			t.Errorf("%s changed the state", tc.name)
		}
		requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.ca.ActiveIntermediate().Raw, second.Cert.Raw) {
		t.Fatal("the CA does not sign with the last adopted intermediate")
	}
}
