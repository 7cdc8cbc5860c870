package ca_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/openssltest"
)

// OpenSSL is the independent judge of what the CA produces: every chain,
// CRL and CSR here is checked by the openssl binary, not only by Go.

// writeFile writes data to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// opensslSerial is how openssl prints a serial: uppercase hex, whole bytes.
func opensslSerial(c *x509.Certificate) string {
	s := strings.ToUpper(c.SerialNumber.Text(16))
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

// splitCRLs writes each CRL of a PEM file to its own file, since
// `openssl crl` reads only the first one.
func splitCRLs(t testing.TB, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := 0; ; i++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			t.Fatalf("%s: block %d is %q, want X509 CRL", path, i, b.Type)
		}
		out = append(out, writeFile(t, t.TempDir(), "crl.pem", pem.EncodeToMemory(b)))
	}
	return out
}

var crlNumberRE = regexp.MustCompile(`X509v3 CRL Number:\s*\n\s*(\d+)`)

// opensslCRL parses a single-CRL file with openssl, checks its signature
// against issuer, and returns its text and CRL number.
func opensslCRL(t testing.TB, crlPath, issuerPath string) (string, int) {
	t.Helper()
	text := openssltest.Must(t, "crl", "-in", crlPath, "-noout", "-text")
	m := crlNumberRE.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("openssl crl shows no CRL number:\n%s", text)
	}
	n, _ := strconv.Atoi(m[1])
	if out := openssltest.Must(t, "crl", "-in", crlPath, "-noout", "-CAfile", issuerPath); !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl crl: CRL signature does not verify against %s:\n%s", issuerPath, out)
	}
	return text, n
}

// opensslKeyArgs are the `openssl req -newkey` arguments for a key type.
func opensslKeyArgs(kt ca.KeyType) []string {
	switch kt {
	case ca.KeyECDSAP256:
		return []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"}
	case ca.KeyECDSAP384:
		return []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"}
	case ca.KeyEd25519:
		return []string{"-newkey", "ed25519"}
	case ca.KeyRSA2048:
		return []string{"-newkey", "rsa:2048"}
	case ca.KeyRSA4096:
		return []string{"-newkey", "rsa:4096"}
	}
	panic("unknown key type " + string(kt))
}

// opensslCSR has openssl generate a key of type kt and a CSR for subject
// cn with the given -addext extensions, and returns the CSR's PEM.
func opensslCSR(t testing.TB, kt ca.KeyType, cn string, addext ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	csr := filepath.Join(dir, "req.csr")
	args := []string{"req", "-new", "-nodes", "-keyout", filepath.Join(dir, "req.key"), "-out", csr, "-subj", "/CN=" + cn}
	args = append(args, opensslKeyArgs(kt)...)
	for _, e := range addext {
		args = append(args, "-addext", e)
	}
	openssltest.Must(t, args...)
	data, err := os.ReadFile(csr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// issuedFiles writes an issued certificate to its own file for openssl.
func leafFile(t testing.TB, is *ca.Issued) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "leaf.pem", is.PEM)
}

// TestOpenSSLEveryKeyType builds a CA per key type and has openssl verify
// every chain it produces: generated-key node and agent certificates, a
// certificate for an openssl-made CSR of the same type, the revocation of
// one of them through the CRL, and the CRL itself. Go's crypto/x509 is
// asked the same questions and must agree.
func TestOpenSSLEveryKeyType(t *testing.T) {
	openssltest.Bin(t)
	cases := []struct {
		name              string
		root, inter, leaf ca.KeyType
		slow              bool
	}{
		{"ecdsa-p256", ca.KeyECDSAP256, ca.KeyECDSAP256, ca.KeyECDSAP256, false},
		{"ecdsa-p384", ca.KeyECDSAP384, ca.KeyECDSAP384, ca.KeyECDSAP384, false},
		{"ed25519", ca.KeyEd25519, ca.KeyEd25519, ca.KeyEd25519, false},
		{"rsa-2048", ca.KeyRSA2048, ca.KeyRSA2048, ca.KeyRSA2048, false},
		// One rsa-4096 key, the intermediate's: it is signed by the root and
		// signs the leaves and the CRL, so 4096-bit signatures go both ways.
		{"rsa-4096 intermediate", ca.KeyECDSAP256, ca.KeyRSA4096, ca.KeyECDSAP256, true},
		{"mixed", ca.KeyEd25519, ca.KeyECDSAP384, ca.KeyRSA2048, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.slow && testing.Short() {
				t.Skip("rsa-4096 key generation is slow")
			}
			t.Parallel()
			f := newCA(t, caOptions{rootKey: tc.root, intKey: tc.inter, leafKey: tc.leaf})
			root, inter := f.rootPath(), f.intPath()
			ctx := t.Context()

			node, err := f.ca.Sign(ctx, ca.NodeRequest("ct1", "IP:10.0.0.1"), ca.WithGeneratedKey())
			if err != nil {
				t.Fatal(err)
			}
			agent, err := f.ca.Sign(ctx, ca.AgentRequest("opus", "ct1"), ca.WithGeneratedKey())
			if err != nil {
				t.Fatal(err)
			}
			csr, err := ca.ParseCSR(opensslCSR(t, tc.leaf, "ct2.mesh", "subjectAltName=DNS:ct2.mesh"))
			if err != nil {
				t.Fatal(err)
			}
			signed, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileNode}, ca.FromCSR(csr))
			if err != nil {
				t.Fatalf("sign openssl %s CSR: %v", tc.leaf, err)
			}
			if !bytes.Equal(signed.Cert.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
				t.Fatal("signed certificate does not carry the CSR's key")
			}

			nodePath, agentPath, signedPath := leafFile(t, node), leafFile(t, agent), leafFile(t, signed)
			crl := f.cfg.CRLPath()
			_, n0 := opensslCRL(t, crl, inter)
			openssltest.RequireVerifies(t, root, []string{inter}, agentPath, "-crl_check", "-CRLfile", crl)
			openssltest.RequireVerifies(t, root, []string{inter}, nodePath, "-purpose", "sslserver")
			openssltest.RequireVerifies(t, root, []string{inter}, nodePath, "-purpose", "sslclient")
			openssltest.RequireVerifies(t, root, []string{inter}, agentPath, "-purpose", "sslclient")
			openssltest.RequireVerifies(t, root, []string{inter}, signedPath, "-purpose", "sslserver")
			// The issued file holds leaf, intermediate and root; the
			// chain.pem it names is enough as the untrusted set.
			openssltest.RequireVerifies(t, root, []string{f.cfg.ChainPath()}, f.cfg.IssuedCertPath("ct1.mesh"))
			// An agent certificate is a client certificate only.
			if out, err := openssltest.Verify(t, root, []string{inter}, agentPath, "-purpose", "sslserver"); err == nil {
				t.Fatalf("openssl accepted an agent certificate as a TLS server:\n%s", out)
			}
			for _, is := range []*ca.Issued{node, agent, signed} {
				requireGoVerifies(t, f, is.Cert)
			}

			if _, err := f.ca.Revoke(ctx, "opus@ct1", 1); err != nil {
				t.Fatal(err)
			}
			openssltest.RequireRevoked(t, root, []string{inter}, agentPath, crl)
			openssltest.RequireVerifies(t, root, []string{inter}, nodePath, "-crl_check", "-CRLfile", crl)
			text, n := opensslCRL(t, crl, inter)
			if !strings.Contains(text, "Serial Number: "+opensslSerial(agent.Cert)) {
				t.Fatalf("openssl crl does not list revoked serial %s:\n%s", opensslSerial(agent.Cert), text)
			}
			if strings.Contains(text, "Serial Number: "+opensslSerial(node.Cert)) {
				t.Fatalf("openssl crl lists the unrevoked node serial:\n%s", text)
			}
			if !strings.Contains(text, "Key Compromise") {
				t.Fatalf("openssl crl does not show the reason:\n%s", text)
			}
			if n != n0+1 {
				t.Fatalf("CRL number went from %d to %d on revocation, want %d", n0, n, n0+1)
			}
			requireGoRevoked(t, f, agent.Cert)
		})
	}
}

