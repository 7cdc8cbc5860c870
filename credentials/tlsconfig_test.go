package credentials_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/tlstest"
)

func mustHolder(t *testing.T, c *credentials.Credentials) *credentials.Holder {
	t.Helper()
	h := new(credentials.Holder)
	if err := h.Set(c); err != nil {
		t.Fatal(err)
	}
	return h
}

func set(t *testing.T, h *credentials.Holder, c *credentials.Credentials) {
	t.Helper()
	if err := h.Set(c); err != nil {
		t.Fatal(err)
	}
}

func sameCert(a *x509.Certificate, b tls.Certificate) bool { return a != nil && a.Equal(b.Leaf) }

// TestTLSRotation: one listener and one client config for the whole test;
// every rotation of a certificate or of the roots applies at the next
// handshake.
func TestTLSRotation(t *testing.T) {
	t.Parallel()
	a, b := pkitest.NewRoot(t, "root A"), pkitest.NewRoot(t, "root B")
	srvCreds := creds(t, a, "server", a)
	srvH := mustHolder(t, srvCreds)
	cliCreds := creds(t, a, "client", a)
	cliH := mustHolder(t, cliCreds)
	srv := tlstest.Serve(t, credentials.ServerConfig(srvH, credentials.AuthorizeIdentity("client")))
	cli := credentials.ClientConfig(cliH, credentials.AuthorizeIdentity("server"))

	gotSrv, gotCli := srv.RequireOK(t, cli)
	if !sameCert(gotSrv, srvCreds.Certificate) || !sameCert(gotCli, cliCreds.Certificate) {
		t.Fatal("the peers did not present the sources' certificates")
	}

	// The server's certificate rotates.
	rotated := creds(t, a, "server", a)
	set(t, srvH, rotated)
	if gotSrv, _ = srv.RequireOK(t, cli); !sameCert(gotSrv, rotated.Certificate) {
		t.Errorf("after rotation the server presented serial %x, want %x", gotSrv.SerialNumber, rotated.Certificate.Leaf.SerialNumber)
	}

	// The client's roots move to B: the server's A certificate is refused...
	set(t, cliH, &credentials.Credentials{Certificate: cliCreds.Certificate, Roots: []*x509.Certificate{b.Root}})
	c, s := srv.Dial(t, cli)
	if !errors.Is(c.Err, credentials.ErrUntrusted) || s.Err == nil {
		t.Fatalf("a server certificate outside the new roots: client %v, server %v", c.Err, s.Err)
	}
	// ...until the server rotates to a certificate from B.
	fromB := creds(t, b, "server", a)
	set(t, srvH, fromB)
	if gotSrv, _ = srv.RequireOK(t, cli); !sameCert(gotSrv, fromB.Certificate) {
		t.Error("the server's certificate from B was not presented")
	}

	// The server's roots move to B: the client's A certificate is refused...
	set(t, srvH, &credentials.Credentials{Certificate: fromB.Certificate, Roots: []*x509.Certificate{b.Root}})
	c, s = srv.Dial(t, cli)
	if !errors.Is(s.Err, credentials.ErrUntrusted) || c.Err == nil {
		t.Fatalf("a client certificate outside the server's new roots: client %v, server %v", c.Err, s.Err)
	}
	// ...until the client rotates too.
	cliFromB := creds(t, b, "client", b)
	set(t, cliH, cliFromB)
	if _, gotCli = srv.RequireOK(t, cli); !sameCert(gotCli, cliFromB.Certificate) {
		t.Error("the client's certificate from B was not presented")
	}
}

