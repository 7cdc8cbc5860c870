package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// principalsDoc is a service's policy: rules written for a mesh identity,
// a node's agents and SPIRE workloads, and one for partner-corp by name.
const principalsDoc = `rules:
  - name: ops
    who: [ops@dev1]
    http: ["POST /delete_everything"]
  - name: dev1-agents
    who: ["*@dev1"]
    http: ["GET /dev1"]
  - name: spire-workloads
    who: ["spiffe://example.org/ns/prod/*"]
    http: ["GET /prod"]
  - name: partner
    who: ["entity:partner-corp/ops@dev1"]
    http: ["GET /partner"]
`

// TestHostilePartnerPrincipals: a partner entity registered with a real
// meshd writes mesh names into its certificates. Against a meshauth
// service trusting what meshd trusts (the mesh CA and partner-corp), over
// real TLS on loopback, its ops@dev1, x@dev1 and SPIRE-named leaves meet
// none of the rules written for those names; meshd's policy check says
// the same of a modelled partner caller; meshd's admin listener refuses
// the partner's admin@external. On the code before, the service let the
// partner delete everything and the check said "allow".
func TestHostilePartnerPrincipals(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict", configure: func(c *meshd.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminIdentities = []string{"admin@external"}
	}})
	partnerCA := newTestCA(t, "partner-corp root")
	e.registerEntity("partner-corp", partnerCA)

	// The service: meshauth over the mesh CA, then the partner's CA as
	// the registered entity, as a service following meshd would hold.
	inter, _ := e.ca.intermediate(t)
	ents := trust.NewAnchors("entities")
	ents.Set("partner-corp", []*x509.Certificate{partnerCA.cert})
	chain := trust.NewChain(&trust.RevocationSet{}, []trust.Backend{
		trust.NewLocalCA(e.ca.auth.TrustDomain(), e.ca.auth.Root(), []*x509.Certificate{inter}), ents})
	policy, err := meshauth.ParsePolicy("svc", []byte(principalsDoc))
	if err != nil {
		t.Fatal(err)
	}
	auth, err := meshauth.New(meshauth.Config{Chain: chain, Authorizer: policy.Authorize})
	if err != nil {
		t.Fatal(err)
	}
	svc := httptest.NewUnstartedServer(auth.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("done")) })))
	svc.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	auth.Serve(svc.Config)
	svc.StartTLS()
	t.Cleanup(svc.Close)
	as := func(cert tls.Certificate, method, path string) reply {
		tr := svc.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		tr.DisableKeepAlives = true
		return do(t, &http.Client{Transport: tr}, method, svc.URL+path, nil)
	}
	partnerLeaf := func(cn, uri string) tls.Certificate {
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if uri != "" {
			u, _ := url.Parse(uri)
			tmpl.URIs = []*url.URL{u}
		}
		return signLeaf(t, partnerCA.cert, partnerCA.key, tmpl)
	}

	ops, _ := agentCert(t, e.ca.auth, "ops", "dev1")
	if r := as(ops, "POST", "/delete_everything"); r.code != 200 {
		t.Fatalf("the mesh CA's ops@dev1: %s", r)
	}
	attacks := []struct {
		name         string
		cert         tls.Certificate
		method, path string
	}{
		{"partner ops@dev1", partnerLeaf("ops@dev1", "spiffe://"+e.ca.auth.TrustDomain().Name()+"/agent/dev1/ops"), "POST", "/delete_everything"},
		{"partner x@dev1", partnerLeaf("x@dev1", ""), "GET", "/dev1"},
		{"partner SPIRE workload", partnerLeaf("api", "spiffe://example.org/ns/prod/api"), "GET", "/prod"},
	}
	for _, a := range attacks {
		if r := as(a.cert, a.method, a.path); r.code != http.StatusForbidden || r.reason() != meshauth.ReasonForbidden {
			t.Errorf("%s, %s %s: %s", a.name, a.method, a.path, r)
		}
	}
	if r := as(attacks[0].cert, "GET", "/partner"); r.code != 200 {
		t.Errorf("partner ops@dev1, by the rule naming partner-corp: %s", r)
	}

	// meshd's policy check models the same caller.
	if r := e.adminDo("PUT", meshapi.PathAdminPolicies+"/svc", map[string]string{"document": principalsDoc}); r.code != 200 {
		t.Fatalf("set the policy: %s", r)
	}
	for _, c := range []struct {
		req     meshapi.PolicyCheckRequest
		allowed bool
		rule    string
	}{
		{meshapi.PolicyCheckRequest{Identity: "ops@dev1", Operation: "POST /delete_everything"}, true, "ops"},
		{meshapi.PolicyCheckRequest{Identity: "ops@dev1", Source: "localca", Operation: "POST /delete_everything"}, true, "ops"},
		{meshapi.PolicyCheckRequest{Identity: "ops@dev1", Entity: "partner-corp", Operation: "POST /delete_everything"}, false, meshauth.DefaultDeny},
		{meshapi.PolicyCheckRequest{Identity: "x@dev1", Entity: "partner-corp", Operation: "GET /dev1"}, false, meshauth.DefaultDeny},
		{meshapi.PolicyCheckRequest{Identity: "spiffe://example.org/ns/prod/api", Entity: "partner-corp", Operation: "GET /prod"}, false, meshauth.DefaultDeny},
		{meshapi.PolicyCheckRequest{Identity: "spiffe://example.org/ns/prod/api", Operation: "GET /prod"}, true, "spire-workloads"},
		{meshapi.PolicyCheckRequest{Identity: "ops@dev1", Entity: "partner-corp", Operation: "GET /partner"}, true, "partner"},
	} {
		r := e.adminDo("POST", meshapi.PathAdminPolicies+"/svc/check", c.req)
		j := r.json(t)
		if r.code != 200 || j["allowed"] != c.allowed || j["rule"] != c.rule {
			t.Errorf("check %+v: %s", c.req, r)
		}
	}
	// A name the source cannot issue is refused, saying which to name.
	if r := e.adminDo("POST", meshapi.PathAdminPolicies+"/svc/check", meshapi.PolicyCheckRequest{Identity: "ops@dev1", Source: "spire", Operation: "GET /dev1"}); r.code != 400 {
		t.Errorf("a mesh identity from spire: %s", r)
	}

	// meshd's own admin listener: the partner's admin@external is not an
	// admin identity (the mesh CA alone vouches for one).
	admin := partnerLeaf("admin@external", "spiffe://"+e.ca.auth.TrustDomain().Name()+"/external/admin")
	if r := do(t, e.freshClient(&admin), "GET", "https://"+e.srv.AdminTLSAddr()+"/admin/agents", nil); r.code != http.StatusUnauthorized {
		t.Errorf("the partner's admin@external on the admin listener: %s", r)
	}
}
