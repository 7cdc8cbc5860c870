package credentials_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
)

// testCA is a throwaway certificate authority: a root, or an
// intermediate whose chain ends at a root.
type testCA struct {
	cert  *x509.Certificate
	key   crypto.Signer
	chain []*x509.Certificate // cert and the intermediates above it, not the root
	root  *x509.Certificate
}

// certMod changes a certificate template before it is signed.
type certMod func(*x509.Certificate)

func withURI(raw string) certMod {
	return func(c *x509.Certificate) {
		u, err := url.Parse(raw)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
}

func withEKU(usages ...x509.ExtKeyUsage) certMod {
	return func(c *x509.Certificate) { c.ExtKeyUsage = usages }
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newRoot(t testing.TB, cn string) *testCA {
	t.Helper()
	key := newKey(t)
	cert := sign(t, caTemplate(cn), nil, key.Public(), key)
	return &testCA{cert: cert, key: key, root: cert}
}

func (ca *testCA) intermediate(t testing.TB, cn string) *testCA {
	t.Helper()
	key := newKey(t)
	cert := sign(t, caTemplate(cn), ca, key.Public(), nil)
	return &testCA{cert: cert, key: key, root: ca.root, chain: append([]*x509.Certificate{cert}, ca.chain...)}
}

// issue returns a certificate for cn presenting the CA's intermediates,
// usable by servers and clients unless mods say otherwise.
func (ca *testCA) issue(t testing.TB, cn string, mods ...certMod) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   time.Now().Add(-time.Minute),
		NotAfter:    time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"},
	}
	for _, m := range mods {
		m(tmpl)
	}
	leaf := sign(t, tmpl, ca, key.Public(), nil)
	cert, err := credentials.NewTLSCertificate(append([]*x509.Certificate{leaf}, ca.chain...), key)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// creds returns credentials of a certificate issued for cn, trusting
// roots.
func (ca *testCA) creds(t testing.TB, cn string, roots ...*testCA) *credentials.Credentials {
	t.Helper()
	c := &credentials.Credentials{Certificate: ca.issue(t, cn)}
	for _, r := range roots {
		c.Roots = append(c.Roots, r.root)
	}
	return c
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

// sign signs tmpl with parent's key, or self-signs it with self when
// parent is nil.
func sign(t testing.TB, tmpl *x509.Certificate, parent *testCA, pub crypto.PublicKey, self crypto.Signer) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 96))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	issuer, key := tmpl, self
	if parent != nil {
		issuer, key = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func td(t testing.TB, name string) spiffeid.TrustDomain {
	t.Helper()
	d, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