// TestServerConfigRefuses: clients a server must turn away.
func TestServerConfigRefuses(t *testing.T) {
	t.Parallel()
	a, b := pkitest.NewRoot(t, "root A"), pkitest.NewRoot(t, "root B")
	inter := a.Intermediate(t, "inter A")
	srv := tlstest.Serve(t, credentials.ServerConfig(mustHolder(t, creds(t, a, "server", a)), credentials.AuthorizeIdentity("client")))
	client := func(cert tls.Certificate) *tls.Config {
		return credentials.ClientConfig(mustHolder(t, &credentials.Credentials{Certificate: cert, Roots: []*x509.Certificate{a.Root}}), credentials.AuthorizeAny())
	}
	cases := []struct {
		name string
		cfg  *tls.Config
		want error // nil: accepted
		msg  string
	}{
		{"from the roots", client(issue(t, a, "client")), nil, ""},
		{"through an intermediate it presents", client(issue(t, inter, "client")), nil, ""},
		{"not chaining to the roots", client(issue(t, b, "client")), credentials.ErrUntrusted, "certificate signed by unknown authority"},
		{"not for client auth", client(issue(t, a, "client", pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))), credentials.ErrUntrusted, "incompatible key usage"},
		{"another name", client(issue(t, a, "mallory")), credentials.ErrUnauthorized, `common name "mallory"`},
		{"no certificate", &tls.Config{InsecureSkipVerify: true}, nil, "client didn't provide a certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s := srv.Dial(t, tc.cfg)
			if tc.want == nil && tc.msg == "" {
				if c.Err != nil || s.Err != nil {
					t.Fatalf("refused: client %v, server %v", c.Err, s.Err)
				}
				return
			}
			if c.Err == nil || s.Err == nil {
				t.Fatalf("accepted: client %v, server %v", c.Err, s.Err)
			}
			if tc.want != nil && !errors.Is(s.Err, tc.want) {
				t.Errorf("server error %v, want %v", s.Err, tc.want)
			}
			if !strings.Contains(s.Err.Error(), tc.msg) {
				t.Errorf("server error %q, want it to say %q", s.Err, tc.msg)
			}
		})
	}
}

