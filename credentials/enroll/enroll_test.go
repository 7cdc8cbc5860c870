package enroll_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

const secret = "s3cret-bootstrap-value"

func TestEnroll(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		presentRoot bool
		client      func(s *enrolltest.Server) *enroll.Client
	}{
		{"roots", false, func(s *enrolltest.Server) *enroll.Client {
			return &enroll.Client{Server: s.URL, Roots: s.Roots()}
		}},
		{"pin, root fetched from /bundle", false, func(s *enrolltest.Server) *enroll.Client {
			return &enroll.Client{Server: s.URL, RootFingerprint: s.RootFingerprint()}
		}},
		{"pin, root presented in the handshake", true, func(s *enrolltest.Server) *enroll.Client {
			return &enroll.Client{Server: s.URL, RootFingerprint: "SHA256:" + strings.ToUpper(colons(s.RootFingerprint()))}
		}},
		{"roots and pin", false, func(s *enrolltest.Server) *enroll.Client {
			return &enroll.Client{Server: s.URL, Roots: s.Roots(), RootFingerprint: s.RootFingerprint()}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret, PresentRoot: tc.presentRoot})
			c := tc.client(s)
			key := pkitest.NewKey(t)
			b, err := c.Enroll(t.Context(), secret, "ct112", key)
			if err != nil {
				t.Fatal(err)
			}
			if cn := b.Certificate.Subject.CommonName; cn != "ct112.mesh" {
				t.Errorf("CN = %q", cn)
			}
			if !b.Certificate.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Error("certificate is not for the node's key")
			}
			if len(b.Chain) != 2 || !b.Chain[0].Equal(s.Intermediate) || !b.Chain[1].Equal(s.Root) {
				t.Errorf("chain = %v, want intermediate, root", b.Chain)
			}
			if b.Serial != b.Certificate.SerialNumber.Text(16) || !b.NotAfter.Equal(b.Certificate.NotAfter) {
				t.Errorf("serial %s / not after %s do not match the certificate", b.Serial, b.NotAfter)
			}
			if id, err := identity.FromCertificate(b.Certificate, spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)); err != nil || id.Node != "ct112" {
				t.Errorf("identity %v, %v", id, err)
			}
			// The credential went to /enroll and nowhere else.
			for _, r := range s.Requests() {
				if r.Path != "/enroll" && r.Authorization != "" {
					t.Errorf("%s %s carried an Authorization header", r.Method, r.Path)
				}
			}
			// Later calls work over mTLS with the new certificate.
			if err := c.Health(t.Context(), b.TLSCertificate(key)); err != nil {
				t.Errorf("health with the new certificate: %v", err)
			}
		})
	}
}

// colons writes a hex fingerprint the way openssl prints it.
func colons(hex string) string {
	var parts []string
	for i := 0; i < len(hex); i += 2 {
		parts = append(parts, hex[i:i+2])
	}
	return strings.Join(parts, ":")
}

func TestEnrollTrust(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	other := enrolltest.NewServer(t, enrolltest.Config{})
	wrongPin := other.RootFingerprint()

	for _, tc := range []struct {
		name    string
		client  *enroll.Client
		wantErr error
		wantMsg string
	}{
		{"no trust", &enroll.Client{Server: s.URL}, enroll.ErrNoTrust, "--ca-fingerprint"},
		{"wrong pin", &enroll.Client{Server: s.URL, RootFingerprint: wrongPin}, enroll.ErrUntrustedServer, "no root with SHA-256 fingerprint"},
		{"wrong roots", &enroll.Client{Server: s.URL, Roots: other.Roots()}, enroll.ErrUntrustedServer, "unknown authority"},
		{"roots right, pin wrong", &enroll.Client{Server: s.URL, Roots: s.Roots(), RootFingerprint: wrongPin}, enroll.ErrUntrustedServer, "does not chain to the root"},
		{"malformed pin", &enroll.Client{Server: s.URL, RootFingerprint: "abc"}, nil, "64 hex digits"},
		{"plain http", &enroll.Client{Server: strings.Replace(s.URL, "https", "http", 1), Roots: s.Roots()}, nil, "TLS only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Enroll(t.Context(), secret, "ct112", pkitest.NewKey(t))
			if err == nil {
				t.Fatal("enrolled")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("err = %q, want it to mention %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error reveals the secret: %v", err)
			}
		})
	}
	// No refused client ever sent the secret.
	for _, r := range s.Requests() {
		if r.Authorization != "" {
			t.Errorf("%s %s carried the credential to an untrusted server", r.Method, r.Path)
		}
	}
}

// TestEnrollPinnedHostname shows that the pin does not excuse a
// certificate for another host.
func TestEnrollPinnedHostname(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	// The fake's certificate names localhost, 127.0.0.1 and meshd.mesh,
	// not 127.0.0.2: dial 127.0.0.1 under another name.
	c := &enroll.Client{
		Server:          strings.Replace(s.URL, "127.0.0.1", "ct999.mesh", 1),
		RootFingerprint: s.RootFingerprint(),
		HTTPClient:      &http.Client{Transport: redirectDial(s.URL)},
	}
	_, err := c.Enroll(t.Context(), secret, "ct112", pkitest.NewKey(t))
	if !errors.Is(err, enroll.ErrUntrustedServer) {
		t.Fatalf("err = %v, want ErrUntrustedServer", err)
	}
}

