package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
)

// The tests of createLeaf hold it to one contract: whenever it answers ok,
// its TBSCertificate is byte for byte x509.CreateCertificate's for the same
// template and parent, and whenever the template is one it does not know,
// it answers !ok having signed nothing.

// leafIssuer is an intermediate of a real CA and its key.
type leafIssuer struct {
	name string
	f    *fixture
	cert *x509.Certificate
	key  crypto.Signer
}

func leafIssuers(t testing.TB) []leafIssuer {
	t.Helper()
	var out []leafIssuer
	for _, kt := range []ca.KeyType{ca.KeyECDSAP256, ca.KeyECDSAP384, ca.KeyEd25519} {
		f := newCA(t, caOptions{intKey: kt})
		cert, key := intermediateOf(t, f.cfg)
		out = append(out, leafIssuer{string(kt), f, cert, key})
	}
	return out
}

// subjectKeys returns one key of each type a subject may have.
func subjectKeys(t testing.TB) map[ca.KeyType]crypto.Signer {
	t.Helper()
	out := map[ca.KeyType]crypto.Signer{}
	for _, kt := range []ca.KeyType{ca.KeyECDSAP256, ca.KeyECDSAP384, ca.KeyEd25519, ca.KeyRSA2048} {
		k, err := ca.GenerateKey(kt, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		out[kt] = k
	}
	return out
}

func spkiOf(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// requireSameAsStdlib signs tmpl with createLeaf, which must accept it, and
// with x509.CreateCertificate, and fails t unless both TBSCertificates and
// signature algorithms are equal and the result verifies under parent.
func requireSameAsStdlib(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, spki []byte, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, ok, err := ca.CreateLeaf(rand.Reader, tmpl, parent, spki, key)
	if err != nil || !ok {
		t.Fatalf("createLeaf = ok %v, %v; want a certificate", ok, err)
	}
	want, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatalf("x509.CreateCertificate: %v", err)
	}
	requireSameTBS(t, der, want)
	got, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("createLeaf's certificate does not parse: %v", err)
	}
	if err := got.CheckSignatureFrom(parent); err != nil {
		t.Fatalf("createLeaf's certificate does not verify under its parent: %v", err)
	}
	return got
}

// requireSameTBS fails t unless certificates got and want have the same
// TBSCertificate and signature algorithm. It reads the DER itself, since a
// template may hold what x509.ParseCertificate refuses (an IP address of 3
// bytes) and yet be encoded by x509.CreateCertificate.
func requireSameTBS(t testing.TB, gotDER, wantDER []byte) {
	t.Helper()
	g, gAlg, ok := certTBS(gotDER)
	if !ok {
		t.Fatalf("createLeaf's certificate is not a DER Certificate: %x", gotDER)
	}
	w, wAlg, ok := certTBS(wantDER)
	if !ok {
		t.Fatalf("x509.CreateCertificate's certificate is not a DER Certificate: %x", wantDER)
	}
	if !bytes.Equal(g, w) {
		i := 0
		for i < len(g) && i < len(w) && g[i] == w[i] {
			i++
		}
		t.Fatalf("TBSCertificate differs from x509.CreateCertificate's at byte %d:\ngot  %x\nwant %x", i, g, w)
	}
	if !bytes.Equal(gAlg, wAlg) {
		t.Fatalf("signature algorithm %x, x509.CreateCertificate's is %x", gAlg, wAlg)
	}
}

// certTBS splits a DER Certificate into its TBSCertificate and signature
// algorithm, requiring a signature BIT STRING after them and nothing more.
func certTBS(der []byte) (tbs, alg []byte, ok bool) {
	s := cryptobyte.String(der)
	var cert cryptobyte.String
	var tbsS, algS cryptobyte.String
	var sig []byte
	ok = s.ReadASN1(&cert, cbasn1.SEQUENCE) && s.Empty() &&
		cert.ReadASN1Element(&tbsS, cbasn1.SEQUENCE) && cert.ReadASN1Element(&algS, cbasn1.SEQUENCE) &&
		cert.ReadASN1BitStringAsBytes(&sig) && cert.Empty()
	return tbsS, algS, ok
}

