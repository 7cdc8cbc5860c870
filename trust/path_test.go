package trust_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
)

// Keys are slow to make under the race detector; each kind is made once.
var (
	rsa1024 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(1024) })
	rsa2048 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
)

func mustRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// bareRSA is an RSA public key of exactly bits bits that nobody holds the
// private key of: what a caller who wants to make a verifier work hard
// presents, since a signature check costs in the size of the key.
func bareRSA(bits int) *rsa.PublicKey {
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	return &rsa.PublicKey{N: n.Add(n, big.NewInt(1)), E: 65537}
}

func notCA(c *x509.Certificate) {
	c.IsCA, c.MaxPathLenZero, c.KeyUsage = false, false, x509.KeyUsageDigitalSignature
}

// pathLen sets a CA's path length constraint; -1 leaves it out.
func pathLen(n int) pkitest.Modifier {
	return func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = n, n == 0 }
}

func permitDNS(domains ...string) pkitest.Modifier {
	return func(c *x509.Certificate) { c.PermittedDNSDomains = domains }
}

func dnsNames(names ...string) pkitest.Modifier {
	return func(c *x509.Certificate) { c.DNSNames = names }
}

// TestChainPathValidation verifies chains built for one path-validation
// rule each, and checks every verdict against crypto/x509's own Verify
// with ExtKeyUsageClientAuth, as crypto/tls would run it for a client
// certificate. trust may refuse what crypto/x509 admits only where a case
// says why (stricter); it never admits what crypto/x509 refuses.
func TestChainPathValidation(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	past := pkitest.Validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	future := pkitest.Validity(now.Add(24*time.Hour), now.Add(48*time.Hour))

	// The partner's usual PKI: a root (the anchor) and an issuing CA,
	// neither restricting usage.
	root := pkitest.NewRoot(t, "partner root")
	inter := root.Intermediate(t, "partner issuing")

	// pki is a case's anchors and the chain a caller presents.
	type pki struct {
		roots []*x509.Certificate
		chain []*x509.Certificate
	}
	anchoredAt := func(root *pkitest.CA, chain ...*x509.Certificate) pki {
		return pki{[]*x509.Certificate{root.Cert}, chain}
	}
	// viaInter builds a new partner PKI, root and issuing CA, and a leaf
	// of it.
	viaInter := func(rootMods, interMods, leafMods []pkitest.Modifier) pki {
		r := pkitest.NewRoot(t, "partner root", rootMods...)
		i := r.Intermediate(t, "partner issuing", interMods...)
		return anchoredAt(r, i.Leaf(t, "scout", leafMods...), i.Cert)
	}
	// viaTwo builds one with a policy CA between the root and the issuing
	// CA.
	viaTwo := func(rootMods, policyMods []pkitest.Modifier) pki {
		r := pkitest.NewRoot(t, "partner root", rootMods...)
		p := r.Intermediate(t, "partner policy", policyMods...)
		i := p.Intermediate(t, "partner issuing")
		return anchoredAt(r, i.Leaf(t, "scout"), i.Cert, p.Cert)
	}
	mods := func(m ...pkitest.Modifier) []pkitest.Modifier { return m }

	// Where trust is stricter than crypto/x509, on purpose.
	const keyFloor = "trust admits RSA 2048-16384, ECDSA P-256/P-384/P-521 and Ed25519 keys only"
	const emptyEKU = "RFC 5280: an extended key usage extension lists at least one purpose; crypto/x509 reads an empty one as absent"
	const caLeaf = "trust does not let a CA certificate identify a client"

	// A caller's own fake issuer: the leaf's issuer name with a key too big
	// to check a signature with cheaply, and no private key behind it.
	impostor := root.Intermediate(t, "partner issuing", pkitest.Key(bareRSA(16385)))

	// A second path to the same issuing key, through a root that limits
	// usage to servers, beside the partner's unrestricted root.
	serverRoot := pkitest.NewRoot(t, "partner server root", pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))
	crossSigned := crossSign(t, inter, serverRoot)

	dsaInter := root.Intermediate(t, "partner dsa issuing", pkitest.Key(pkitest.DSAKey(t)))

	for _, tc := range []struct {
		name       string
		p          pki
		wantReason string // "" when admitted
		stricter   string // why trust refuses what crypto/x509 admits
		wantNamed  string // a certificate the detail must name, besides the leaf
	}{
		{name: "plain chain", p: anchoredAt(root, inter.Leaf(t, "scout"), inter.Cert)},

		// EKU nesting: every CA on the path must allow clientAuth.
		{
			name:       "issuing CA restricted to serverAuth",
			p:          viaInter(nil, mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth)), nil),
			wantReason: trust.ReasonNotClient, wantNamed: "partner issuing",
		},
		{
			name:       "root restricted to codeSigning",
			p:          viaInter(mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageCodeSigning)), nil, nil),
			wantReason: trust.ReasonNotClient, wantNamed: "partner root",
		},
		{
			name: "issuing CA with an unknown purpose only",
			p: viaInter(nil, mods(func(c *x509.Certificate) {
				c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 99999, 1}}
			}), nil),
			wantReason: trust.ReasonNotClient, wantNamed: "partner issuing",
		},
		{name: "issuing CA allowing clientAuth and serverAuth", p: viaInter(nil, mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)), nil)},
		{name: "issuing CA allowing any usage", p: viaInter(nil, mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageAny)), nil)},
		{name: "root allowing clientAuth only", p: viaInter(mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageClientAuth)), nil, nil)},
		{name: "leaf allowing any usage", p: viaInter(nil, nil, mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageAny)))},
		{
			name:       "leaf for servers only",
			p:          viaInter(nil, nil, mods(pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))),
			wantReason: trust.ReasonNotClient,
		},
		{
			// Of two paths the one that allows clientAuth is taken, as
			// crypto/x509 takes it.
			name: "cross-signed issuing CA, one path restricted",
			p:    pki{[]*x509.Certificate{serverRoot.Cert, root.Cert}, chainOf(inter.Leaf(t, "scout"), crossSigned, inter.Cert)},
		},
		{
			name:       "only path through a root restricted to serverAuth",
			p:          anchoredAt(serverRoot, inter.Leaf(t, "scout"), crossSigned),
			wantReason: trust.ReasonNotClient, wantNamed: "partner server root",
		},

		// An extended key usage extension that lists nothing.
		{name: "leaf with an empty EKU", p: viaInter(nil, nil, mods(pkitest.EmptyExtKeyUsage())), wantReason: trust.ReasonNotClient, stricter: emptyEKU},
		{name: "issuing CA with an empty EKU", p: viaInter(nil, mods(pkitest.EmptyExtKeyUsage()), nil), wantReason: trust.ReasonNotClient, stricter: emptyEKU, wantNamed: "partner issuing"},
		{name: "root with an empty EKU", p: viaInter(mods(pkitest.EmptyExtKeyUsage()), nil, nil), wantReason: trust.ReasonNotClient, stricter: emptyEKU, wantNamed: "partner root"},

		// The key floor, at every level.
		{name: "RSA-2048 leaf", p: viaInter(nil, nil, mods(pkitest.Key(rsa2048())))},
		{name: "RSA-2048 issuing CA", p: viaInter(nil, mods(pkitest.Key(rsa2048())), nil)},
		{name: "RSA-2048 root", p: viaInter(mods(pkitest.Key(rsa2048())), nil, nil)},
		{name: "RSA-16384 leaf", p: viaInter(nil, nil, mods(pkitest.Key(bareRSA(16384))))},
		{name: "P-384 leaf", p: viaInter(nil, nil, mods(pkitest.Key(ecKey(t, elliptic.P384()))))},
		{name: "P-521 issuing CA", p: viaInter(nil, mods(pkitest.Key(ecKey(t, elliptic.P521()))), nil)},
		{name: "Ed25519 issuing CA and leaf", p: viaInter(nil, mods(pkitest.Key(ed25519Key(t))), mods(pkitest.Key(ed25519Key(t))))},
		{name: "RSA-1024 leaf", p: viaInter(nil, nil, mods(pkitest.Key(rsa1024()))), wantReason: trust.ReasonWeakKey, stricter: keyFloor},
		{name: "RSA-1024 issuing CA", p: viaInter(nil, mods(pkitest.Key(rsa1024())), nil), wantReason: trust.ReasonWeakKey, stricter: keyFloor, wantNamed: "partner issuing"},
		{name: "RSA-1024 root", p: viaInter(mods(pkitest.Key(rsa1024())), nil, nil), wantReason: trust.ReasonWeakKey, stricter: keyFloor, wantNamed: "partner root"},
		{name: "RSA-16385 leaf", p: viaInter(nil, nil, mods(pkitest.Key(bareRSA(16385)))), wantReason: trust.ReasonWeakKey, stricter: keyFloor},
		{
			// Refused before its signature is checked: crypto/x509 would
			// check the leaf against it, find it wrong and call the CA
			// unknown.
			name:       "presented issuer with an RSA-16385 key",
			p:          anchoredAt(root, inter.Leaf(t, "scout"), impostor.Cert),
			wantReason: trust.ReasonWeakKey, wantNamed: "partner issuing",
		},
		{name: "P-224 leaf", p: viaInter(nil, nil, mods(pkitest.Key(ecKey(t, elliptic.P224())))), wantReason: trust.ReasonWeakKey, stricter: keyFloor},
		{name: "DSA leaf", p: viaInter(nil, nil, mods(pkitest.Key(pkitest.DSAKey(t)))), wantReason: trust.ReasonWeakKey, stricter: keyFloor},
		{
			name:       "DSA issuing CA",
			p:          anchoredAt(root, dsaInter.Leaf(t, "scout"), dsaInter.Cert),
			wantReason: trust.ReasonWeakKey, wantNamed: "partner dsa issuing",
		},

		// Classic path-validation vectors.
		{name: "expired issuing CA", p: viaInter(nil, mods(past), nil), wantReason: trust.ReasonBadChain},
		{name: "issuing CA not yet valid", p: viaInter(nil, mods(future), nil), wantReason: trust.ReasonBadChain},
		{name: "expired root", p: viaInter(mods(past), nil, nil), wantReason: trust.ReasonBadChain},
		// crypto/x509 finds no issuer that may sign the leaf: an
		// unknown authority, so that another backend may know one.
		{name: "issuer is not a CA", p: viaInter(nil, mods(notCA), nil), wantReason: trust.ReasonUnknownCA},
		{
			name:       "issuer without basic constraints",
			p:          viaInter(nil, mods(func(c *x509.Certificate) { notCA(c); c.BasicConstraintsValid = false }), nil),
			wantReason: trust.ReasonUnknownCA,
		},
		{name: "root of path length 0 above an issuing CA", p: viaInter(mods(pathLen(0)), nil, nil), wantReason: trust.ReasonBadChain},
		{name: "root of path length 1 above one CA", p: viaInter(mods(pathLen(1)), nil, nil)},
		{name: "CA of path length 0 above another CA", p: viaTwo(nil, mods(pathLen(0))), wantReason: trust.ReasonBadChain},
		{name: "root of path length 1 above two CAs", p: viaTwo(mods(pathLen(1)), mods(pathLen(-1))), wantReason: trust.ReasonBadChain},
		{name: "root of path length 2 above two CAs", p: viaTwo(mods(pathLen(2)), mods(pathLen(-1)))},
		{
			name:       "leaf name outside the permitted DNS subtree",
			p:          viaInter(nil, mods(permitDNS("partner.example")), mods(dnsNames("scout.evil.example"))),
			wantReason: trust.ReasonBadChain,
		},
		{
			name: "leaf name inside the permitted DNS subtree",
			p:    viaInter(nil, mods(permitDNS("partner.example")), mods(dnsNames("scout.partner.example"))),
		},
		{
			name:       "leaf URI in an excluded domain",
			p:          viaInter(mods(func(c *x509.Certificate) { c.ExcludedURIDomains = []string{"mesh.local"} }), nil, mods(pkitest.URI("spiffe://mesh.local/agent/ct111/opus"))),
			wantReason: trust.ReasonBadChain,
		},
		{
			name: "unknown critical extension in the issuing CA",
			p: viaInter(nil, mods(func(c *x509.Certificate) {
				c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 2}, Critical: true, Value: []byte{0x05, 0x00}})
			}), nil),
			wantReason: trust.ReasonBadChain,
		},
		{
			name:       "leaf signed by another key than its issuer's",
			p:          anchoredAt(root, root.Intermediate(t, "partner issuing").Leaf(t, "scout"), inter.Cert),
			wantReason: trust.ReasonUnknownCA,
		},
		{
			name:       "issuing CA not presented",
			p:          anchoredAt(root, inter.Leaf(t, "scout")),
			wantReason: trust.ReasonUnknownCA,
		},
		{name: "CA certificate as leaf", p: anchoredAt(root, inter.Cert), wantReason: trust.ReasonCAAsLeaf, stricter: caLeaf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			anchors := trust.NewAnchors("entities")
			anchors.Set("partner-corp", tc.p.roots)
			peer, err := trust.NewChain(nil, []trust.Backend{anchors}).Verify(t.Context(), tc.p.chain)

			leaf := tc.p.chain[0]
			if tc.wantReason == "" {
				if err != nil {
					t.Fatalf("refused: %v (reason %s)", err, trust.Reason(err))
				}
				if peer.Entity != "partner-corp" {
					t.Errorf("entity %q, want partner-corp", peer.Entity)
				}
			} else {
				if err == nil {
					t.Fatalf("admitted; want refusal %s", tc.wantReason)
				}
				if got := trust.Reason(err); got != tc.wantReason {
					t.Errorf("reason %s, want %s (%v)", got, tc.wantReason, err)
				}
				if tc.wantReason != trust.ReasonUnknownCA && !errors.Is(err, trust.ErrUntrusted) {
					t.Errorf("error %v does not wrap ErrUntrusted", err)
				}
				for _, name := range []string{leaf.Subject.CommonName, tc.wantNamed} {
					if !strings.Contains(err.Error(), name) {
						t.Errorf("error %q does not name %q", err, name)
					}
				}
			}

			roots := x509.NewCertPool()
			for _, c := range tc.p.roots {
				roots.AddCert(c)
			}
			inters := x509.NewCertPool()
			for _, c := range tc.p.chain[1:] {
				inters.AddCert(c)
			}
			_, xerr := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			switch {
			case tc.stricter == "" && (err == nil) != (xerr == nil):
				t.Errorf("trust and crypto/x509 disagree: trust %v, crypto/x509 %v", err, xerr)
			case tc.stricter != "" && xerr != nil:
				t.Errorf("listed as stricter than crypto/x509 (%s), but crypto/x509 refuses too: %v", tc.stricter, xerr)
			}
		})
	}
}

// crossSign returns ca's certificate issued again by another CA: the same
// subject and key under another issuer.
func crossSign(t testing.TB, ca, by *pkitest.CA) *x509.Certificate {
	t.Helper()
	tmpl := *ca.Cert
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.AuthorityKeyId = nil
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, by.Cert, ca.Key.Public(), by.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ed25519Key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