// TestOpenSSLCertificateContents has openssl print a node certificate and
// checks its names, usages and constraints, and the CA certificates'.
func TestOpenSSLCertificateContents(t *testing.T) {
	f := newCA(t, caOptions{})
	is, err := f.ca.Sign(t.Context(), ca.NodeRequest("ct1", "DNS:ct1.example.org", "IP:192.0.2.7", "URI:https://ct1.example.org/mcp"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	text := openssltest.Must(t, "x509", "-in", leafFile(t, is), "-noout", "-text")
	for _, want := range []string{
		"Subject: CN = ct1.mesh",
		"DNS:ct1.mesh", "DNS:ct1-mcp.mesh", "DNS:ct1-runtime-rpc.mesh", "DNS:ct1.example.org",
		"IP Address:192.0.2.7", "URI:https://ct1.example.org/mcp", "URI:spiffe://mesh.local/node/ct1",
		"CA:FALSE", "Digital Signature",
		"TLS Web Server Authentication, TLS Web Client Authentication",
		"X509v3 Subject Key Identifier", "X509v3 Authority Key Identifier",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q", want)
		}
	}
	if strings.Contains(text, "Certificate Sign") || strings.Contains(text, "CA:TRUE") {
		t.Errorf("leaf certificate can sign certificates:\n%s", text)
	}
	if t.Failed() {
		t.Logf("openssl x509 -text:\n%s", text)
	}

	agent, err := f.ca.Sign(t.Context(), ca.AgentRequest("opus", "ct1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	text = openssltest.Must(t, "x509", "-in", leafFile(t, agent), "-noout", "-text")
	if !strings.Contains(text, "URI:spiffe://mesh.local/agent/ct1/opus") || !strings.Contains(text, "TLS Web Client Authentication") {
		t.Errorf("agent certificate lacks its SPIFFE ID or client usage:\n%s", text)
	}
	if strings.Contains(text, "DNS:") || strings.Contains(text, "Server Authentication") {
		t.Errorf("agent certificate carries server names or usage:\n%s", text)
	}

	for _, c := range []struct {
		path, want string
	}{
		{f.rootPath(), "CA:TRUE, pathlen:1"},
		{f.intPath(), "CA:TRUE, pathlen:0"},
	} {
		text := openssltest.Must(t, "x509", "-in", c.path, "-noout", "-text")
		for _, want := range []string{c.want, "Certificate Sign, CRL Sign"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: openssl x509 -text lacks %q", filepath.Base(c.path), want)
			}
		}
	}
}

// TestOpenSSLCSRs signs CSRs openssl made and refuses the ones it must.
func TestOpenSSLCSRs(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()

	// Each CSR is openssl's for key, cn and addext, then mangled if set.
	cases := []struct {
		name    string
		key     ca.KeyType
		cn      string
		addext  []string
		mangle  func(t testing.TB, pemCSR []byte) []byte
		req     ca.Request
		wantErr error
		wantMsg string
	}{
		{name: "agent CSR with its SPIFFE ID", key: ca.KeyECDSAP256, cn: "opus@ct1", addext: []string{"subjectAltName=URI:spiffe://mesh.local/agent/ct1/opus"},
			req: ca.Request{Profile: ca.ProfileAgent}},
		{name: "CA:TRUE", key: ca.KeyECDSAP256, cn: "ct3.mesh", addext: []string{"basicConstraints=critical,CA:TRUE"},
			req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "CA:TRUE"},
		{name: "corrupted signature", key: ca.KeyECDSAP256, cn: "ct4.mesh", mangle: corruptSignature,
			req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrBadCSR, wantMsg: "signature does not verify"},
		{name: "altered subject", key: ca.KeyEd25519, cn: "ct5.mesh",
			mangle: func(t testing.TB, pemCSR []byte) []byte {
				b, _ := pem.Decode(pemCSR)
				der := bytes.Replace(b.Bytes, []byte("ct5.mesh"), []byte("ct6.mesh"), 1)
				return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
			},
			req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrBadCSR, wantMsg: "signature does not verify"},
		{name: "another node's DNS name", key: ca.KeyECDSAP256, cn: "ct7.mesh", addext: []string{"subjectAltName=DNS:ct1.mesh"},
			req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "DNS:ct1.mesh"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := opensslCSR(t, tc.key, tc.cn, tc.addext...)
			if tc.mangle != nil {
				data = tc.mangle(t, data)
			}
			path := writeFile(t, t.TempDir(), "req.csr", data)
			// The judge agrees on which CSRs are well signed.
			// (OpenSSL 3.0 exits 0 either way; its verdict is in the output.)
			out, verr := openssltest.Run(t, "req", "-in", path, "-noout", "-verify")
			good := verr == nil && strings.Contains(out, "verify OK") && !strings.Contains(out, "failure")
			if wantBad := errors.Is(tc.wantErr, ca.ErrBadCSR); wantBad == good {
				t.Fatalf("openssl req -verify: err=%v, want failure=%v\n%s", verr, wantBad, out)
			}
			before := f.storeState(t)
			csr, err := ca.ParseCSR(data)
			if err != nil {
				t.Fatalf("ParseCSR: %v", err)
			}
			is, err := f.ca.Sign(ctx, tc.req, ca.FromCSR(csr))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				openssltest.RequireVerifies(t, f.rootPath(), []string{f.intPath()}, leafFile(t, is), "-purpose", "sslclient")
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Sign: got %v, want %v mentioning %q", err, tc.wantErr, tc.wantMsg)
			}
			f.requireStoreUnchanged(t, before)
			f.requireLastAudit(t, "cert.issue", "refused", tc.wantMsg)
		})
	}
}

// corruptSignature flips the last byte of a PEM CSR, which lies in its
// signature, keeping the DER well formed.
func corruptSignature(t testing.TB, pemCSR []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(pemCSR)
	if b == nil {
		t.Fatal("no PEM block in CSR")
	}
	der := bytes.Clone(b.Bytes)
	der[len(der)-1] ^= 0xff
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