// leafShape is a leaf the policy could build, by hand so that every
// corner (serial length, times, SAN kinds) is reachable.
type leafShape struct {
	name      string
	cn        string
	dns       []string
	ips       []string
	uris      []string
	server    bool // ServerAuth besides ClientAuth, as for a node
	notBefore time.Time
	notAfter  time.Time
	serial    []byte
}

func (s leafShape) template(t testing.TB, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(s.serial),
		Subject:               pkix.Name{CommonName: s.cn},
		NotBefore:             s.notBefore,
		NotAfter:              s.notAfter,
		DNSNames:              s.dns,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		PublicKey:             pub,
	}
	for _, ip := range s.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	for _, u := range s.uris {
		tmpl.URIs = append(tmpl.URIs, mustURL(u))
	}
	if s.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	ski := sha1.Sum(spkiOf(t, pub))
	tmpl.SubjectKeyId = ski[:]
	return tmpl
}

func leafShapes() []leafShape {
	now := time.Now().UTC().Truncate(time.Second)
	late := time.Date(2051, 3, 4, 5, 6, 7, 0, time.UTC)
	var out []leafShape
	base := []leafShape{
		{
			name: "node", cn: "n1.node", server: true,
			dns:  []string{"n1", "n1.mesh.local", "localhost"},
			ips:  []string{"10.1.2.3", "127.0.0.1", "::1", "2001:db8::7", "::ffff:192.0.2.9"},
			uris: []string{"spiffe://mesh.local/node/n1", "https://n1.example/x?y=z"},
		},
		{name: "agent", cn: "weather@n1", uris: []string{"spiffe://mesh.local/node/n1/agent/weather"}},
		{name: "client", cn: "alice@external", uris: []string{"spiffe://mesh.local/external/alice"}},
		// Every PrintableString character, a UTF8String subject (by '*'
		// and '&', which Marshal does not count as printable, and by
		// non-ASCII) and an empty one (SAN critical).
		{name: "printable-cn", cn: "az AZ09'()+,-./:=?", uris: []string{"spiffe://mesh.local/external/p"}},
		{name: "utf8-cn", cn: "renée*&@external", uris: []string{"spiffe://mesh.local/external/x"}},
		{name: "empty-subject", dns: []string{"only.san"}},
	}
	for i, s := range base {
		n := i%16 + 1 // serials of 1 to 16 bytes
		s.serial = bytes.Repeat([]byte{0x7f}, n)
		s.notBefore, s.notAfter = now.Add(-5*time.Minute), now.Add(90*24*time.Hour)
		out = append(out, s)
	}
	for n := 1; n <= 16; n++ {
		for _, top := range []byte{0x01, 0x80, 0xff} {
			s := base[1]
			s.name = fmt.Sprintf("serial-%d-%02x", n, top)
			s.serial = append([]byte{top}, bytes.Repeat([]byte{0xa5}, n-1)...)
			s.notBefore, s.notAfter = now.Add(-time.Minute), now.Add(time.Hour)
			out = append(out, s)
		}
	}
	for _, w := range []struct {
		name     string
		from, to time.Time
	}{
		{"across-2050", time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), late},
		{"after-2050", late, late.AddDate(1, 0, 0)},
		{"fractional-local", now.Add(1234567 * time.Nanosecond).In(time.FixedZone("x", -7*3600)), now.Add(time.Hour).In(time.FixedZone("y", 5*3600+1800))},
		{"before-1950", time.Date(1949, 1, 1, 0, 0, 0, 0, time.UTC), now},
	} {
		s := base[0]
		s.name, s.serial, s.notBefore, s.notAfter = w.name, []byte{0x42, 0x80}, w.from, w.to
		out = append(out, s)
	}
	return out
}

// TestCreateLeafMatchesCreateCertificate compares createLeaf with
// x509.CreateCertificate for every profile's shape, every subject key type
// under every issuer key type, serials of 1 to 16 bytes (top bit set or
// not), and times on both sides of 2050.
func TestCreateLeafMatchesCreateCertificate(t *testing.T) {
	keys := subjectKeys(t)
	for _, is := range leafIssuers(t) {
		for kt, sk := range keys {
			for _, s := range leafShapes() {
				t.Run(is.name+"/"+string(kt)+"/"+s.name, func(t *testing.T) {
					tmpl := s.template(t, sk.Public())
					requireSameAsStdlib(t, tmpl, is.cert, sk.Public(), spkiOf(t, sk.Public()), is.key)
				})
			}
		}
	}
}

// TestCreateLeafPolicyTemplates runs the real policy (what Sign and
// Reissue sign) for every profile and key type, with CSR-made and
// CA-known keys, and requires createLeaf to take every template it builds.
func TestCreateLeafPolicyTemplates(t *testing.T) {
	node, err := identity.NewNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := identity.NewAgent("weather", "n1")
	if err != nil {
		t.Fatal(err)
	}
	user, err := identity.NewExternal("alice")
	if err != nil {
		t.Fatal(err)
	}
	reqs := []ca.Request{
		{Profile: ca.ProfileNode, Identity: node, ExtraSANs: []string{"IP:10.0.0.7", "IP:fd00::1", "URI:https://n1.example", "n1.example.org"}},
		{Profile: ca.ProfileAgent, Identity: agent},
		{Profile: ca.ProfileClient, Identity: user},
	}
	keys := subjectKeys(t)
	for _, is := range leafIssuers(t) {
		for kt, sk := range keys {
			for _, req := range reqs {
				t.Run(is.name+"/"+string(kt)+"/"+string(req.Profile), func(t *testing.T) {
					// Reissue's path: a key the caller has, no CSR.
					tmpl, err := is.f.ca.LeafTemplate(nil, sk.Public(), req)
					if err != nil {
						t.Fatal(err)
					}
					requireSameAsStdlib(t, tmpl, is.cert, sk.Public(), spkiOf(t, sk.Public()), is.key)
					// Sign's path: the CSR's own SubjectPublicKeyInfo bytes.
					csr := goCSR(t, sk, &x509.CertificateRequest{Subject: pkix.Name{CommonName: req.Identity.CommonName()}})
					tmpl, err = is.f.ca.LeafTemplate(csr, csr.PublicKey, req)
					if err != nil {
						t.Fatal(err)
					}
					requireSameAsStdlib(t, tmpl, is.cert, csr.PublicKey, csr.RawSubjectPublicKeyInfo, is.key)
				})
			}
		}
	}
}

// countingSigner counts its signatures and can corrupt or refuse them.
type countingSigner struct {
	crypto.Signer
	n       atomic.Int64
	corrupt bool
	fail    error
}

func (s *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.n.Add(1)
	if s.fail != nil {
		return nil, s.fail
	}
	sig, err := s.Signer.Sign(r, digest, opts)
	if s.corrupt && err == nil {
		sig[len(sig)/2] ^= 0x01
	}
	return sig, err
}

