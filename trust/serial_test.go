package trust_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
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

// TestDisplayName: a certificate is named by its CN, else (an X.509-SVID)
// its SPIFFE ID, else its DNS name, else its serial; never "".
func TestDisplayName(t *testing.T) {
	id, _ := url.Parse("spiffe://mcp-mesh.local/agent/carol")
	for _, tt := range []struct {
		cert *x509.Certificate
		want string
	}{
		{&x509.Certificate{Subject: pkix.Name{CommonName: "opus@ct111"}, URIs: []*url.URL{id}}, "opus@ct111"},
		{&x509.Certificate{URIs: []*url.URL{id}, DNSNames: []string{"carol.local"}}, "spiffe://mcp-mesh.local/agent/carol"},
		{&x509.Certificate{DNSNames: []string{"carol.local"}}, "carol.local"},
		{&x509.Certificate{SerialNumber: big.NewInt(0x1f)}, "serial 1f"},
	} {
		if got := trust.DisplayName(tt.cert); got != tt.want {
			t.Errorf("DisplayName = %q, want %q", got, tt.want)
		}
	}
}