func TestEnrollRefusals(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, tc := range []struct {
		name       string
		setup      func(s *enrolltest.Server)
		credential string
		node       string
		wantErr    error
		wantStatus int
		wantMsg    string
		wantRetry  time.Duration
	}{
		{name: "wrong secret", credential: "nope", node: "ct112", wantErr: enroll.ErrUnauthorized, wantStatus: 401, wantMsg: "invalid bootstrap credential"},
		{name: "expired token", setup: func(s *enrolltest.Server) { s.AddToken("tok-4f9a2b", "ct112", now.Add(-time.Minute)) },
			credential: "tok-4f9a2b", node: "ct112", wantErr: enroll.ErrUnauthorized, wantStatus: 401},
		{name: "token for another node", setup: func(s *enrolltest.Server) { s.AddToken("tok-4f9a2b", "ct113", now.Add(time.Hour)) },
			credential: "tok-4f9a2b", node: "ct112", wantErr: enroll.ErrForbidden, wantStatus: 403, wantMsg: "another node"},
		{name: "already enrolled", setup: func(s *enrolltest.Server) {
			c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
			if _, err := c.Enroll(t.Context(), secret, "ct112", pkitest.NewKey(t)); err != nil {
				t.Fatal(err)
			}
		}, credential: secret, node: "ct112", wantErr: enroll.ErrConflict, wantStatus: 409, wantMsg: "revoke"},
		{name: "rate limited", setup: func(s *enrolltest.Server) { s.FailNext("/enroll", 1, 429, "too many attempts", "12") },
			credential: secret, node: "ct112", wantErr: enroll.ErrRateLimited, wantStatus: 429, wantMsg: "retry in 12s", wantRetry: 12 * time.Second},
		{name: "bad request", setup: func(s *enrolltest.Server) { s.FailNext("/enroll", 1, 400, "bad CSR: truncated", "") },
			credential: secret, node: "ct112", wantErr: enroll.ErrBadRequest, wantStatus: 400, wantMsg: "bad CSR: truncated"},
		{name: "server error", setup: func(s *enrolltest.Server) { s.FailNext("/enroll", 1, 503, "store unavailable", "") },
			credential: secret, node: "ct112", wantErr: enroll.ErrUnavailable, wantStatus: 503, wantMsg: "store unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
			if tc.setup != nil {
				tc.setup(s)
			}
			c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
			_, err := c.Enroll(t.Context(), tc.credential, tc.node, pkitest.NewKey(t))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var e *enroll.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T is not an *enroll.Error", err)
			}
			if e.Status != tc.wantStatus || e.Route != "/enroll" || e.RetryAfter != tc.wantRetry {
				t.Errorf("status %d route %s retry %s, want %d /enroll %s", e.Status, e.Route, e.RetryAfter, tc.wantStatus, tc.wantRetry)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("err = %q, want it to contain %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), tc.credential) && tc.credential != "" {
				t.Errorf("error reveals the credential: %v", err)
			}
		})
	}
}

func TestEnrollLocalRefusals(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	if _, err := c.Enroll(t.Context(), secret, "CT_112", pkitest.NewKey(t)); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("bad node id: %v", err)
	}
	if _, err := c.Enroll(t.Context(), "", "ct112", pkitest.NewKey(t)); err == nil {
		t.Error("empty credential accepted")
	}
	if n := len(s.Requests()); n != 0 {
		t.Errorf("%d requests sent for refused input", n)
	}
}

func TestJoinTokenOnce(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	s.AddToken("join-tok", "ct112", time.Now().Add(time.Hour))
	c := &enroll.Client{Server: s.URL, RootFingerprint: s.RootFingerprint()}
	if _, err := c.Enroll(t.Context(), "join-tok", "ct112", pkitest.NewKey(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enroll(t.Context(), "join-tok", "ct112", pkitest.NewKey(t)); !errors.Is(err, enroll.ErrUnauthorized) {
		t.Errorf("second use: %v, want ErrUnauthorized", err)
	}
}

// enrolled enrolls node ct112 and returns its certificate.
func enrolled(t *testing.T, s *enrolltest.Server, c *enroll.Client) (crypto.Signer, *enroll.Bundle) {
	t.Helper()
	key := pkitest.NewKey(t)
	b, err := c.Enroll(t.Context(), secret, "ct112", key)
	if err != nil {
		t.Fatal(err)
	}
	return key, b
}

// opusCert returns agent opus's key and certificate, issued through c
// to node.
func opusCert(t *testing.T, c *enroll.Client, node tls.Certificate) (crypto.Signer, *enroll.Bundle) {
	t.Helper()
	akey := pkitest.NewKey(t)
	ab, err := c.AgentCert(t.Context(), node, "opus", akey)
	if err != nil {
		t.Fatal(err)
	}
	return akey, ab
}

func TestAgentCert(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	key, b := enrolled(t, s, c)
	node := b.TLSCertificate(key)

	akey, ab := opusCert(t, c, node)
	if cn := ab.Certificate.Subject.CommonName; cn != "opus@ct112" {
		t.Errorf("CN = %q", cn)
	}
	if reqs := s.Requests(); reqs[len(reqs)-1].ClientCN != "ct112.mesh" || reqs[len(reqs)-1].Authorization != "" {
		t.Errorf("agent-cert request: %+v, want mTLS as ct112.mesh and no credential", reqs[len(reqs)-1])
	}

	// An agent certificate mints nothing.
	if _, err := c.AgentCert(t.Context(), ab.TLSCertificate(akey), "scout", pkitest.NewKey(t)); err == nil {
		t.Error("agent certificate minted an agent certificate")
	}
	// A revoked node is refused.
	s.Revoke(b.Serial, "ct112.mesh", "keyCompromise")
	if _, err := c.AgentCert(t.Context(), node, "scout", pkitest.NewKey(t)); !errors.Is(err, enroll.ErrForbidden) {
		t.Errorf("revoked node: %v, want ErrForbidden", err)
	}
}

func TestRenew(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	key, b := enrolled(t, s, c)
	node := b.TLSCertificate(key)
	akey := pkitest.NewKey(t)
	if _, err := c.AgentCert(t.Context(), node, "opus", akey); err != nil {
		t.Fatal(err)
	}

	res, err := c.Renew(t.Context(), node, key, []enroll.AgentKey{{ID: "opus", Key: akey}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Node.Serial == b.Serial || res.Node.Certificate.Subject.CommonName != "ct112.mesh" {
		t.Errorf("renewed node: serial %s (was %s), CN %q", res.Node.Serial, b.Serial, res.Node.Certificate.Subject.CommonName)
	}
	a := res.Agents["opus"]
	if a == nil || a.Certificate.Subject.CommonName != "opus@ct112" || len(a.Chain) != 2 {
		t.Fatalf("renewed agents: %+v", res.Agents)
	}

	s.Revoke(res.Node.Serial, "ct112.mesh", "superseded")
	_, err = c.Renew(t.Context(), res.Node.TLSCertificate(key), key, nil)
	if !errors.Is(err, enroll.ErrForbidden) || !strings.Contains(err.Error(), "enroll the node again") {
		t.Errorf("revoked renew: %v, want ErrForbidden with advice", err)
	}
}

// TestIssuedChecked shows that a certificate meshd answers is refused when
// it is not the one asked for.
func TestIssuedChecked(t *testing.T) {
	t.Parallel()
	ca := enrolltest.NewServer(t, enrolltest.Config{})
	stranger := ca.Issue(t, "ct112.mesh") // right name and CA, another key
	otherName := ca.Issue(t, "ct113.mesh")
	foreign := enrolltest.NewServer(t, enrolltest.Config{}).Issue(t, "ct112.mesh")

	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want string
	}{
		{"another key", stranger, "another key"},
		{"another name", otherName, `"ct113.mesh"`},
		{"another CA", foreign, "does not chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusCreated)
				json.NewEncoder(w).Encode(map[string]string{
					"certificate": string(pemOf(tc.cert.Leaf)),
					"chain":       string(pemOf(ca.Intermediate)) + string(pemOf(ca.Root)),
				})
			}))
			defer bad.Close()
			roots := ca.Roots()
			roots.AddCert(bad.Certificate())
			c := &enroll.Client{Server: bad.URL, Roots: roots}
			_, err := c.Enroll(t.Context(), secret, "ct112", pkitest.NewKey(t))
			if !errors.Is(err, enroll.ErrUntrustedServer) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrUntrustedServer mentioning %s", err, tc.want)
			}
		})
	}
}

func TestParseFingerprint(t *testing.T) {
	t.Parallel()
	const fp = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	for _, in := range []string{fp, strings.ToUpper(fp), colons(fp), "sha256:" + fp, "SHA256:" + strings.ToUpper(colons(fp)), " " + fp + "\n"} {
		got, err := enroll.ParseFingerprint(in)
		if err != nil || got != fp {
			t.Errorf("ParseFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", fp[:62], fp + "00", "sha1:" + fp, strings.Replace(fp, "9", "g", 1)} {
		if got, err := enroll.ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q) = %q, want an error", in, got)
		}
	}
}

func FuzzParseFingerprint(f *testing.F) {
	f.Add("sha256:9f:86")
	f.Add("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
	f.Fuzz(func(t *testing.T, s string) {
		fp, err := enroll.ParseFingerprint(s)
		if err != nil {
			return
		}
		if len(fp) != 64 || strings.ToLower(fp) != fp {
			t.Fatalf("ParseFingerprint(%q) = %q", s, fp)
		}
		again, err := enroll.ParseFingerprint(fp)
		if err != nil || again != fp {
			t.Fatalf("not idempotent: %q -> %q, %v", fp, again, err)
		}
	})
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// redirectDial returns a transport that connects every request to the
// address of serverURL, whatever host the URL names.
func redirectDial(serverURL string) *http.Transport {
	addr := strings.TrimPrefix(serverURL, "https://")
	return &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}