// TestCreateLeafRefuses sets, one at a time, each template field outside
// what createLeaf encodes, and requires !ok, no error and no signature.
func TestCreateLeafRefuses(t *testing.T) {
	is := leafIssuers(t)[0]
	sk := newP256(t)
	good := func() *x509.Certificate { return leafShapes()[0].template(t, sk.Public()) }
	cases := []struct {
		name string
		mod  func(*x509.Certificate)
	}{
		{"nil serial", func(c *x509.Certificate) { c.SerialNumber = nil }},
		{"zero serial", func(c *x509.Certificate) { c.SerialNumber = big.NewInt(0) }},
		{"negative serial", func(c *x509.Certificate) { c.SerialNumber = big.NewInt(-5) }},
		{"organization", func(c *x509.Certificate) { c.Subject.Organization = []string{"acme"} }},
		{"subject serial", func(c *x509.Certificate) { c.Subject.SerialNumber = "7" }},
		{"subject extra names", func(c *x509.Certificate) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "x"}}
		}},
		{"raw subject", func(c *x509.Certificate) { c.RawSubject = []byte{0x30, 0} }},
		{"invalid UTF-8 name", func(c *x509.Certificate) { c.Subject.CommonName = "a\xffb" }},
		{"extra extensions", func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}, Value: []byte{5, 0}}}
		}},
		{"policy identifiers", func(c *x509.Certificate) { c.PolicyIdentifiers = []asn1.ObjectIdentifier{{1, 2, 3}} }},
		{"policies", func(c *x509.Certificate) { c.Policies = []x509.OID{mustOID(t, "1.2.3")} }},
		{"CRL distribution point", func(c *x509.Certificate) { c.CRLDistributionPoints = []string{"http://crl"} }},
		{"OCSP", func(c *x509.Certificate) { c.OCSPServer = []string{"http://ocsp"} }},
		{"issuing certificate URL", func(c *x509.Certificate) { c.IssuingCertificateURL = []string{"http://ca"} }},
		{"email", func(c *x509.Certificate) { c.EmailAddresses = []string{"a@b"} }},
		{"permitted DNS", func(c *x509.Certificate) { c.PermittedDNSDomains = []string{"x"} }},
		{"excluded IP", func(c *x509.Certificate) {
			c.ExcludedIPRanges = []*net.IPNet{{IP: net.IPv4zero, Mask: net.CIDRMask(8, 32)}}
		}},
		{"name constraints critical", func(c *x509.Certificate) { c.PermittedDNSDomainsCritical = true }},
		{"max path len", func(c *x509.Certificate) { c.MaxPathLen = 2 }},
		{"max path len -1", func(c *x509.Certificate) { c.MaxPathLen = -1 }},
		{"max path len zero", func(c *x509.Certificate) { c.MaxPathLenZero = true }},
		{"CA", func(c *x509.Certificate) { c.IsCA = true }},
		{"no basic constraints", func(c *x509.Certificate) { c.BasicConstraintsValid = false }},
		{"signature algorithm", func(c *x509.Certificate) { c.SignatureAlgorithm = x509.ECDSAWithSHA384 }},
		{"authority key id", func(c *x509.Certificate) { c.AuthorityKeyId = []byte{1, 2, 3} }},
		{"cert sign usage", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }},
		{"no key usage", func(c *x509.Certificate) { c.KeyUsage = 0 }},
		{"code signing", func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) }},
		{"unknown ext key usage", func(c *x509.Certificate) { c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 2, 3}} }},
		{"non-ASCII DNS name", func(c *x509.Certificate) { c.DNSNames = append(c.DNSNames, "é.example") }},
		{"non-ASCII URI", func(c *x509.Certificate) { c.URIs = append(c.URIs, &url.URL{Scheme: "urn", Opaque: "é"}) }},
		{"nil URI", func(c *x509.Certificate) { c.URIs = append(c.URIs, nil) }},
		{"year 10000", func(c *x509.Certificate) { c.NotAfter = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"parsed certificate", func(c *x509.Certificate) { c.Raw = []byte{0x30, 0} }},
		{"extensions of a parsed certificate", func(c *x509.Certificate) {
			c.Extensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}}}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := good()
			tc.mod(tmpl)
			requireRefused(t, tmpl, is.cert, spkiOf(t, sk.Public()), is.key)
		})
	}

	// Every other field, found by reflection, so that one added to
	// x509.Certificate later is covered without a new row.
	supported := map[string]bool{
		"SerialNumber": true, "Subject": true, "NotBefore": true, "NotAfter": true, "DNSNames": true,
		"IPAddresses": true, "URIs": true, "BasicConstraintsValid": true, "KeyUsage": true,
		"ExtKeyUsage": true, "SubjectKeyId": true, "PublicKey": true,
	}
	typ := reflect.TypeFor[x509.Certificate]()
	for i := range typ.NumField() {
		fld := typ.Field(i)
		if supported[fld.Name] || !fld.IsExported() {
			continue
		}
		t.Run("field "+fld.Name, func(t *testing.T) {
			tmpl := good()
			v := reflect.ValueOf(tmpl).Elem().Field(i)
			setNonZero(t, v)
			requireRefused(t, tmpl, is.cert, spkiOf(t, sk.Public()), is.key)
		})
	}

	t.Run("unsupported signer", func(t *testing.T) {
		k, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		requireRefused(t, good(), &x509.Certificate{RawSubject: is.cert.RawSubject}, spkiOf(t, sk.Public()), k)
	})
	t.Run("issuer without raw subject", func(t *testing.T) {
		parent := *is.cert
		parent.RawSubject = nil
		requireRefused(t, good(), &parent, spkiOf(t, sk.Public()), is.key)
	})
	for name, spki := range map[string][]byte{
		"empty":           nil,
		"trailing data":   append(spkiOf(t, sk.Public()), 0),
		"not a sequence":  {0x04, 0x00},
		"truncated":       spkiOf(t, sk.Public())[:20],
		"two elements":    append(spkiOf(t, sk.Public()), spkiOf(t, sk.Public())...),
		"no bit string":   {0x30, 0x02, 0x30, 0x00},
		"unused key bits": {0x30, 0x06, 0x30, 0x00, 0x03, 0x02, 0x01, 0x80},
	} {
		t.Run("SubjectPublicKeyInfo "+name, func(t *testing.T) {
			requireRefused(t, good(), is.cert, spki, is.key)
		})
	}
}

