// Package pkitest mints throwaway CAs and certificates for the tests of
// package trust and its backends. Every certificate is real: built with
// crypto/x509, signed by its issuer's key and parsed back.
package pkitest

import (
	"crypto"
	"crypto/dsa" //nolint:staticcheck // DSA keys are minted only to be refused.
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"io"
	"math/big"
	"net/url"
	"sync"
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

// EmptyExtKeyUsage gives the certificate an extended key usage extension
// that lists no purpose, which RFC 5280 forbids and crypto/x509 parses as if
// the extension were absent.
func EmptyExtKeyUsage() Modifier {
	return func(c *x509.Certificate) {
		c.ExtKeyUsage, c.UnknownExtKeyUsage = nil, nil
		c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: oidExtKeyUsage, Value: []byte{0x30, 0x00}})
	}
}

// Key issues the certificate for key instead of a new ECDSA P-256 key:
// a crypto.Signer, which a CA then signs with, or a bare public key, which
// nobody can sign with. DSAKey returns the one signer crypto/x509 cannot use.
func Key(key any) Modifier {
	// The template's PublicKey field carries the key until the
	// certificate is signed; crypto/x509 ignores it there.
	return func(c *x509.Certificate) { c.PublicKey = key }
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
	tmpl := caTemplate(cn)
	for _, m := range mods {
		m(tmpl)
	}
	pub, key := takeKey(tb, tmpl)
	cert := sign(tb, tmpl, tmpl, pub, key)
	return &CA{Cert: cert, Key: key}
}

// Intermediate returns a CA named cn that ca signed, valid as long as a
// root unless a modifier says otherwise.
func (ca *CA) Intermediate(tb testing.TB, cn string, mods ...Modifier) *CA {
	tb.Helper()
	tmpl := caTemplate(cn)
	tmpl.MaxPathLenZero = true
	for _, m := range mods {
		m(tmpl)
	}
	pub, key := takeKey(tb, tmpl)
	return &CA{Cert: sign(tb, tmpl, ca.Cert, pub, ca.Key), Key: key}
}

