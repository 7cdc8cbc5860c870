package pkitest_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"testing"

	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// TestIssueChainsToRoot: a leaf of an intermediate presents the
// intermediates, verifies against the root alone, and carries its key.
func TestIssueChainsToRoot(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	mid := root.Intermediate(t, "mid")
	leaf := mid.Issue(t, "opus@ct1", pkitest.Localhost(), pkitest.URI("spiffe://mesh.local/agent/ct1/opus"))
	if len(leaf.Certificate) != 2 || leaf.PrivateKey == nil || leaf.Leaf == nil {
		t.Fatalf("Issue gave %d certificates, key %v, leaf %v; want 2, a key, a leaf", len(leaf.Certificate), leaf.PrivateKey != nil, leaf.Leaf != nil)
	}
	if mid.Root != root.Cert {
		t.Error("an intermediate's Root is not its root's certificate")
	}
	inter := x509.NewCertPool()
	for _, der := range leaf.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "localhost", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the leaf does not verify as a localhost server: %v", err)
	}
	if got := leaf.Leaf.URIs; len(got) != 1 || got[0].String() != "spiffe://mesh.local/agent/ct1/opus" {
		t.Errorf("URIs = %v", got)
	}
}

// TestValidity: Expired and NotYetValid leaves are refused for the reason
// their names give.
func TestValidity(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	for name, mod := range map[string]pkitest.Modifier{"expired": pkitest.Expired(), "not yet valid": pkitest.NotYetValid()} {
		_, err := root.Leaf(t, name, mod).Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		var inv x509.CertificateInvalidError
		if !errors.As(err, &inv) || inv.Reason != x509.Expired {
			t.Errorf("%s: Verify = %v, want a validity error", name, err)
		}
	}
}

// TestPEMFiles: what CertPEM, KeyPEM and WriteFile write parses back.
func TestPEMFiles(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	mid := root.Intermediate(t, "mid")
	key := pkitest.NewKey(t)
	dir := t.TempDir()
	certs := pkitest.WriteFile(t, dir, "bundle.pem", pkitest.CertPEM(mid.Cert, root.Cert))
	keyFile := pkitest.WriteFile(t, dir, "key.pem", pkitest.KeyPEM(t, key))
	data, err := os.ReadFile(certs)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 2 {
		t.Errorf("the bundle holds %d certificates, want 2", n)
	}
	data, err = os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("the key file holds %v", b)
	}
	if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}