// requireRefused fails t unless createLeaf answers !ok, without an error
// and without asking the key for a signature.
func requireRefused(t testing.TB, tmpl, parent *x509.Certificate, spki []byte, key crypto.Signer) {
	t.Helper()
	s := &countingSigner{Signer: key}
	der, ok, err := ca.CreateLeaf(rand.Reader, tmpl, parent, spki, s)
	if ok || err != nil || der != nil {
		t.Fatalf("createLeaf = %d bytes, ok %v, %v; want it refused", len(der), ok, err)
	}
	if n := s.n.Load(); n != 0 {
		t.Fatalf("createLeaf refused the template but signed %d times", n)
	}
}

// setNonZero gives v a value other than its zero value.
func setNonZero(t testing.TB, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.String:
		v.SetString("x")
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
	case reflect.Struct:
		// time.Time and pkix.Name: their first field set.
		setNonZero(t, v.Field(0))
	case reflect.Interface:
		v.Set(reflect.ValueOf(1))
	default:
		t.Fatalf("no non-zero value for %s", v.Type())
	}
}

func mustOID(t testing.TB, s string) x509.OID {
	t.Helper()
	oid, err := x509.ParseOID(s)
	if err != nil {
		t.Fatal(err)
	}
	return oid
}

// TestCreateLeafBadSignature has the signer return a corrupted signature,
// or fail: createLeaf must report it and return no certificate.
func TestCreateLeafBadSignature(t *testing.T) {
	keys := subjectKeys(t)
	for _, is := range leafIssuers(t) {
		t.Run(is.name, func(t *testing.T) {
			sk := keys[ca.KeyECDSAP256]
			tmpl := leafShapes()[1].template(t, sk.Public())
			der, ok, err := ca.CreateLeaf(rand.Reader, tmpl, is.cert, spkiOf(t, sk.Public()), &countingSigner{Signer: is.key, corrupt: true})
			if err == nil || !strings.Contains(err.Error(), "signature returned by signer is invalid") || der != nil || !ok {
				t.Fatalf("createLeaf with a corrupting signer = %d bytes, ok %v, %v; want the invalid signature reported", len(der), ok, err)
			}
			refusal := errors.New("hsm unplugged")
			der, _, err = ca.CreateLeaf(rand.Reader, tmpl, is.cert, spkiOf(t, sk.Public()), &countingSigner{Signer: is.key, fail: refusal})
			if !errors.Is(err, refusal) || der != nil {
				t.Fatalf("createLeaf with a failing signer = %d bytes, %v; want %v", len(der), der, refusal)
			}
		})
	}
	t.Run("key of another issuer", func(t *testing.T) {
		is := leafIssuers(t)[0]
		sk := newP256(t)
		der, ok, err := ca.CreateLeaf(rand.Reader, leafShapes()[1].template(t, sk.Public()), is.cert, spkiOf(t, sk.Public()), newP256(t))
		if err == nil || der != nil || !ok {
			t.Fatalf("createLeaf signed with a key that is not the issuer's: %d bytes, %v", len(der), err)
		}
	})
}