// Leaf returns a client certificate named cn that ca signed: clientAuth
// usage, valid from an hour ago for a day unless a modifier says otherwise.
func (ca *CA) Leaf(tb testing.TB, cn string, mods ...Modifier) *x509.Certificate {
	tb.Helper()
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
	pub, _ := takeKey(tb, tmpl)
	return sign(tb, tmpl, ca.Cert, pub, ca.Key)
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
	if key == nil {
		tb.Fatalf("pkitest: the issuer of %q holds no private key to sign with", tmpl.Subject.CommonName)
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = serial(tb)
	}
	spki := marshalPublicKey(tb, pub)
	if tmpl.SubjectKeyId == nil {
		sum := sha1.Sum(spki)
		tmpl.SubjectKeyId = sum[:]
	}
	// crypto/x509 neither issues for a DSA key nor signs with one: it
	// signs for and with stand-ins, and the result is mended below.
	_, dsaSubject := pub.(*dsa.PublicKey)
	_, dsaIssuer := key.(dsaSigner)
	createPub, createKey, createParent := pub, key, parent
	if dsaSubject || dsaIssuer {
		standIn := newKey(tb)
		if dsaSubject {
			createPub = standIn.Public()
		}
		if dsaIssuer {
			createKey = standIn
			p := *parent
			p.PublicKey = nil // the stand-in is not the parent's key
			createParent = &p
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, createParent, createPub, createKey)
	if err != nil {
		tb.Fatalf("pkitest: sign %q: %v", tmpl.Subject.CommonName, err)
	}
	if dsaSubject || dsaIssuer {
		der = mendDSA(tb, der, spki, key)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// takeKey returns the key a Key modifier put in tmpl, or a new ECDSA P-256
// key, and clears the template's field. key is nil for a bare public key.
func takeKey(tb testing.TB, tmpl *x509.Certificate) (pub crypto.PublicKey, key crypto.Signer) {
	tb.Helper()
	k := tmpl.PublicKey
	tmpl.PublicKey = nil
	switch k := k.(type) {
	case nil:
		key := newKey(tb)
		return key.Public(), key
	case crypto.Signer:
		return k.Public(), k
	default:
		return k, nil
	}
}

func newKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

var (
	oidExtKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidPublicKeyDSA       = asn1.ObjectIdentifier{1, 2, 840, 10040, 4, 1}
	oidSignatureDSASHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 2}
)

// DSAKey returns a new DSA key as a crypto.Signer, for certificates that
// must be refused: crypto/x509 neither issues nor verifies with DSA, so
// pkitest writes and signs those certificates itself. The domain
// parameters are generated once per process.
func DSAKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	params, err := dsaParams()
	if err != nil {
		tb.Fatal(err)
	}
	k := &dsa.PrivateKey{PublicKey: dsa.PublicKey{Parameters: *params}}
	if err := dsa.GenerateKey(k, rand.Reader); err != nil {
		tb.Fatal(err)
	}
	return dsaSigner{k}
}

var dsaParams = sync.OnceValues(func() (*dsa.Parameters, error) {
	var p dsa.Parameters
	return &p, dsa.GenerateParameters(&p, rand.Reader, dsa.L1024N160)
})

// dsaSigner signs a SHA-256 digest with a DSA key.
type dsaSigner struct{ k *dsa.PrivateKey }

func (s dsaSigner) Public() crypto.PublicKey { return &s.k.PublicKey }

func (s dsaSigner) Sign(rand io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	r, ss, err := dsa.Sign(rand, s.k, digest)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(struct{ R, S *big.Int }{r, ss})
}

// marshalPublicKey returns pub as a DER SubjectPublicKeyInfo.
func marshalPublicKey(tb testing.TB, pub crypto.PublicKey) []byte {
	tb.Helper()
	k, ok := pub.(*dsa.PublicKey)
	if !ok {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		return der
	}
	params, err := asn1.Marshal(struct{ P, Q, G *big.Int }{k.P, k.Q, k.G})
	if err != nil {
		tb.Fatal(err)
	}
	y, err := asn1.Marshal(k.Y)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}{
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidPublicKeyDSA, Parameters: asn1.RawValue{FullBytes: params}},
		PublicKey: asn1.BitString{Bytes: y, BitLength: 8 * len(y)},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// mendDSA rewrites a certificate crypto/x509 made with stand-in keys: its
// subject key becomes spki, and issuer signs it again.
func mendDSA(tb testing.TB, der, spki []byte, issuer crypto.Signer) []byte {
	tb.Helper()
	standIn, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	var cert struct {
		TBS       asn1.RawValue
		SigAlg    pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &cert); err != nil {
		tb.Fatal(err)
	}
	// TBSCertificate: [0] version, serial, signature algorithm, issuer,
	// validity, subject, subjectPublicKeyInfo, [3] extensions.
	var fields []asn1.RawValue
	for rest := cert.TBS.Bytes; len(rest) > 0; {
		var f asn1.RawValue
		if rest, err = asn1.Unmarshal(rest, &f); err != nil {
			tb.Fatal(err)
		}
		fields = append(fields, f)
	}
	if len(fields) < 7 || fields[0].Class != asn1.ClassContextSpecific {
		tb.Fatal("pkitest: unexpected TBSCertificate layout")
	}
	fields[6] = asn1.RawValue{FullBytes: spki}
	hash := crypto.SHA256
	if _, ok := issuer.(dsaSigner); ok {
		cert.SigAlg = pkix.AlgorithmIdentifier{Algorithm: oidSignatureDSASHA256}
		alg, err := asn1.Marshal(cert.SigAlg)
		if err != nil {
			tb.Fatal(err)
		}
		fields[2] = asn1.RawValue{FullBytes: alg}
	} else {
		switch standIn.SignatureAlgorithm {
		case x509.ECDSAWithSHA256, x509.SHA256WithRSA:
		case x509.ECDSAWithSHA384, x509.SHA384WithRSA:
			hash = crypto.SHA384
		case x509.ECDSAWithSHA512, x509.SHA512WithRSA:
			hash = crypto.SHA512
		case x509.PureEd25519:
			hash = 0
		default:
			tb.Fatalf("pkitest: cannot sign again with %v", standIn.SignatureAlgorithm)
		}
	}
	var body []byte
	for _, f := range fields {
		body = append(body, f.FullBytes...)
	}
	tbs, err := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
	if err != nil {
		tb.Fatal(err)
	}
	msg := tbs
	if hash != 0 {
		h := hash.New()
		h.Write(tbs)
		msg = h.Sum(nil)
	}
	sig, err := issuer.Sign(rand.Reader, msg, hash)
	if err != nil {
		tb.Fatal(err)
	}
	cert.TBS = asn1.RawValue{FullBytes: tbs}
	cert.Signature = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	out, err := asn1.Marshal(cert)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}
