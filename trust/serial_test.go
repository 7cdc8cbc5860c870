package trust_test

import (
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/trust"
)

// TestNormalizeSerial pins the one serial rule. It folds two that
// differed: the CA's (no surrounding whitespace) and the revocation
// watcher's (a sign accepted through math/big). The rule kept accepts
// every serial either accepted but for a "+" sign, which no certificate
// serial is written with.
func TestNormalizeSerial(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"9F": "9f", "abc": "abc", "00:9f:a1": "9fa1", "0a:bc": "abc", "0x0B": "b", "0x0A:BC": "abc",
		"00ff": "ff", " 1a ": "1a", "\t00:ff\n": "ff", strings.Repeat("f", 40): strings.Repeat("f", 40),
	} {
		if got, ok := trust.NormalizeSerial(in); !ok || got != want {
			t.Errorf("NormalizeSerial(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", " ", "0", "00", "0x", "0X1f", "xyz", "-1", "+1", "1 2", "../x", "a..b", "1_0", strings.Repeat("f", 41)} {
		if got, ok := trust.NormalizeSerial(in); ok {
			t.Errorf("NormalizeSerial(%q) = %q, want refusal", in, got)
		}
	}
}

func FuzzNormalizeSerial(f *testing.F) {
	for _, s := range []string{"abc", "0x0A:BC", "00", "", "../x", " 1a ", "+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := trust.NormalizeSerial(s)
		if !ok {
			return
		}
		if got == "" || got[0] == '0' || strings.ToLower(got) != got || len(got) > 40 {
			t.Fatalf("NormalizeSerial(%q) = %q, not canonical", s, got)
		}
		if again, ok := trust.NormalizeSerial(got); !ok || again != got {
			t.Fatalf("NormalizeSerial is not idempotent on %q: %q", got, again)
		}
	})
}

func TestCRLReasons(t *testing.T) {
	t.Parallel()
	for code, name := range map[int]string{0: "unspecified", 1: "keyCompromise", 6: "certificateHold", 8: "removeFromCRL", 10: "aACompromise"} {
		if got := trust.CRLReasonName(code); got != name {
			t.Errorf("CRLReasonName(%d) = %q, want %q", code, got, name)
		}
		if got, ok := trust.ParseCRLReason(strings.ToUpper(name)); !ok || got != code {
			t.Errorf("ParseCRLReason(%q) = %d, %v; want %d", strings.ToUpper(name), got, ok, code)
		}
	}
	for _, code := range []int{-1, 7, 11} {
		if got, want := trust.CRLReasonName(code), "reason("; !strings.HasPrefix(got, want) {
			t.Errorf("CRLReasonName(%d) = %q, want reason(N)", code, got)
		}
	}
	if _, ok := trust.ParseCRLReason(""); ok {
		t.Errorf("ParseCRLReason accepted the empty name")
	}
}
