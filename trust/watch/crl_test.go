package watch

import (
	"crypto/x509"
	"testing"
)

// FuzzParseCRLs feeds GET /crl answers of any shape through parsing and
// verification: nothing may panic, and nothing unverifiable may pass.
func FuzzParseCRLs(f *testing.F) {
	f.Add([]byte("-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Add([]byte("not a crl"))
	f.Fuzz(func(t *testing.T, data []byte) {
		crls, err := parseCRLs(data)
		if err != nil {
			return
		}
		for _, crl := range crls {
			if verifyCRL(crl, []*x509.Certificate{}) == nil {
				t.Fatal("a CRL verified with no issuer")
			}
		}
	})
}
