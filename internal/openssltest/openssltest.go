// Package openssltest runs the openssl binary as a second judge in tests:
// what meshtrust's CA signs (certificates, chains, CRLs) is checked by
// openssl as well as by Go.
//
// Without openssl a test is skipped on a developer's machine but fails in
// CI (CI=true), where a skipped judge would turn the suite green without
// checking anything; scripts/install-test-deps.sh installs it.
package openssltest

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Bin returns the path of the openssl binary, skipping tb without it
// (failing it in CI).
func Bin(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			tb.Fatalf("openssl is required in CI (scripts/install-test-deps.sh installs it): %v", err)
		}
		tb.Skipf("openssl not installed: %v", err)
	}
	return p
}

// Run runs openssl with args and returns its combined output and exit
// error.
func Run(tb testing.TB, args ...string) (string, error) {
	tb.Helper()
	out, err := exec.Command(Bin(tb), args...).CombinedOutput()
	return string(out), err
}

// Must runs openssl with args and fails tb unless it exits 0.
func Must(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := Run(tb, args...)
	if err != nil {
		tb.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Verify runs `openssl verify -CAfile root -untrusted <each> extra... leaf`
// (extra such as -crl_check -CRLfile crl.pem) and returns its output.
func Verify(tb testing.TB, root string, untrusted []string, leaf string, extra ...string) (string, error) {
	tb.Helper()
	args := []string{"verify", "-CAfile", root}
	for _, u := range untrusted {
		args = append(args, "-untrusted", u)
	}
	args = append(append(args, extra...), leaf)
	return Run(tb, args...)
}

// RequireVerifies fails tb unless openssl accepts leaf's chain to root.
func RequireVerifies(tb testing.TB, root string, untrusted []string, leaf string, extra ...string) {
	tb.Helper()
	out, err := Verify(tb, root, untrusted, leaf, extra...)
	if err != nil || !strings.Contains(out, leaf+": OK") {
		tb.Fatalf("openssl verify %s %s: %v\n%s", strings.Join(extra, " "), leaf, err, out)
	}
}

// RequireRevoked fails tb unless openssl, checking the CRL file crl,
// refuses leaf as revoked.
func RequireRevoked(tb testing.TB, root string, untrusted []string, leaf, crl string, extra ...string) {
	tb.Helper()
	out, err := Verify(tb, root, untrusted, leaf, append([]string{"-crl_check", "-CRLfile", crl}, extra...)...)
	if err == nil {
		tb.Fatalf("openssl verify -crl_check accepted revoked %s:\n%s", leaf, out)
	}
	if !strings.Contains(out, "certificate revoked") {
		tb.Fatalf("openssl verify -crl_check refused %s, but not as revoked:\n%s", leaf, out)
	}
}
