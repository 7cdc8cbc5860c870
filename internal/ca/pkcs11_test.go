//go:build cgo

package ca_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/hsmtest"
	"github.com/meshtrust/meshtrust/internal/openssltest"
)

// hsmCA is a CA whose root and intermediate keys were generated on a fresh
// SoftHSM2 token.
func hsmCA(t *testing.T, kt ca.KeyType) (*fixture, *hsmtest.Token) {
	t.Helper()
	tok := hsmtest.New(t, "meshtrust-ca", ca.CloseTokens)
	f := newCA(t, caOptions{rootKey: kt, intKey: kt, mod: func(c *ca.Config) {
		c.PKCS11 = ca.PKCS11{Module: tok.Module, Token: tok.Label, PIN: tok.PIN}
	}})
	return f, tok
}

// requireNoCAKeyFiles fails t if a private key file of the CA's own
// (ca.key, int.key, keys/<id>.key) exists anywhere in the root or CA
// directory, and if a reference file holds the PIN.
func requireNoCAKeyFiles(t *testing.T, f *fixture, pin string) {
	t.Helper()
	refs := 0
	for _, dir := range []string{f.cfg.RootDir, filepath.Join(f.cfg.Dir, "intermediate")} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			switch filepath.Ext(p) {
			case ".key":
				t.Errorf("a CA key file exists: %s", p)
			case ".pkcs11":
				refs++
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %04o, want 0600", p, fi.Mode().Perm())
				}
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				if strings.Contains(string(data), pin) {
					t.Errorf("%s holds the PIN:\n%s", p, data)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if refs < 3 { // ca, keys/<id>, int
		t.Errorf("%d key references in the CA's directories, want at least 3", refs)
	}
}

// TestPKCS11CALifecycle runs every CA operation that signs with the root
// and the intermediates on a SoftHSM2 token: init, issuance, node and
// agent certificates, revocation and the CRL, audit checkpoints, a
// rotation (prepare, activate) and a reopen; openssl verifies the chain
// and the CRL, and no CA key file is written anywhere.
func TestPKCS11CALifecycle(t *testing.T) {
	openssltest.Bin(t)
	f, tok := hsmCA(t, ca.KeyECDSAP256)
	ctx := t.Context()
	root, inter, crl := f.rootPath(), f.intPath(), f.cfg.CRLPath()

	node := f.sign(t, ca.NodeRequest("ct1", "IP:10.0.0.1"))
	agent := f.sign(t, ca.AgentRequest("opus", "ct1"))
	nodePath, agentPath := leafFile(t, node), leafFile(t, agent)
	openssltest.RequireVerifies(t, root, []string{inter}, nodePath, "-purpose", "sslserver")
	openssltest.RequireVerifies(t, root, []string{inter}, agentPath, "-crl_check", "-CRLfile", crl)
	_, n0 := opensslCRL(t, crl, inter)

	if _, err := f.ca.Revoke(ctx, "opus@ct1", 1); err != nil {
		t.Fatal(err)
	}
	openssltest.RequireRevoked(t, root, []string{inter}, agentPath, crl)
	if _, n := opensslCRL(t, crl, inter); n != n0+1 {
		t.Fatalf("CRL number %d after a revocation, want %d", n, n0+1)
	}
	if wrote, err := f.ca.Checkpoint(ctx); err != nil || !wrote {
		t.Fatalf("Checkpoint = %v, %v; want a checkpoint signed on the token", wrote, err)
	}
	if rep, err := ca.VerifyLog(ctx, f.cfg, f.store, "", nil); err != nil || rep.Checkpoints == 0 {
		t.Fatalf("VerifyLog = %+v, %v; want the token-signed checkpoints verified", rep, err)
	}

	// Rotation: the prepared key is generated on the token and signed by
	// the root key there; after activation it signs.
	old := f.activeIntermediate(t)
	prepared, err := ca.PrepareIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatalf("PrepareIntermediate: %v", err)
	}
	if _, err := ca.ActivateIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatalf("ActivateIntermediate: %v", err)
	}
	f.open(t)
	if cur := f.activeIntermediate(t); !cur.Equal(prepared) || cur.Equal(old) {
		t.Fatal("the prepared intermediate is not the active one after activation")
	}
	after := f.sign(t, ca.AgentRequest("haiku", "ct1"))
	if err := after.Cert.CheckSignatureFrom(prepared); err != nil {
		t.Fatalf("a certificate issued after activation is not signed by the new intermediate: %v", err)
	}
	openssltest.RequireVerifies(t, root, []string{inter}, leafFile(t, after), "-crl_check", "-CRLfile", splitCRLs(t, crl)[0])
	if _, err := f.ca.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	requireNoCAKeyFiles(t, f, tok.PIN)
	for _, base := range []string{filepath.Join(f.cfg.RootDir, "ca"), filepath.Join(f.cfg.Dir, "intermediate", "int")} {
		extractable, sensitive, refused, err := ca.TokenKeyAttributes(f.cfg, base)
		if err != nil {
			t.Fatal(err)
		}
		if extractable || !sensitive || !refused {
			t.Errorf("%s: CKA_EXTRACTABLE %v, CKA_SENSITIVE %v, value read refused %v; want a key that never leaves the token", base, extractable, sensitive, refused)
		}
	}
}

