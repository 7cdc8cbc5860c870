// Package pkitest mints throwaway CAs and certificates for the tests of
// package trust and its backends. Every certificate is real: built with
// crypto/x509, signed by its issuer's key and parsed back.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// A Modifier changes a certificate template before it is signed, so that a
// test states only what is special about its certificate.
type Modifier func(*x509.Certificate)

// Validity sets the certificate's validity window.
func Validity(notBefore, notAfter time.Time) Modifier {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// ExtKeyUsage sets the certificate's extended key usages; none means the
// extension is left out.
func ExtKeyUsage(usages ...x509.ExtKeyUsage) Modifier {
	return func(c *x509.Certificate) { c.ExtKeyUsage = usages }
}

// URI adds a URI SAN, such as a SPIFFE ID.
func URI(raw string) Modifier {
	return func(c *x509.Certificate) {
		u, err := url.Parse(raw)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
}

// Subject sets the organization and organizational unit of the subject.
func Subject(org, unit string) Modifier {
	return func(c *x509.Certificate) {
		c.Subject.Organization = []string{org}
		c.Subject.OrganizationalUnit = []string{unit}
	}
}

// CA is a certificate authority a test can issue from.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewRoot returns a self-signed root CA named cn, valid from 30 days ago
// for a year unless a modifier says otherwise.
func NewRoot(tb testing.TB, cn string, mods ...Modifier) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := caTemplate(cn)
	for _, m := range mods {
		m(tmpl)
	}
	cert := sign(tb, tmpl, tmpl, key.Public(), key)
	return &CA{Cert: cert, Key: key}
}

// Intermediate returns a CA named cn that ca signed, valid as long as a
// root unless a modifier says otherwise.
func (ca *CA) Intermediate(tb testing.TB, cn string, mods ...Modifier) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := caTemplate(cn)
	tmpl.MaxPathLenZero = true
	for _, m := range mods {
		m(tmpl)
	}
	return &CA{Cert: sign(tb, tmpl, ca.Cert, key.Public(), ca.Key), Key: key}
}

// Leaf returns a client certificate named cn that ca signed: clientAuth
// usage, valid from an hour ago for a day unless a modifier says otherwise.
func (ca *CA) Leaf(tb testing.TB, cn string, mods ...Modifier) *x509.Certificate {
	tb.Helper()
	key := newKey(tb)
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, m := range mods {
		m(tmpl)
	}
	return sign(tb, tmpl, ca.Cert, key.Public(), ca.Key)
}

// PEM returns the CA's certificate in PEM form.
func (ca *CA) PEM() []byte { return CertPEM(ca.Cert) }

// CertPEM returns c in PEM form.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func caTemplate(cn string) *x509.Certificate {
	now := time.Now().Truncate(time.Second)
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-30 * 24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

func sign(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	tb.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = serial(tb)
	}
	if tmpl.SubjectKeyId == nil {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		sum := sha1.Sum(der)
		tmpl.SubjectKeyId = sum[:]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		tb.Fatalf("pkitest: sign %q: %v", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

func newKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}
