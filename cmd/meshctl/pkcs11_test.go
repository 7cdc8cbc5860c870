//go:build cgo

package main

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/hsmtest"
)

// TestPKCS11Errors runs the built meshctl's CA commands against a real
// SoftHSM2 token set up wrong: a wrong PIN, a missing token, a missing
// module, no PIN. Each exits non-zero with a message that names what is
// wrong, never prints the PIN, and leaves the data directory as it was:
// no root, no CA directory, no store, no key reference.
func TestPKCS11Errors(t *testing.T) {
	tok := hsmtest.New(t, "meshtrust", ca.CloseTokens)
	bin := filepath.Join(t.TempDir(), "meshctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/meshctl: %v\n%s", err, out)
	}
	pinFile := tok.PINFile(t)
	for _, tc := range append(tok.Misconfigs(t, pinFile),
		hsmtest.Misconfig{Name: "missing module", Flags: []string{"--pkcs11-module", filepath.Join(t.TempDir(), "libnone.so"), "--pkcs11-token", tok.Label, "--pkcs11-pin-file", pinFile}, Want: "libnone.so"},
		hsmtest.Misconfig{Name: "no PIN", Flags: []string{"--pkcs11-module", tok.Module, "--pkcs11-token", tok.Label}, Want: "no PIN"},
	) {
		for _, cmd := range [][]string{{"ca", "init"}, {"ca", "issue-intermediate"}} {
			t.Run(tc.Name+"/"+strings.Join(cmd, " "), func(t *testing.T) {
				data := filepath.Join(t.TempDir(), "data")
				if err := os.Mkdir(data, 0o700); err != nil {
					t.Fatal(err)
				}
				run := exec.Command(bin, slices.Concat([]string{"--data-dir", data}, cmd, tc.Flags)...)
				run.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "SOFTHSM2_CONF=" + tok.Conf}
				out, err := run.CombinedOutput()
				if _, exited := err.(*exec.ExitError); !exited || !strings.Contains(string(out), tc.Want) {
					t.Fatalf("meshctl %s with %s: %v\n%s\nwant a non-zero exit saying %q", strings.Join(cmd, " "), tc.Name, err, out, tc.Want)
				}
				if strings.Contains(string(out), tok.PIN) {
					t.Fatalf("meshctl printed the PIN:\n%s", out)
				}
				var written []string
				filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
					if err == nil && p != data {
						written = append(written, strings.TrimPrefix(p, data+"/"))
					}
					return err
				})
				if len(written) > 0 {
					t.Errorf("meshctl %s with %s wrote %v into the data directory; want nothing", strings.Join(cmd, " "), tc.Name, written)
				}
			})
		}
	}
}
