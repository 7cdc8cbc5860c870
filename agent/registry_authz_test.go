package agent_test

import (
	"crypto/x509"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/agent"
	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
)

// TestAuthorizeRegistrySVID: with no AuthorizeRegistry, an agent on an
// X.509-SVID accepts a registry that presents spiffe://<its own trust
// domain>/mesh-registry (meshd --tls-svid, MCP Mesh's registry ID), whose
// certificate names no host; any other SPIFFE ID, the registry ID of
// another trust domain, and an agent without an SVID refuse it.
func TestAuthorizeRegistrySVID(t *testing.T) {
	mesh := spiffeid.RequireTrustDomainFromString("mesh.test")
	partner := spiffeid.RequireTrustDomainFromString("partner.test")
	srv := spiffetest.NewServer(t, "")
	svid := func(td spiffeid.TrustDomain, path string) *x509.Certificate {
		return srv.CA(td).IssueSVID(spiffeid.RequireFromPath(td, path)).Certificates[0]
	}
	var h credentials.Holder
	own := srv.CA(mesh).IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/carol"))
	c, err := credentials.NewTLSCertificate(own.Certificates, own.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Set(&credentials.Credentials{Certificate: c, Roots: srv.CA(mesh).Bundle().X509Authorities()}); err != nil {
		t.Fatal(err)
	}
	authz := agent.AuthorizeRegistry("localhost", &h)
	if err := authz(svid(mesh, "/mesh-registry"), nil); err != nil {
		t.Errorf("the registry's SVID of the agent's trust domain: %v", err)
	}
	for _, leaf := range []*x509.Certificate{svid(mesh, "/agent/zed"), svid(partner, "/mesh-registry"), svid(mesh, "/mesh-registry/x")} {
		if err := authz(leaf, nil); err == nil || !strings.Contains(err.Error(), "not the registry at localhost") {
			t.Errorf("%v: %v, want refused", leaf.URIs, err)
		}
	}
}
