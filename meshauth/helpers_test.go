package meshauth_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.local")

// testCA is a CA for tests: a self-signed root that signs leaves.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: []byte(cn)[:min(len(cn), 20)]}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key}
}

func newKey(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// leaf issues a client certificate for cn with the given SPIFFE ID ("" for
// none) and DNS names.
func (ca *testCA) leaf(t testing.TB, cn, spiffe string, dns ...string) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		AuthorityKeyId: ca.cert.SubjectKeyId, DNSNames: dns}
	if spiffe != "" {
		u, _ := url.Parse(spiffe)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}
}

// agent issues the mesh certificate of agent@node.
func (ca *testCA) agent(t testing.TB, agent, node string) tls.Certificate {
	return ca.leaf(t, agent+"@"+node, "spiffe://mesh.local/agent/"+node+"/"+agent)
}

// world is a mesh CA, a partner entity's CA, and the chain trusting both.
type world struct {
	mesh, partner *testCA
	revs          *trust.RevocationSet
	chain         *trust.Chain
	clock         *clocktest.Clock
}

func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{mesh: newCA(t, "mesh root"), partner: newCA(t, "partner root"), revs: &trust.RevocationSet{}, clock: clocktest.New(time.Now())}
	ents := trust.NewAnchors("entities")
	ents.Set("partner-corp", []*x509.Certificate{w.partner.cert})
	w.chain = trust.NewChain(w.revs, []trust.Backend{trust.NewLocalCA(td, w.mesh.cert, nil), ents}, trust.WithClock(w.clock.Now))
	return w
}

// serve runs h behind TLS that requests (not verifies) client
// certificates, with a's connection hooks.
func serve(t testing.TB, a *meshauth.Auth, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	a.Serve(srv.Config)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// client returns an HTTP client of srv presenting cert (none when nil).
func client(srv *httptest.Server, cert *tls.Certificate) *http.Client {
	tr := srv.Client().Transport.(*http.Transport).Clone()
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: tr}
}

type response struct {
	code   int
	body   string
	header http.Header
}

func do(t testing.TB, c *http.Client, method, url, body string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(b), resp.Header}
}

func mustPolicy(t testing.TB, doc string) *meshauth.Policy {
	t.Helper()
	p, err := meshauth.ParsePolicy("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// serverCertificate issues a server certificate for localhost.
func serverCertificate(t testing.TB, ca *testCA) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
