package trust_test

import (
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.local")

// mesh is a mesh CA (root and intermediate) and the localca backend
// trusting it.
type mesh struct {
	root, inter *pkitest.CA
	local       *trust.LocalCA
}

func newMesh(t testing.TB) *mesh {
	t.Helper()
	root := pkitest.NewRoot(t, "mesh root")
	inter := root.Intermediate(t, "mesh intermediate")
	return &mesh{root: root, inter: inter, local: trust.NewLocalCA(td, root.Cert, []*x509.Certificate{inter.Cert})}
}

// agent issues the certificate of agent@node the way the mesh CA does: CN
// and SPIFFE ID naming the same identity, clientAuth only.
func (m *mesh) agent(t testing.TB, agent, node string, mods ...pkitest.Modifier) *x509.Certificate {
	t.Helper()
	return m.inter.Leaf(t, agent+"@"+node, append([]pkitest.Modifier{pkitest.URI("spiffe://mesh.local/agent/" + node + "/" + agent)}, mods...)...)
}

// partner is an entity's own CA, with anchors trusting it under name.
func partner(t testing.TB, name string) (*pkitest.CA, *trust.Anchors) {
	t.Helper()
	ca := pkitest.NewRoot(t, name+" root", pkitest.Subject("Some Other Org", "Some Other Unit"))
	a := trust.NewAnchors("entities")
	a.Set(name, []*x509.Certificate{ca.Cert})
	return ca, a
}

func chainOf(certs ...*x509.Certificate) []*x509.Certificate { return certs }

// hideNotify hides a backend's OnChange, so a Chain learns of its changes
// only when a cached verdict runs out.
type hideNotify struct{ trust.Backend }
