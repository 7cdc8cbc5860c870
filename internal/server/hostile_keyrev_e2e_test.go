package server_test

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/openssltest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestHostileKeyCompromiseReachesEveryCertOfTheKey: a key is stolen. Its
// holder has three certificates under it: ka@n1, ka@n1's same-key renewal
// (the normal case) and kb@n1, and agents ka and kb registered over real
// TLS with the renewal and with kb@n1. Revoking the first certificate, one
// no agent uses any more, for keyCompromise must reach all three: both
// agents evicted and their open connections closed, all three serials on
// the CRL meshd serves, and a verifier reading only that CRL (openssl
// verify -crl_check, as a TLS terminator reading crl.pem would) refusing
// kb@n1's certificate. A bystander under another key is untouched.
func TestHostileKeyCompromiseReachesEveryCertOfTheKey(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict, poll: 20 * time.Millisecond})
	first, firstX := agentCert(t, e.ca.auth, "ka", "n1")
	renewal, renewalX := agentCert(t, e.ca.auth, "ka", "n1") // WithGeneratedKey keeps issued/ka@n1.key
	if !bytes.Equal(firstX.RawSubjectPublicKeyInfo, renewalX.RawSubjectPublicKeyInfo) || firstX.SerialNumber.Cmp(renewalX.SerialNumber) == 0 {
		t.Fatal("the renewal is not a second certificate of the same key")
	}
	kb, err := identity.NewAgent("kb", "n1")
	if err != nil {
		t.Fatal(err)
	}
	is, err := e.ca.auth.Sign(t.Context(), ca.Request{Profile: ca.ProfileAgent, Identity: kb}, ca.ForPublicKey(renewal.PrivateKey.(crypto.Signer).Public()))
	if err != nil {
		t.Fatal(err)
	}
	inter := e.ca.auth.ActiveIntermediate()
	other := tls.Certificate{Certificate: [][]byte{is.Cert.Raw, inter.Raw}, PrivateKey: renewal.PrivateKey}
	bystanderCert, bystanderX := agentCert(t, e.ca.auth, "kc", "n1")
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
	observer := e.client(&obsCert)

	connA, connB, bystander := e.dial(&renewal), e.dial(&other), e.dial(&bystanderCert)
	for _, reg := range []struct {
		conn *rawConn
		id   string
		port int
	}{{connA, "ka", 9600}, {connB, "kb", 9601}, {bystander, "kc", 9602}} {
		if r := reg.conn.mustDo("POST", "/heartbeat", heartbeat(reg.id, reg.port)); r.code != http.StatusOK {
			t.Fatalf("%s registers: %s", reg.id, r)
		}
	}

	r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": serialOf(first), "reason": "keyCompromise"})
	if r.code != http.StatusOK {
		t.Fatalf("POST /admin/revoke keyCompromise: %s", r)
	}
	var resp meshapi.RevokeResponse
	if err := json.Unmarshal(r.body, &resp); err != nil {
		t.Fatal(err)
	}
	want := []string{firstX.SerialNumber.Text(16), renewalX.SerialNumber.Text(16), is.Cert.SerialNumber.Text(16)}
	var got []string
	for _, rv := range resp.Revoked {
		got = append(got, rv.Serial)
		if rv.Reason != 1 {
			t.Errorf("revoked %s with reason %d, want keyCompromise (1)", rv.Serial, rv.Reason)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("the keyCompromise revocation answered revoked %v, want every certificate of the key %v", got, want)
	}

	// Each wait has its own generous bound: the events, not their
	// latency, are what this test asserts.
	for name, c := range map[string]*rawConn{"ka (renewal)": connA, "kb": connB} {
		if _, err := c.awaitClose(); err != nil {
			t.Errorf("%s's open connection after its key was revoked: %v", name, err)
		}
	}
	for _, id := range []string{"ka", "kb"} {
		eventually.True(t, id+" listed evicted", func() bool {
			a, _ := e.agents(observer, "").find(id)
			return a.Status == "evicted"
		})
	}
	for _, c := range []tls.Certificate{renewal, other} {
		if r := e.do(e.freshClient(&c), "POST", "/heartbeat", heartbeat("kb", 9601)); r.code != http.StatusForbidden {
			t.Errorf("a new connection with %s after the key was revoked: %s, want 403", serialOf(c), r)
		}
	}

	listed := e.crlSerials()
	for _, s := range want {
		if !listed[s] {
			t.Errorf("the served CRL lacks %s, a certificate of the compromised key (lists %v)", s, listed)
		}
	}
	if listed[bystanderX.SerialNumber.Text(16)] {
		t.Errorf("the served CRL lists the bystander %s", bystanderX.SerialNumber.Text(16))
	}

	// A verifier that knows only the CRL meshd serves.
	crl := doHeader(t, e.freshClient(nil), "GET", e.baseURL()+"/crl", http.Header{"Accept": {"application/x-pem-file"}}, nil)
	if crl.code != http.StatusOK {
		t.Fatalf("GET /crl: %s", crl)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"root.pem":      pemCert(e.ca.auth.Root()),
		"inter.pem":     pemCert(inter),
		"crl.pem":       crl.body,
		"kb.pem":        pemCert(is.Cert),
		"bystander.pem": pemCert(bystanderX),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(leaf string) (string, error) {
		return openssltest.Run(t, "verify", "-CAfile", filepath.Join(dir, "root.pem"), "-untrusted", filepath.Join(dir, "inter.pem"),
			"-crl_check", "-CRLfile", filepath.Join(dir, "crl.pem"), filepath.Join(dir, leaf))
	}
	if out, err := verify("bystander.pem"); err != nil {
		t.Fatalf("openssl verify -crl_check of the bystander against the served CRL: %v\n%s", err, out)
	}
	if out, err := verify("kb.pem"); err == nil || !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check accepted kb@n1, whose key was revoked for keyCompromise (%v):\n%s", err, out)
	}

	if r := bystander.mustDo("HEAD", "/heartbeat/kc", nil); r.code != http.StatusOK && r.code != http.StatusAccepted {
		t.Errorf("bystander's HEAD on its open connection: %s", r)
	}
	if b, _ := e.agents(observer, "").find("kc"); b.Status != "healthy" {
		t.Errorf("bystander: %+v", b)
	}
}