// TestClientConfigRefuses: servers a client must turn away, SPIFFE bundles
// among them.
func TestClientConfigRefuses(t *testing.T) {
	t.Parallel()
	a, b := pkitest.NewRoot(t, "root A"), pkitest.NewRoot(t, "root B")
	tdA, tdB := td(t, "a.test"), td(t, "b.test")
	mine := issue(t, a, "client")
	plain := &credentials.Credentials{Certificate: mine, Roots: []*x509.Certificate{a.Root}}
	spiffe := &credentials.Credentials{
		Certificate: mine,
		Roots:       []*x509.Certificate{a.Root, b.Root},
		Bundles:     map[spiffeid.TrustDomain][]*x509.Certificate{tdA: {a.Root}, tdB: {b.Root}},
	}
	memberOfA := credentials.AuthorizeMemberOf(tdA)
	cases := []struct {
		name   string
		server tls.Certificate
		creds  *credentials.Credentials
		auth   credentials.Authorizer
		want   error // nil: accepted
		msg    string
	}{
		{"from the roots", issue(t, a, "ct1.mesh"), plain, credentials.AuthorizeIdentity("ct1.mesh"), nil, ""},
		{"not chaining to the roots", issue(t, b, "ct1.mesh"), plain, credentials.AuthorizeAny(), credentials.ErrUntrusted, "unknown authority"},
		{"another name", issue(t, a, "ct2.mesh"), plain, credentials.AuthorizeIdentity("ct1.mesh"), credentials.ErrUnauthorized, `"ct2.mesh" is not one of ["ct1.mesh"]`},
		{"not for server auth", issue(t, a, "ct1.mesh", pkitest.ExtKeyUsage(x509.ExtKeyUsageClientAuth)), plain, credentials.AuthorizeAny(), credentials.ErrUntrusted, "incompatible key usage"},
		{"no Authorizer", issue(t, a, "ct1.mesh"), plain, nil, credentials.ErrUnauthorized, "no Authorizer"},
		{"no roots", issue(t, a, "ct1.mesh"), &credentials.Credentials{Certificate: mine}, credentials.AuthorizeAny(), credentials.ErrUntrusted, "no roots"},
		{"both checks", issue(t, a, "ct1.mesh"), plain, credentials.AuthorizeAllOf(credentials.AuthorizeAny(), credentials.AuthorizeIdentity("ct9.mesh")), credentials.ErrUnauthorized, "ct9.mesh"},
		{"SPIFFE ID of its bundle", issue(t, a, "", pkitest.URI("spiffe://a.test/srv")), spiffe, memberOfA, nil, ""},
		{"SPIFFE ID signed by another domain's CA", issue(t, b, "", pkitest.URI("spiffe://a.test/srv")), spiffe, memberOfA, credentials.ErrUntrusted, "unknown authority"},
		{"SPIFFE ID of no bundle", issue(t, a, "", pkitest.URI("spiffe://c.test/srv")), spiffe, credentials.AuthorizeAny(), credentials.ErrUntrusted, `no bundle for trust domain "c.test"`},
		{"SPIFFE ID of another domain", issue(t, b, "", pkitest.URI("spiffe://b.test/srv")), spiffe, memberOfA, credentials.ErrUnauthorized, `SPIFFE ID spiffe://b.test/srv: unexpected trust domain "b.test"`},
		{"no SPIFFE ID, verified by the roots", issue(t, b, "ct1.mesh"), spiffe, credentials.AuthorizeAny(), nil, ""},
		{"no SPIFFE ID, SPIFFE authorizer", issue(t, b, "ct1.mesh"), spiffe, memberOfA, credentials.ErrUnauthorized, "no SPIFFE ID: certificate contains no URI SAN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := tlstest.Serve(t, &tls.Config{Certificates: []tls.Certificate{tc.server}})
			c, _ := srv.Dial(t, credentials.ClientConfig(mustHolder(t, tc.creds), tc.auth))
			if tc.want == nil {
				if c.Err != nil {
					t.Fatalf("refused: %v", c.Err)
				}
				return
			}
			if !errors.Is(c.Err, tc.want) || !strings.Contains(c.Err.Error(), tc.msg) {
				t.Errorf("client error %v, want %v saying %q", c.Err, tc.want, tc.msg)
			}
		})
	}
}

// TestTLSClosedSource: a closed source presents nothing and verifies no
// one.
func TestTLSClosedSource(t *testing.T) {
	t.Parallel()
	a := pkitest.NewRoot(t, "root A")
	srvH := mustHolder(t, creds(t, a, "server", a))
	srv := tlstest.Serve(t, credentials.ServerConfig(srvH, credentials.AuthorizeAny()))
	cli := credentials.ClientConfig(mustHolder(t, creds(t, a, "client", a)), credentials.AuthorizeAny())
	srv.RequireOK(t, cli)
	srvH.Close()
	c, s := srv.Dial(t, cli)
	if c.Err == nil || !errors.Is(s.Err, credentials.ErrClosed) {
		t.Errorf("handshake with a closed source: client %v, server %v", c.Err, s.Err)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	a := pkitest.NewRoot(t, "root A")
	h := mustHolder(t, creds(t, a, "x", a))
	srv := credentials.ServerConfig(h, credentials.AuthorizeAny())
	cli := credentials.ClientConfig(h, credentials.AuthorizeAny())
	if srv.MinVersion != tls.VersionTLS12 || cli.MinVersion != tls.VersionTLS12 {
		t.Error("MinVersion is not TLS 1.2")
	}
	if srv.ClientAuth != tls.RequireAnyClientCert {
		t.Errorf("ClientAuth = %v, want RequireAnyClientCert", srv.ClientAuth)
	}
	if srv.ClientCAs != nil || cli.RootCAs != nil || len(srv.Certificates) != 0 || len(cli.Certificates) != 0 {
		t.Error("the configs copy credentials instead of reading the source")
	}
}
