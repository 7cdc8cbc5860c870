package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPKCS11Resolve: the PIN comes from a private file or the variable,
// never both; a loose PIN file, an empty one and a bad slot are refused
// with what to do; nothing set is no token.
func TestPKCS11Resolve(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, loose, empty := write("pin", "1234\n", 0o600), write("loose", "1234\n", 0o644), write("empty", "\n", 0o600)
	env := func(pin string) func(string) string {
		return func(k string) string {
			if k == EnvPKCS11PIN {
				return pin
			}
			return ""
		}
	}
	mod := "/usr/lib/softhsm/libsofthsm2.so"
	for _, tc := range []struct {
		name    string
		p       PKCS11
		envPIN  string
		wantPIN string
		wantErr string
	}{
		{"nothing", PKCS11{}, "", "", ""},
		{"PIN file", PKCS11{Module: mod, Token: "t", PINFile: good}, "", "1234", ""},
		{"PIN variable", PKCS11{Module: mod, Token: "t"}, "9876", "9876", ""},
		{"both", PKCS11{Module: mod, Token: "t", PINFile: good}, "9876", "", "keep one"},
		{"loose file", PKCS11{Module: mod, Token: "t", PINFile: loose}, "", "", "chmod 600"},
		{"empty file", PKCS11{Module: mod, Token: "t", PINFile: empty}, "", "", "is empty"},
		{"missing file", PKCS11{Module: mod, Token: "t", PINFile: filepath.Join(dir, "none")}, "", "", "no such file"},
		{"bad slot", PKCS11{Module: mod, Slot: "x", PINFile: good}, "", "", "want a slot number"},
		{"PIN without a token", PKCS11{}, "9876", "", "no PKCS#11 token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.p.Resolve(env(tc.envPIN))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve = %v; want an error saying %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "1234") || strings.Contains(err.Error(), "9876") {
					t.Fatalf("the error shows the PIN: %v", err)
				}
				return
			}
			if err != nil || got.PIN != tc.wantPIN {
				t.Fatalf("Resolve = %+v, %v; want PIN %q", got, err, tc.wantPIN)
			}
		})
	}
	slot, err := PKCS11{Module: mod, Slot: "3", PINFile: good}.Resolve(env(""))
	if err != nil || slot.Slot == nil || *slot.Slot != 3 || slot.Token != "" {
		t.Fatalf("--pkcs11-slot 3: %+v, %v", slot, err)
	}
}