// pemCert is c in PEM form.
func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// TestE2ECRLSignedBesideIsResigned: while meshd runs, a CRL is signed
// beside it with a 3s validity (`meshctl --crl-validity 3s ca crl` on the
// same data directory). meshd re-signs it before that CRL's own
// next-update, with its own validity, instead of serving it expired until
// a third of its own --crl-validity has passed.
func TestE2ECRLSignedBesideIsResigned(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	served := func() []*x509.RevocationList {
		r := doHeader(t, e.freshClient(nil), "GET", e.baseURL()+"/crl", http.Header{"Accept": {"application/x-pem-file"}}, nil)
		if r.code != http.StatusOK {
			t.Fatalf("GET /crl: %s", r)
		}
		var out []*x509.RevocationList
		for rest := r.body; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				return out
			}
			crl, err := x509.ParseRevocationList(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, crl)
		}
	}
	// The CA's first CRL was signed a month ago (newMeshCA): meshd
	// re-signs it when it starts. Only then is the CRL signed beside it.
	eventually.True(t, "meshd re-signs the CRL it started with", func() bool {
		crls := served()
		return len(crls) > 0 && crls[0].NextUpdate.After(time.Now().Add(time.Hour))
	})
	cfg := e.ca.cfg
	cfg.CRLValidity = 3 * time.Second
	meshctl, err := ca.Open(t.Context(), cfg, e.ca.st)
	if err != nil {
		t.Fatal(err)
	}
	short, err := meshctl.RebuildCRL(t.Context())
	if err != nil || len(short) == 0 {
		t.Fatalf("RebuildCRL with a 3s validity = %d CRLs, %v", len(short), err)
	}
	eventually.True(t, "meshd re-signs the 3s CRL signed beside it", func() bool {
		crls := served()
		for _, crl := range crls {
			if !crl.NextUpdate.After(short[0].NextUpdate.Add(time.Hour)) {
				return false
			}
		}
		return len(crls) > 0
	})
}
