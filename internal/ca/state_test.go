package ca_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestIntermediates lists the intermediates by slot through a rotation,
// newest first, and List says when each leaf is due to renew.
func TestIntermediates(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	first := hex.EncodeToString(f.activeIntermediate(t).SubjectKeyId)
	f.clock.Advance(time.Hour)
	prepared, err := ca.PrepareIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	second := hex.EncodeToString(prepared.SubjectKeyId)
	slots := func() []string {
		ints, err := ca.Intermediates(ctx, f.cfg, f.store)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, in := range ints {
			out = append(out, in.State+" "+in.KeyID)
		}
		return out
	}
	if got := slots(); len(got) != 2 || got[0] != "prepared "+second || got[1] != "active "+first {
		t.Fatalf("after prepare: %q", got)
	}
	if _, err := ca.ActivateIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	if got := slots(); len(got) != 2 || got[0] != "active "+second || got[1] != "retired "+first {
		t.Fatalf("after activate: %q", got)
	}

	leaf := f.sign(t, ca.NodeRequest("ct1"))
	all, err := f.ca.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range all {
		if l.Serial != leaf.Record.Serial {
			continue
		}
		lifetime := l.NotAfter.Sub(l.NotBefore)
		if l.RenewAt.Before(l.NotBefore.Add(lifetime/2)) || !l.RenewAt.Before(l.NotAfter) {
			t.Fatalf("a leaf of %s to %s renews at %s", l.NotBefore, l.NotAfter, l.RenewAt)
		}
		return
	}
	t.Fatal("List does not hold the leaf")
}

// TestStateImport opens a CA directory made before the state moved into
// the store (state.json, no state in the store): the first open imports
// it, once, however many processes open it at the same time.
func TestStateImport(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	f.clock.Advance(time.Hour)
	prepared, err := ca.PrepareIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	active := hex.EncodeToString(f.activeIntermediate(t).SubjectKeyId)
	// The CA directory of an older meshtrust: its state.json alone.
	legacy := `{"trust_domain": "mesh", "active": "` + active + `", "prepared": "` + hex.EncodeToString(prepared.SubjectKeyId) + `"}`
	if err := os.WriteFile(f.statePath(), []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "fresh.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = ca.Open(ctx, f.cfg, fresh)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
	}
	s, err := fresh.CAState(ctx)
	if err != nil || s.Version != 1 || s.TrustDomain != "mesh" || len(s.Intermediates) != 2 ||
		s.Intermediates[0].KeyID != active || s.Intermediates[0].Slot != store.SlotActive ||
		s.Intermediates[1].Slot != store.SlotPrepared || !bytes.Equal(s.Intermediates[1].CertDER, prepared.Raw) {
		t.Fatalf("imported state = %+v, %v", s, err)
	}
	log, err := fresh.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	imports := 0
	for _, e := range log {
		if e.Action == "ca.state.import" {
			imports++
		}
	}
	if imports != 1 {
		t.Fatalf("%d ca.state.import audit entries, want 1", imports)
	}
	// From now on the store decides: state.json is rewritten from it.
	data, err := os.ReadFile(f.statePath())
	if err != nil || !strings.Contains(string(data), `"store_version": 1`) {
		t.Fatalf("state.json after the import: %s, %v", data, err)
	}
}

