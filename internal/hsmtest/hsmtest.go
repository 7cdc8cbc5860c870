// Package hsmtest gives a test a fresh PKCS#11 token of its own: a SoftHSM2
// token in a token directory under t.TempDir(), initialised with
// softhsm2-util and selected by SOFTHSM2_CONF for the test's duration (so
// tests that use it cannot run in parallel, and neither can the module be
// shared between them: each test must close what it opened on the token,
// which New registers).
//
// Without SoftHSM2 (Debian's softhsm2) a test skips, unless
// MESHTRUST_REQUIRE_SOFTHSM is set (as CI sets it): then it fails;
// scripts/install-test-deps.sh installs it.
package hsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireEnv makes a missing SoftHSM2 a test failure instead of a skip.
const RequireEnv = "MESHTRUST_REQUIRE_SOFTHSM"

// Module is where Debian's softhsm2 installs its PKCS#11 module.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// Token is an initialised SoftHSM2 token.
type Token struct {
	// Module is the path of the PKCS#11 module.
	Module string
	// Label, PIN and SOPIN are the token's label, user PIN and security
	// officer PIN.
	Label, PIN, SOPIN string
	// Conf is the SoftHSM2 configuration file SOFTHSM2_CONF names, and
	// Dir its token directory.
	Conf, Dir string
}

// New initialises a fresh token labelled label in a new token directory and
// points SOFTHSM2_CONF at it until the test ends. closeTokens is run at the
// end of the test, before the directory is removed: it must close every
// session the test's process opened on the module (ca.CloseTokens), so
// the next test's module reads its own SOFTHSM2_CONF.
func New(t testing.TB, label string, closeTokens func()) *Token {
	t.Helper()
	util := Util(t)
	dir := t.TempDir()
	tok := &Token{Module: Module, Label: label, PIN: randomPIN(t), SOPIN: randomPIN(t), Conf: filepath.Join(dir, "softhsm2.conf"), Dir: filepath.Join(dir, "tokens")}
	if err := os.Mkdir(tok.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tok.Dir)
	if err := os.WriteFile(tok.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	if closeTokens != nil {
		t.Cleanup(closeTokens)
	}
	tok.InitToken(t, util, label)
	return tok
}

// InitToken initialises one more token labelled label in tok's directory,
// with tok's PINs.
func (tok *Token) InitToken(t testing.TB, util, label string) {
	t.Helper()
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", tok.PIN, "--so-pin", tok.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token --label %s: %v\n%s", label, err, out)
	}
}

// PINFile writes the user PIN to a new file of mode 0600 and returns its
// path.
func (tok *Token) PINFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// WrongPINFile writes a PIN that is not tok's to a new file of mode 0600
// and returns its path.
func (tok *Token) WrongPINFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wrong-pin")
	if err := os.WriteFile(p, []byte("00000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Flags returns the flags that point meshctl's and meshd's CA commands at
// tok, its PIN read from pinFile.
func (tok *Token) Flags(pinFile string) []string {
	return []string{"--pkcs11-module", tok.Module, "--pkcs11-token", tok.Label, "--pkcs11-pin-file", pinFile}
}

// Misconfig is flags that point a binary at tok wrongly, and what its
// error must say.
type Misconfig struct {
	Name  string
	Flags []string
	Want  string
}

// Misconfigs returns the set-ups both meshctl and meshd must refuse with a
// message naming what is wrong: a wrong PIN, and a token label the module
// does not hold (with the right PIN in pinFile).
func (tok *Token) Misconfigs(t testing.TB, pinFile string) []Misconfig {
	t.Helper()
	return []Misconfig{
		{"wrong PIN", tok.Flags(tok.WrongPINFile(t)), "wrong PIN"},
		{"no such token", []string{"--pkcs11-module", tok.Module, "--pkcs11-token", "gone", "--pkcs11-pin-file", pinFile}, `"gone" is not in PKCS#11 module`},
	}
}

// Util returns the path of softhsm2-util, skipping t when SoftHSM2 is not
// installed (failing it when RequireEnv is set).
func Util(t testing.TB) string {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if err == nil {
		_, err = os.Stat(Module)
	}
	if err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("SoftHSM2 is missing (%v) and %s is set: run scripts/install-test-deps.sh (Debian package softhsm2)", err, RequireEnv)
		}
		t.Skipf("SoftHSM2 is missing (%v): run scripts/install-test-deps.sh (Debian package softhsm2) to run the PKCS#11 tests", err)
	}
	return util
}

func randomPIN(t testing.TB) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