// TestPKCS11StartupErrors: every way the token can be unusable stops
// ca.Open (meshd's and meshctl's start) with ErrToken and a message that
// says what is wrong; none falls back to key files or writes one.
func TestPKCS11StartupErrors(t *testing.T) {
	notALibrary := filepath.Join(t.TempDir(), "libnot.so")
	if err := os.WriteFile(notALibrary, []byte("not a library"), 0o600); err != nil {
		t.Fatal(err)
	}
	slot := 12345
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, f *fixture, tok *hsmtest.Token, p *ca.PKCS11)
		want  string
	}{
		{"wrong PIN", func(_ *testing.T, _ *fixture, _ *hsmtest.Token, p *ca.PKCS11) { p.PIN = "0000" }, "wrong PIN"},
		{"no such token", func(_ *testing.T, _ *fixture, _ *hsmtest.Token, p *ca.PKCS11) { p.Token = "other" }, `"other" is not in PKCS#11 module`},
		{"no such slot", func(_ *testing.T, _ *fixture, _ *hsmtest.Token, p *ca.PKCS11) { p.Token, p.Slot = "", &slot }, "the token in slot 12345 is not in"},
		{"module missing", func(_ *testing.T, _ *fixture, _ *hsmtest.Token, p *ca.PKCS11) { p.Module = "/nonexistent/libpkcs11.so" }, "no such file"},
		{"module not a library", func(_ *testing.T, _ *fixture, _ *hsmtest.Token, p *ca.PKCS11) { p.Module = notALibrary }, "could not be loaded"},
		{"no token configured", func(_ *testing.T, _ *fixture, _ *hsmtest.Token, p *ca.PKCS11) { *p = ca.PKCS11{} }, `is a key on PKCS#11 token "meshtrust-ca"`},
		{"token removed", func(t *testing.T, _ *fixture, tok *hsmtest.Token, _ *ca.PKCS11) {
			entries, err := os.ReadDir(tok.Dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if err := os.RemoveAll(filepath.Join(tok.Dir, e.Name())); err != nil {
					t.Fatal(err)
				}
			}
		}, `"meshtrust-ca" is not in PKCS#11 module`},
		{"token directory gone", func(t *testing.T, _ *fixture, tok *hsmtest.Token, _ *ca.PKCS11) {
			if err := os.RemoveAll(tok.Dir); err != nil {
				t.Fatal(err)
			}
		}, "failed to initialise"},
		{"key object deleted", func(t *testing.T, f *fixture, _ *hsmtest.Token, _ *ca.PKCS11) {
			s, err := ca.Intermediates(t.Context(), f.cfg, f.store)
			if err != nil {
				t.Fatal(err)
			}
			if err := ca.DeleteTokenKey(f.cfg, filepath.Join(f.cfg.Dir, "intermediate", "keys", s[0].KeyID)); err != nil {
				t.Fatal(err)
			}
		}, "the key object was deleted"},
		{"reference names another token", func(t *testing.T, _ *fixture, tok *hsmtest.Token, p *ca.PKCS11) {
			ca.CloseTokens() // the module reads the new token at its next start
			tok.InitToken(t, hsmtest.Util(t), "second")
			p.Token = "second"
		}, `the key is on token "meshtrust-ca"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, tok := hsmCA(t, ca.KeyECDSAP256)
			ca.CloseTokens() // as a new process: the token is opened afresh
			p := f.cfg.PKCS11
			tc.spoil(t, f, tok, &p)
			ca.CloseTokens()
			cfg := f.cfg
			cfg.PKCS11 = p
			_, err := ca.Open(t.Context(), cfg, f.store)
			if !errors.Is(err, ca.ErrToken) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v; want ErrToken saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tok.PIN) || (p.PIN != "" && strings.Contains(err.Error(), p.PIN)) {
				t.Fatalf("the error shows the PIN: %v", err)
			}
			// Nothing fell back to, or wrote, a key file.
			requireNoCAKeyFiles(t, f, tok.PIN)
			// Issuing an intermediate fails the same way, before it
			// creates anything.
			if _, err := ca.PrepareIntermediate(t.Context(), cfg, f.store); !errors.Is(err, ca.ErrToken) {
				t.Fatalf("PrepareIntermediate = %v; want ErrToken", err)
			}
		})
	}
}

// TestPKCS11Config: a half-configured token is refused with what is
// missing, and a key type the token cannot generate is refused before
// anything is written.
func TestPKCS11Config(t *testing.T) {
	tok := hsmtest.New(t, "meshtrust-ca", ca.CloseTokens)
	slot := 0
	for _, tc := range []struct {
		p    ca.PKCS11
		kt   ca.KeyType
		want string
	}{
		{ca.PKCS11{Token: "x", PIN: "1"}, "", "no PKCS#11 module"},
		{ca.PKCS11{Module: tok.Module, PIN: "1"}, "", "but no token"},
		{ca.PKCS11{Module: tok.Module, Token: "x", Slot: &slot, PIN: "1"}, "", "keep one"},
		{ca.PKCS11{Module: tok.Module, Token: tok.Label}, "", "no PIN"},
		{ca.PKCS11{Module: tok.Module, Token: tok.Label, PIN: tok.PIN}, ca.KeyEd25519, "cannot be generated on a PKCS#11 token"},
	} {
		f := newBare(t, caOptions{mod: func(c *ca.Config) { c.PKCS11, c.KeyType = tc.p, tc.kt }})
		_, err := ca.Init(t.Context(), f.cfg, f.store)
		if !errors.Is(err, ca.ErrToken) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Init with %+v = %v; want ErrToken saying %q", tc.p, err, tc.want)
		}
		if entries, _ := os.ReadDir(f.cfg.RootDir); len(entries) != 0 {
			t.Errorf("a refused Init left %d files in the root directory", len(entries))
		}
	}
}

// TestPKCS11SharedTokenStress opens one CA many times at once on a token
// no one has opened yet, and signs from every copy concurrently: the
// process opens the token once, and every signature verifies.
func TestPKCS11SharedTokenStress(t *testing.T) {
	f, _ := hsmCA(t, ca.KeyECDSAP256)
	ca.CloseTokens()
	inter := f.activeIntermediate(t)
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			c, err := ca.Open(context.Background(), f.cfg, f.store)
			if err != nil {
				errs <- err
				return
			}
			for i := range each {
				is, err := c.Sign(context.Background(), ca.AgentRequest(fmt.Sprintf("a%d-%d", w, i), "ct1"), ca.WithGeneratedKey())
				if err != nil {
					errs <- err
					continue
				}
				if err := is.Cert.CheckSignatureFrom(inter); err != nil {
					errs <- fmt.Errorf("worker %d cert %d: %w", w, i, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := ca.OpenTokens(); n != 1 {
		t.Fatalf("%d tokens open after concurrent first uses of one, want 1", n)
	}
}

// TestPKCS11NeverPrintsPIN: a configuration printed or logged whole names
// the token, never its PIN.
func TestPKCS11NeverPrintsPIN(t *testing.T) {
	p := ca.PKCS11{Module: "/usr/lib/softhsm/libsofthsm2.so", Token: "mesh", PIN: "s3cret-pin-4821"}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("ca", "pkcs11", p, "config", ca.Config{PKCS11: p})
	for _, out := range []string{fmt.Sprintf("%v %+v %#v", p, ca.Config{PKCS11: p}, p.String()), logged.String()} {
		if strings.Contains(out, p.PIN) {
			t.Fatalf("the PIN shows: %s", out)
		}
		if !strings.Contains(out, `"mesh"`) && !strings.Contains(out, `\"mesh\"`) {
			t.Fatalf("the token is not named: %s", out)
		}
	}
}
