package meshauth_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.local")

// leafOf issues a client certificate of ca for cn with the given SPIFFE
// ID ("" for none) and DNS names.
func leafOf(t testing.TB, ca *pkitest.CA, cn, spiffe string, dns ...string) tls.Certificate {
	t.Helper()
	mods := []pkitest.Modifier{pkitest.DNS(dns...)}
	if spiffe != "" {
		mods = append(mods, pkitest.URI(spiffe))
	}
	return ca.Issue(t, cn, mods...)
}

// agentOf issues the mesh certificate of agent@node.
func agentOf(t testing.TB, ca *pkitest.CA, agent, node string) tls.Certificate {
	return leafOf(t, ca, agent+"@"+node, "spiffe://mesh.local/agent/"+node+"/"+agent)
}

// world is a mesh CA, a partner entity's CA, and the chain trusting both.
type world struct {
	mesh, partner *pkitest.CA
	revs          *trust.RevocationSet
	chain         *trust.Chain
	clock         *clocktest.Clock
}

func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{mesh: pkitest.NewRoot(t, "mesh root"), partner: pkitest.NewRoot(t, "partner root"), revs: &trust.RevocationSet{}, clock: clocktest.New(time.Now())}
	ents := trust.NewAnchors("entities")
	ents.Set("partner-corp", []*x509.Certificate{w.partner.Cert})
	w.chain = trust.NewChain(w.revs, []trust.Backend{trust.NewLocalCA(td, w.mesh.Cert, nil), ents}, trust.WithClock(w.clock.Now))
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
func serverCertificate(t testing.TB, ca *pkitest.CA) tls.Certificate {
	t.Helper()
	return ca.Issue(t, "localhost", pkitest.DNS("localhost"), pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))
}
