package meshd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

// TestAdmittedChainsStress adds and re-verifies chains from many
// goroutines while the anchors change, for the race detector, and checks
// that a refused chain is forgotten and an expired one pruned.
func TestAdmittedChainsStress(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stress CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, key.Public(), key)
	caCert, _ := x509.ParseCertificate(der)
	leaf := func(i int) []*x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: fmt.Sprintf("a-%d", i)}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		d, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), key)
		c, _ := x509.ParseCertificate(d)
		return []*x509.Certificate{c}
	}
	anchors := trust.NewAnchors("stress")
	anchors.Set("acme", []*x509.Certificate{caCert})
	chain := trust.NewChain(nil, []trust.Backend{anchors})
	var a admittedChains
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				c := leaf(g*100 + i)
				a.add(trust.Fingerprint(c[0]), c, now)
				if i%10 == 0 {
					a.refused(context.Background(), chain)
				}
			}
		}()
	}
	for range 20 {
		anchors.Set("acme", []*x509.Certificate{caCert})
	}
	wg.Wait()
	if got := a.refused(context.Background(), chain); len(got) != 0 {
		t.Fatalf("%d chains refused while their CA is trusted", len(got))
	}
	anchors.Remove("acme")
	if got := a.refused(context.Background(), chain); len(got) != 200 {
		t.Fatalf("%d chains refused after their CA was removed, want 200", len(got))
	}
	if got := a.refused(context.Background(), chain); len(got) != 0 {
		t.Errorf("refused chains were not forgotten: %d again", len(got))
	}
}

// TestAdmittedChainsExpired: a remembered certificate that expired while
// its CA is still trusted is forgotten at the next sweep without being
// reported as refused (it did not lose trust); one whose CA was removed
// is reported, expired or not.
func TestAdmittedChainsExpired(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	ca := func(cn string) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		c, _ := x509.ParseCertificate(der)
		return c
	}
	kept, removed := ca("kept CA"), ca("removed CA")
	expired := func(parent *x509.Certificate, serial int64) []*x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprintf("a-%d", serial)}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(-time.Minute),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		d, _ := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), key)
		c, _ := x509.ParseCertificate(d)
		return []*x509.Certificate{c}
	}
	anchors := trust.NewAnchors("expiry")
	anchors.Set("kept", []*x509.Certificate{kept})
	anchors.Set("removed", []*x509.Certificate{removed})
	chain := trust.NewChain(nil, []trust.Backend{anchors})
	var a admittedChains
	lapsed, lost := expired(kept, 2), expired(removed, 3)
	a.add(trust.Fingerprint(lapsed[0]), lapsed, now.Add(-2*time.Minute))
	a.add(trust.Fingerprint(lost[0]), lost, now.Add(-2*time.Minute))
	anchors.Remove("removed")
	got := a.refused(context.Background(), chain)
	if len(got) != 1 || !got[trust.Fingerprint(lost[0])] {
		t.Errorf("refused %v, want only the certificate of the removed CA", got)
	}
	if len(a.chains) != 0 {
		t.Errorf("%d chains still remembered, want both forgotten", len(a.chains))
	}
}