// FuzzCreateLeaf builds templates from SAN sets, names, times and serials
// and requires createLeaf either to match x509.CreateCertificate byte for
// byte or to refuse a template x509.CreateCertificate refuses too (or the
// zero serial, which it does not take).
func FuzzCreateLeaf(f *testing.F) {
	f.Add("n1.node", "n1,n1.mesh.local", []byte{10, 0, 0, 1, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "spiffe://mesh.local/node/n1", int64(1700000000), int64(1800000000), int64(0), []byte{0x80, 1}, uint8(1))
	f.Add("", "only.san", []byte{}, "", int64(2524607999), int64(2524608000), int64(999999999), []byte{1}, uint8(0))
	f.Add("a=b?c", "", []byte{}, "", int64(1), int64(2), int64(0), []byte{7}, uint8(4))
	f.Add("é&*", "", []byte{1, 2, 3}, "urn:x", int64(-631152000), int64(253402300799), int64(5), []byte{0xff, 0xff}, uint8(2))
	f.Add("a\xff", "x\xc3", []byte{}, "http://é", int64(0), int64(253402300800), int64(0), []byte{0}, uint8(3))
	fx := newCA(f, caOptions{})
	parent, key := intermediateOf(f, fx.cfg)
	subject := newP256(f)
	spki := spkiOf(f, subject.Public())
	f.Fuzz(func(t *testing.T, cn, dns string, ips []byte, uri string, notBefore, notAfter, nanos int64, serial []byte, flags uint8) {
		if flags&16 == 0 {
			// Most int64 seconds are years no certificate can hold: fold
			// them into 1900 to 2300, around both of 1950 and 2050.
			const from, span = -2208988800, 400 * 31556952
			notBefore, notAfter = from+(notBefore%span+span)%span, from+(notAfter%span+span)%span
		}
		tmpl := &x509.Certificate{
			SerialNumber:          new(big.Int).SetBytes(serial),
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             time.Unix(notBefore, nanos),
			NotAfter:              time.Unix(notAfter, 0),
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if dns != "" {
			tmpl.DNSNames = strings.Split(dns, ",")
		}
		for len(ips) > 0 {
			n := min(len(ips), 4+12*int(ips[0]&1))
			tmpl.IPAddresses, ips = append(tmpl.IPAddresses, net.IP(ips[:n])), ips[n:]
		}
		if u, err := url.Parse(uri); err == nil && uri != "" {
			tmpl.URIs = []*url.URL{u}
		}
		if flags&1 != 0 {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		}
		if flags&2 != 0 {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		if flags&4 != 0 {
			tmpl.SubjectKeyId = serial
		}
		if flags&8 != 0 {
			tmpl.ExtKeyUsage = nil
		}
		der, ok, err := ca.CreateLeaf(rand.Reader, tmpl, parent, spki, key)
		want, wantErr := x509.CreateCertificate(rand.Reader, tmpl, parent, subject.Public(), key)
		switch {
		case err != nil:
			t.Fatalf("createLeaf: %v", err)
		case ok && wantErr != nil:
			t.Fatalf("createLeaf signed a template x509.CreateCertificate refuses (%v)", wantErr)
		case ok:
			requireSameTBS(t, der, want)
		case wantErr == nil && tmpl.SerialNumber.Sign() != 0:
			t.Fatalf("createLeaf refused a template x509.CreateCertificate signs")
		}
	})
}

// TestOpenSSLCreateLeaf has openssl verify a createLeaf certificate, for
// a key openssl itself generated, under the CA's chain, and read back its
// extensions.
func TestOpenSSLCreateLeaf(t *testing.T) {
	opensslBin(t)
	f := newCA(t, caOptions{})
	parent, key := intermediateOf(t, f.cfg)
	node, err := identity.NewNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	for _, kt := range []ca.KeyType{ca.KeyECDSAP256, ca.KeyEd25519, ca.KeyRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			csr, err := ca.ParseCSR(opensslCSR(t, kt, node.CommonName()))
			if err != nil {
				t.Fatal(err)
			}
			tmpl, err := f.ca.LeafTemplate(csr, csr.PublicKey, ca.Request{Profile: ca.ProfileNode, Identity: node, ExtraSANs: []string{"IP:10.0.0.7", "IP:fd00::1"}})
			if err != nil {
				t.Fatal(err)
			}
			cert := requireSameAsStdlib(t, tmpl, parent, csr.PublicKey, csr.RawSubjectPublicKeyInfo, key)
			leaf := writeFile(t, t.TempDir(), "leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
			requireOpenSSLVerifies(t, f.rootPath(), []string{f.intPath()}, leaf)
			text := mustOpenSSL(t, "x509", "-in", leaf, "-noout", "-text")
			usage := "Digital Signature"
			if kt == ca.KeyRSA2048 {
				usage += ", Key Encipherment"
			}
			for _, want := range []string{
				"X509v3 Key Usage: critical\n                " + usage + "\n",
				"X509v3 Extended Key Usage: \n                TLS Web Server Authentication, TLS Web Client Authentication\n",
				"X509v3 Basic Constraints: critical\n                CA:FALSE\n",
				"X509v3 Subject Key Identifier: \n                " + opensslHex(cert.SubjectKeyId) + "\n",
				"X509v3 Authority Key Identifier: \n                " + opensslHex(parent.SubjectKeyId) + "\n",
				"X509v3 Subject Alternative Name: \n                DNS:",
				"IP Address:10.0.0.7, IP Address:FD00:0:0:0:0:0:0:1",
				"URI:spiffe://mesh.local/node/n1",
				"Subject: CN = " + node.CommonName() + "\n",
				"Serial Number:",
			} {
				if !strings.Contains(text, want) {
					t.Fatalf("openssl x509 -text lacks %q:\n%s", want, text)
				}
			}
		})
	}
}

// opensslHex is how openssl prints a key identifier: AB:CD:...
func opensslHex(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}

// BenchmarkCreateLeaf compares createLeaf with x509.CreateCertificate for
// the template the policy builds for an agent's CSR, signed by a P-256
// intermediate, in the same run.
func BenchmarkCreateLeaf(b *testing.B) {
	f := newCA(b, caOptions{})
	parent, key := intermediateOf(b, f.cfg)
	csr, err := ca.ParseCSR(agentCSR(b, "weather", "n1"))
	if err != nil {
		b.Fatal(err)
	}
	tmpl, err := f.ca.LeafTemplate(csr, csr.PublicKey, ca.Request{Profile: ca.ProfileAgent})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("stdlib", func(b *testing.B) {
		for b.Loop() {
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, parent, csr.PublicKey, key); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("leafder", func(b *testing.B) {
		for b.Loop() {
			if _, ok, err := ca.CreateLeaf(rand.Reader, tmpl, parent, csr.RawSubjectPublicKeyInfo, key); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}
