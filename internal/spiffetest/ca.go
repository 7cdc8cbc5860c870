package spiffetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SVIDTTL is how long an X.509-SVID the test server issues is valid:
// SPIRE's default.
const SVIDTTL = time.Hour

// CA is the in-memory certificate authority of one trust domain, as a
// SPIRE server keeps it: a bundle of root authorities, the newest of
// which (or, with WithIntermediate, an intermediate under it) signs
// X.509-SVIDs. Its methods are safe for concurrent use.
type CA struct {
	t            testing.TB
	td           spiffeid.TrustDomain
	intermediate bool

	mu          sync.Mutex
	authorities []*x509.Certificate // the bundle, oldest first
	signer      *x509.Certificate   // signs SVIDs: the newest root or its intermediate
	signerKey   crypto.Signer
}

func newCA(t testing.TB, td spiffeid.TrustDomain, intermediate bool) *CA {
	ca := &CA{t: t, td: td, intermediate: intermediate}
	ca.rotate()
	return ca
}

// TrustDomain returns the trust domain ca is the authority of.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the trust domain's current X.509 bundle: every root
// authority added and not yet pruned.
func (ca *CA) Bundle() *x509bundle.Bundle {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return x509bundle.FromX509Authorities(ca.td, ca.authorities)
}

// bundleDER is the bundle as the Workload API sends it: the authorities'
// DER, concatenated.
func (ca *CA) bundleDER() []byte {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	var der []byte
	for _, c := range ca.authorities {
		der = append(der, c.Raw...)
	}
	return der
}

// rotate prepares a new root authority, adds it to the bundle and makes
// it (or an intermediate under it) the signer. The old roots stay in the
// bundle, as in SPIRE, so that SVIDs they signed verify until pruned.
func (ca *CA) rotate() {
	ca.t.Helper()
	key := newKey(ca.t)
	tmpl := caTemplate(ca.td)
	root := sign(ca.t, tmpl, tmpl, key.Public(), key)
	signer, signerKey := root, key
	if ca.intermediate {
		signerKey = newKey(ca.t)
		signer = sign(ca.t, caTemplate(ca.td), root, signerKey.Public(), key)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.authorities = append(ca.authorities, root)
	ca.signer, ca.signerKey = signer, signerKey
}

// prune drops every authority but the newest from the bundle.
func (ca *CA) prune() {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.authorities = ca.authorities[len(ca.authorities)-1:]
}

// IssueSVID returns a new X.509-SVID for id, shaped as SPIRE issues
// them: a P-256 key, the SPIFFE ID as the only SAN (a URI), no common
// name, digital signature key usage, server and client auth, valid for
// SVIDTTL. The chain holds the leaf and, with WithIntermediate, the
// intermediate that signed it.
//
// id need not belong to ca's trust domain: that is how a test forges an
// SVID a bundle must not vouch for (trust domain B's ID signed by A's
// CA).
func (ca *CA) IssueSVID(id spiffeid.ID) *x509svid.SVID {
	ca.t.Helper()
	u := id.URL()
	chain, key := ca.Issue(&x509.Certificate{
		Subject:     pkix.Name{Country: []string{"US"}, Organization: []string{"SPIRE"}},
		URIs:        []*url.URL{u},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// Issue signs tmpl, for a new P-256 key, with the current signer and
// returns the chain (the leaf, then the intermediate if there is one)
// and the key. Zero fields of tmpl are filled: a random serial, a
// validity from a minute ago to SVIDTTL from now. Tests use it for
// certificates SPIRE would not issue (a common name and no SPIFFE ID,
// two URI SANs, an expired leaf).
func (ca *CA) Issue(tmpl *x509.Certificate) ([]*x509.Certificate, crypto.Signer) {
	ca.t.Helper()
	tmpl = fill(ca.t, tmpl)
	key := newKey(ca.t)
	ca.mu.Lock()
	signer, signerKey := ca.signer, ca.signerKey
	ca.mu.Unlock()
	leaf := sign(ca.t, tmpl, signer, key.Public(), signerKey)
	chain := []*x509.Certificate{leaf}
	if ca.intermediate {
		chain = append(chain, signer)
	}
	return chain, key
}

// fill returns a copy of tmpl with a serial and a validity period.
func fill(t testing.TB, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	c := *tmpl
	if c.SerialNumber == nil {
		c.SerialNumber = serial(t)
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = time.Now().Add(-time.Minute)
	}
	if c.NotAfter.IsZero() {
		c.NotAfter = time.Now().Add(SVIDTTL)
	}
	c.URIs = slices.Clone(c.URIs)
	return &c
}

// caTemplate is a SPIRE-shaped CA certificate: the trust domain's ID as
// its URI SAN.
func caTemplate(td spiffeid.TrustDomain) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = serial(t)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatalf("spiffetest: sign certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("spiffetest: parse certificate: %v", err)
	}
	return c
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("spiffetest: generate key: %v", err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("spiffetest: serial: %v", err)
	}
	return n
}

// The trust domains and workload IDs the tests of the Workload API server
// and of its clients name: two workloads of the mesh's trust domain and
// one of a federated partner's.
var (
	MeshTD    = spiffeid.RequireTrustDomainFromString("mesh.test")
	PartnerTD = spiffeid.RequireTrustDomainFromString("partner.test")
	AgentA    = spiffeid.RequireFromPath(MeshTD, "/agent/a")
	AgentB    = spiffeid.RequireFromPath(MeshTD, "/agent/b")
	PartnerC  = spiffeid.RequireFromPath(PartnerTD, "/agent/c")
)
