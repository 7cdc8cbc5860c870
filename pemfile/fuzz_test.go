package pemfile_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"testing"

	"github.com/meshtrust/meshtrust/pemfile"
)

// FuzzParseKey feeds key files of any shape to ParseKey: nothing may
// panic, and a key it accepts survives MarshalKey and ParseKey again.
func FuzzParseKey(f *testing.F) {
	key := newP256()
	f.Add(must(pemfile.MarshalKey(key)))
	f.Add(pemBlock("EC PRIVATE KEY", must(x509.MarshalECPrivateKey(key))))
	f.Add(pemBlock("RSA PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00}))
	f.Add(pemfile.EncodeCerts(newCert("c")))
	f.Add([]byte("not a key"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := pemfile.ParseKey(data)
		if err != nil {
			return
		}
		again, err := pemfile.MarshalKey(k)
		if err != nil {
			t.Fatalf("a parsed %T does not marshal: %v", k, err)
		}
		k2, err := pemfile.ParseKey(again)
		if err != nil {
			t.Fatalf("MarshalKey wrote a key ParseKey refuses: %v", err)
		}
		if !k2.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Fatal("the key changed across MarshalKey and ParseKey")
		}
	})
}

// FuzzParseCerts feeds certificate files and /bundle answers of any shape
// to ParseCerts: nothing may panic, it never returns an empty list
// without an error, and what it returns survives EncodeCerts unchanged.
func FuzzParseCerts(f *testing.F) {
	a, b := newCert("a"), newCert("b")
	f.Add(pemfile.EncodeCerts(a, b))
	f.Add(append([]byte("text\n"), pemfile.EncodeCerts(a)...))
	f.Add(must(pemfile.MarshalKey(newP256())))
	f.Add(pemBlock("CERTIFICATE", []byte{0x30, 0x00}))
	f.Add([]byte("not PEM"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := pemfile.ParseCerts(data)
		if err != nil {
			return
		}
		if len(certs) == 0 {
			t.Fatal("ParseCerts returned no certificate and no error")
		}
		again, err := pemfile.ParseCerts(pemfile.EncodeCerts(certs...))
		if err != nil || len(again) != len(certs) {
			t.Fatalf("EncodeCerts output parses to %d certificates (%v), want %d", len(again), err, len(certs))
		}
		for i := range certs {
			if !bytes.Equal(again[i].Raw, certs[i].Raw) {
				t.Fatalf("certificate %d changed across EncodeCerts", i)
			}
		}
	})
}
