package trust

import (
	"crypto/x509"
	"strconv"
	"strings"
)

// NormalizeSerial returns a certificate serial in the one form meshtrust
// compares serials in: lowercase hex without leading zeros, colons or
// "0x" (the form a RevocationSet keys serials by, and the store's). It
// accepts what operators paste and what meshd sends: surrounding
// whitespace, colons ("00:9f:a1", openssl's), a "0x" prefix, either case.
// It reports false for anything else: no digits, a zero serial, a sign,
// any character that is not a hex digit, or more than 40 hex digits (RFC
// 5280's 20 octets).
func NormalizeSerial(s string) (string, bool) {
	s = strings.ToLower(strings.TrimPrefix(strings.ReplaceAll(strings.TrimSpace(s), ":", ""), "0x"))
	if s == "" || len(s) > 40 {
		return "", false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return "", false
		}
	}
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "", false
	}
	return s, true
}

// crlReasons are RFC 5280's CRLReason names (section 5.3.1) by code; 7 is
// not used.
var crlReasons = [...]string{
	0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged",
	4: "superseded", 5: "cessationOfOperation", 6: "certificateHold", 8: "removeFromCRL",
	9: "privilegeWithdrawn", 10: "aACompromise",
}

// CRLReasonName returns the RFC 5280 name of a CRLReason code
// ("keyCompromise" for 1), or "reason(N)" for a code RFC 5280 does not
// define.
func CRLReasonName(code int) string {
	if code >= 0 && code < len(crlReasons) && crlReasons[code] != "" {
		return crlReasons[code]
	}
	return "reason(" + strconv.Itoa(code) + ")"
}

// ParseCRLReason returns the code of an RFC 5280 CRLReason name, matched
// without regard to case.
func ParseCRLReason(name string) (int, bool) {
	for code, n := range crlReasons {
		if n != "" && strings.EqualFold(n, name) {
			return code, true
		}
	}
	return 0, false
}

// DisplayName names a certificate in a message, never in a check: its
// common name, or for a certificate without one (an X.509-SVID from
// SPIRE carries its identity only as a URI SAN) its first URI SAN, then
// its first DNS name, then its serial.
func DisplayName(c *x509.Certificate) string {
	switch {
	case c.Subject.CommonName != "":
		return c.Subject.CommonName
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	}
	return "serial " + c.SerialNumber.Text(16)
}
