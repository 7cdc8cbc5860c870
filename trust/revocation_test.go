package trust_test

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
)

func withSerial(n int64) func(*x509.Certificate) {
	return func(c *x509.Certificate) { c.SerialNumber = big.NewInt(n) }
}

// TestRevocationSetScopes: a serial is revoked per issuer; an identity's
// revocation refuses every certificate of it and, for a node, of its
// agents; a key's refuses every certificate of the key.
func TestRevocationSetScopes(t *testing.T) {
	m := newMesh(t)
	other, otherAnchors := partner(t, "acme")
	opus := m.agent(t, "opus", "ct200", withSerial(42))
	twin := other.Leaf(t, "weather", withSerial(42)) // same serial, another CA
	sage := m.agent(t, "sage", "ct200")
	elsewhere := m.agent(t, "opus", "ct2000")
	node := m.inter.Leaf(t, "ct200.mesh", withSerial(7), pkitest.URI("spiffe://mesh.local/node/ct200"), func(c *x509.Certificate) { c.DNSNames = []string{"ct200.mesh"} })

	set := &trust.RevocationSet{}
	chain := trust.NewChain(set, []trust.Backend{m.local, otherAnchors})
	verify := func(c *x509.Certificate, parents ...*x509.Certificate) error {
		_, err := chain.Verify(t.Context(), append([]*x509.Certificate{c}, parents...))
		return err
	}
	set.AddSerial(trust.Revoked{Serial: "2a", IssuerKeyID: hexKeyID(m.inter.Cert), At: time.Now()})
	if err := verify(opus, m.inter.Cert); !errors.Is(err, trust.ErrRevoked) {
		t.Errorf("revoked serial of the mesh CA: %v, want ErrRevoked", err)
	}
	if err := verify(twin); err != nil {
		t.Errorf("the same serial from another CA was refused: %v", err)
	}

	set.AddIdentity(trust.Revoked{Identity: "ct200.mesh", At: time.Now()})
	for name, c := range map[string]*x509.Certificate{"sage@ct200": sage, "ct200.mesh": node} {
		if err := verify(c, m.inter.Cert); !errors.Is(err, trust.ErrRevoked) || trust.Reason(err) != trust.ReasonRevoked {
			t.Errorf("%s with node ct200 revoked: %v, want ErrRevoked", name, err)
		}
		if err := set.CheckLeaf(c); !errors.Is(err, trust.ErrRevoked) {
			t.Errorf("CheckLeaf(%s) with node ct200 revoked: %v, want ErrRevoked", name, err)
		}
	}
	if err := verify(elsewhere, m.inter.Cert); err != nil {
		t.Errorf("opus@ct2000 refused by the revocation of ct200.mesh: %v", err)
	}
	set.RemoveIdentity("ct200.mesh")
	if err := verify(sage, m.inter.Cert); err != nil {
		t.Errorf("sage@ct200 after ct200 was reinstated: %v", err)
	}

	set.AddKey(trust.Revoked{KeyHash: trust.KeyHash(sage.RawSubjectPublicKeyInfo), At: time.Now()})
	if err := verify(sage, m.inter.Cert); !errors.Is(err, trust.ErrRevoked) {
		t.Errorf("certificate of a revoked key: %v, want ErrRevoked", err)
	}
	if err := set.CheckLeaf(elsewhere); err != nil {
		t.Errorf("CheckLeaf of an unrelated certificate: %v", err)
	}
}

func hexKeyID(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }
