// Package pkitest mints throwaway CAs, keys and certificates for the tests
// of any meshtrust package: roots, intermediates, partner CAs, leaves with
// DNS names and URIs (SPIFFE SVIDs), expired or not yet valid ones, and
// their PEM files. Every certificate is real: built with crypto/x509,
// signed by its issuer's key and parsed back.
package pkitest

import (
	"crypto"
	"crypto/dsa" //nolint:staticcheck // DSA keys are minted only to be refused.
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
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

// DNS adds DNS SANs.
func DNS(names ...string) Modifier {
	return func(c *x509.Certificate) { c.DNSNames = append(c.DNSNames, names...) }
}

// Localhost makes a certificate a server on loopback can present as well
// as a client: serverAuth and clientAuth usages, DNS name localhost and IP
// 127.0.0.1.
func Localhost() Modifier {
	return func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		c.DNSNames = append(c.DNSNames, "localhost")
		c.IPAddresses = append(c.IPAddresses, net.IPv4(127, 0, 0, 1))
	}
}

// Expired makes a certificate whose validity ended a day ago.
func Expired() Modifier {
	now := time.Now().Truncate(time.Second)
	return Validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour))
}

// NotYetValid makes a certificate whose validity starts in a day.
func NotYetValid() Modifier {
	now := time.Now().Truncate(time.Second)
	return Validity(now.Add(24*time.Hour), now.Add(48*time.Hour))
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
	// Root is the self-signed certificate the CA's chain ends at: Cert
	// itself for a root.
	Root *x509.Certificate
	// Chain is what a leaf of this CA presents above itself: Cert and the
	// intermediates above it, the root left out (empty for a root).
	Chain []*x509.Certificate
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
	return &CA{Cert: cert, Key: key, Root: cert}
}

// Intermediate returns a CA named cn that ca signed, valid as long as a
// root unless a modifier says otherwise. Its path length is zero: it
// issues leaves, not further CAs.
func (ca *CA) Intermediate(tb testing.TB, cn string, mods ...Modifier) *CA {
	tb.Helper()
	tmpl := caTemplate(cn)
	tmpl.MaxPathLenZero = true
	for _, m := range mods {
		m(tmpl)
	}
	pub, key := takeKey(tb, tmpl)
	cert := sign(tb, tmpl, ca.Cert, pub, ca.Key)
	return &CA{Cert: cert, Key: key, Root: ca.Root, Chain: append([]*x509.Certificate{cert}, ca.Chain...)}
}

// Leaf returns a client certificate named cn that ca signed: clientAuth
// usage, valid from an hour ago for a day unless a modifier says otherwise.
func (ca *CA) Leaf(tb testing.TB, cn string, mods ...Modifier) *x509.Certificate {
	tb.Helper()
	cert, _ := ca.leaf(tb, cn, mods)
	return cert
}

// Issue returns a leaf as Leaf does, with its private key and the CA's
// Chain, ready for a tls.Config (PrivateKey is nil when a Key modifier
// gave a bare public key).
func (ca *CA) Issue(tb testing.TB, cn string, mods ...Modifier) tls.Certificate {
	tb.Helper()
	cert, key := ca.leaf(tb, cn, mods)
	out := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	for _, c := range ca.Chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

func (ca *CA) leaf(tb testing.TB, cn string, mods []Modifier) (*x509.Certificate, crypto.Signer) {
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
	pub, key := takeKey(tb, tmpl)
	return sign(tb, tmpl, ca.Cert, pub, ca.Key), key
}

// PEM returns the CA's certificate in PEM form.
func (ca *CA) PEM() []byte { return CertPEM(ca.Cert) }

// CertPEM returns certs in PEM form, one block each, in order.
func CertPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM returns key as a PKCS #8 "PRIVATE KEY" PEM block.
func KeyPEM(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFile writes data to name in dir, creating dir, with mode 0600 (a
// key's mode, which any certificate reader accepts too), and returns the
// file's path.
func WriteFile(tb testing.TB, dir, name string, data []byte) string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
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
		standIn := NewKey(tb)
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
		key := NewKey(tb)
		return key.Public(), key
	case crypto.Signer:
		return k.Public(), k
	default:
		return k, nil
	}
}

// NewKey returns a new ECDSA P-256 key, the key of every certificate
// pkitest mints unless a Key modifier says otherwise.
func NewKey(tb testing.TB) *ecdsa.PrivateKey {
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