// TestReplicaSeesRotation has two CA directories share one store: a
// rotation made through one is what the other signs with after Reload,
// once it has the new key; without the key it says which file to copy.
func TestReplicaSeesRotation(t *testing.T) {
	a := newCA(t, caOptions{})
	ctx := t.Context()
	b := a.cfg
	b.Dir = filepath.Join(t.TempDir(), "replica")
	copyTree(t, a.cfg.Dir, b.Dir)
	replica, err := ca.Open(ctx, b, a.store)
	if err != nil {
		t.Fatal(err)
	}
	a.clock.Advance(time.Hour)
	next, err := ca.PrepareIntermediate(ctx, a.cfg, a.store)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.ActivateIntermediate(ctx, a.cfg, a.store); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(next.SubjectKeyId)
	err = replica.Reload(ctx)
	if err == nil || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "copy") || !strings.Contains(err.Error(), "PKCS#11") {
		t.Fatalf("Reload without the new key: %v; want an error naming %s and what to do", err, id)
	}
	if got := replica.ActiveIntermediate(); bytes.Equal(got.Raw, next.Raw) {
		t.Fatal("a failed Reload changed the signing intermediate")
	}
	key := filepath.Join("intermediate", "keys", id+".key")
	copyFile(t, filepath.Join(a.cfg.Dir, key), filepath.Join(b.Dir, key))
	if err := replica.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := replica.ActiveIntermediate(); !bytes.Equal(got.Raw, next.Raw) {
		t.Fatalf("the replica signs with %s, want %s", got.Subject, next.Subject)
	}
	is, err := replica.Sign(ctx, ca.NodeRequest("ct9"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := is.Cert.CheckSignatureFrom(next); err != nil {
		t.Fatalf("the replica's leaf: %v", err)
	}
	for _, p := range []string{b.ChainPath(), b.BundlePath(), filepath.Join(b.Dir, "intermediate", "state.json")} {
		want, _ := os.ReadFile(filepath.Join(a.cfg.Dir, strings.TrimPrefix(p, b.Dir)))
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from the first CA directory's: %v", p, err)
		}
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		if strings.HasPrefix(d.Name(), "meshtrust.db") || d.Name() == ".lock" {
			return nil // the store is shared, not copied
		}
		copyFile(t, p, filepath.Join(to, rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// TestReloadWritesKeyRef: a key on a PKCS#11 token is found through its
// reference file, which the store's state carries; a replica whose CA
// directory lacks it gets it on Reload (0600), with the certificate.
func TestReloadWritesKeyRef(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	f.clock.Advance(time.Hour)
	prepared, err := ca.PrepareIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(prepared.SubjectKeyId)
	s, err := f.store.CAState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ref := []byte("pkcs11:token=mesh;object=" + id + "\n")
	for i := range s.Intermediates {
		if s.Intermediates[i].KeyID == id {
			s.Intermediates[i].KeyRef = ref
		}
	}
	if _, err := f.store.PutCAState(ctx, s, s.Version, store.Event{Kind: store.EventCARotated, IssuerKeyID: id}, store.AuditEntry{Action: "test"}); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(f.cfg.Dir, "intermediate", "keys")
	if err := os.Remove(filepath.Join(keys, id+".crt")); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(keys, id+".pkcs11"))
	if err != nil || !bytes.Equal(got, ref) {
		t.Fatalf("reference file after Reload: %q, %v", got, err)
	}
	if fi, err := os.Stat(filepath.Join(keys, id+".pkcs11")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("reference file mode: %v, %v", fi.Mode(), err)
	}
	if c, err := pemfile.ReadCert(filepath.Join(keys, id+".crt")); err != nil || !bytes.Equal(c.Raw, prepared.Raw) {
		t.Fatalf("certificate after Reload: %v", err)
	}
}

// TestReloadRefusesForeignIntermediate: an intermediate the store lists
// that this CA directory's root did not sign (a store written by another
// CA, or by an attacker) fails the reload, and none of its files is
// written.
func TestReloadRefusesForeignIntermediate(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	foreign := pkitest.NewRoot(t, "another root").Intermediate(t, "foreign")
	id := hex.EncodeToString(foreign.Cert.SubjectKeyId)
	s, err := f.store.CAState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Intermediates = append([]store.CAIntermediate{{KeyID: id, CertDER: foreign.Cert.Raw, Slot: store.SlotRetired, KeyRef: []byte("pkcs11:object=x\n")}}, s.Intermediates...)
	if _, err := f.store.PutCAState(ctx, s, s.Version, store.Event{Kind: store.EventCARotated, IssuerKeyID: id}, store.AuditEntry{Action: "test"}); err != nil {
		t.Fatal(err)
	}
	active := f.ca.ActiveIntermediate()
	if err := f.ca.Reload(ctx); err == nil || !strings.Contains(err.Error(), "not signed by the root") {
		t.Fatalf("Reload with a foreign intermediate in the store: %v", err)
	}
	for _, ext := range []string{".crt", ".pkcs11"} {
		if _, err := os.Stat(filepath.Join(f.cfg.Dir, "intermediate", "keys", id+ext)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("keys/%s%s written for a foreign intermediate (%v)", id, ext, err)
		}
	}
	if !bytes.Equal(f.ca.ActiveIntermediate().Raw, active.Raw) {
		t.Fatal("a failed reload changed the signer")
	}
}
