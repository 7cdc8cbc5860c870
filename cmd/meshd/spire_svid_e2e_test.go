package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/spiretest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// servedCert is the certificate meshd's agent port presents now, and
// whether it verifies against the SPIRE server's bundle.
func servedCert(t *testing.T, m *spireMeshd, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", m.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	peer := conn.ConnectionState().PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	_, err = peer[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return peer[0], err
}

// TestRealSPIREMeshdServesItsSVID: meshd --tls-svid presents its own
// X.509-SVID (spiffe://<td>/mesh-registry, no CN, no DNS name) on the
// agent port, with no certificate file, and rotates it in place; an agent
// on the spire provider, which trusts SPIRE's bundle alone, registers and
// stays healthy across meshd's rotation. meshd runs on its defaults: the
// spire backend admits the agent's CN-less SVID with no binding flag.
func TestRealSPIREMeshdServesItsSVID(t *testing.T) {
	t.Parallel()
	bin := buildBinaries(t)
	s := spiretest.Start(t, meshTD)
	registerMeshd(t, s, bin)
	s.CreateEntry(t, "spiffe://"+meshTD+"/agent/carol", pathSelector(filepath.Join(bin, "meshctl")))
	m := startSPIREMeshd(t, s, bin, "svid")

	bundle, err := os.ReadFile(filepath.Join(s.Dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemfile.ParseCerts(bundle)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, c := range certs {
		roots.AddCert(c)
	}
	first, err := servedCert(t, m, roots)
	if err != nil {
		t.Fatalf("meshd's agent port certificate does not verify against SPIRE's bundle: %v", err)
	}
	if len(first.URIs) != 1 || first.URIs[0].String() != registryID(meshTD) {
		t.Fatalf("meshd presents %v, want its SVID %s", first.URIs, registryID(meshTD))
	}

	a := startAgentRun(t, bin, m, "carol")
	eventually.TrueWithin(t, time.Minute, "carol registered", func() bool {
		a.mustRun(t)
		return m.agents(t)["carol"].Status == "healthy"
	})
	// SPIRE rotates an SVID at half of its life (2 minutes here).
	eventually.TrueWithin(t, 3*time.Minute, "meshd presenting a rotated SVID", func() bool {
		a.mustRun(t)
		c, err := servedCert(t, m, roots)
		return err == nil && c.SerialNumber.Cmp(first.SerialNumber) != 0 && c.URIs[0].String() == registryID(meshTD)
	})
	a.mustRun(t)
	if got := m.agents(t)["carol"]; got.Status != "healthy" {
		t.Errorf("carol after meshd's rotation: %+v, want healthy", got)
	}
}
