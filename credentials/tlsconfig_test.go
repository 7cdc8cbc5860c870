package credentials_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// end is one side's outcome of a handshake.
type end struct {
	err  error
	peer *x509.Certificate
}

// tlsServer accepts TLS connections on loopback with one config for its
// whole life, and reports each handshake's outcome.
type tlsServer struct {
	addr    string
	results chan end
}

func serve(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &tlsServer{addr: ln.Addr().String(), results: make(chan end, 16)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := conn.(*tls.Conn)
				defer tc.Close()
				tc.SetDeadline(time.Now().Add(wait))
				var e end
				if e.err = tc.Handshake(); e.err == nil {
					if peers := tc.ConnectionState().PeerCertificates; len(peers) > 0 {
						e.peer = peers[0]
					}
					_, e.err = tc.Write([]byte("ok"))
				}
				s.results <- e
			}()
		}
	}()
	return s
}

// dial handshakes with cfg and returns what each side saw. The client
// reads a first message, so a refusal of its certificate, which TLS 1.3
// reports after the client's handshake, is seen too.
func (s *tlsServer) dial(t *testing.T, cfg *tls.Config) (client, server end) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", s.addr, cfg)
	if err != nil {
		client.err = err
	} else {
		conn.SetDeadline(time.Now().Add(wait))
		_, client.err = io.ReadFull(conn, make([]byte, 2))
		client.peer = conn.ConnectionState().PeerCertificates[0]
		conn.Close()
	}
	select {
	case server = <-s.results:
	case <-time.After(wait):
		t.Fatal("the server reported no handshake")
	}
	return client, server
}

// requireOK fails unless both sides completed the handshake, and returns
// the certificates each saw of the other.
func (s *tlsServer) requireOK(t *testing.T, cfg *tls.Config) (serverCert, clientCert *x509.Certificate) {
	t.Helper()
	c, srv := s.dial(t, cfg)
	if c.err != nil || srv.err != nil {
		t.Fatalf("handshake refused: client %v, server %v", c.err, srv.err)
	}
	return c.peer, srv.peer
}

func mustHolder(t *testing.T, c *credentials.Credentials) *credentials.Holder {
	t.Helper()
	h, err := credentials.NewHolder(c)
	if err != nil {
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
	srv := serve(t, credentials.ServerConfig(srvH, credentials.AuthorizeIdentity("client")))
	cli := credentials.ClientConfig(cliH, credentials.AuthorizeIdentity("server"))

	gotSrv, gotCli := srv.requireOK(t, cli)
	if !sameCert(gotSrv, srvCreds.Certificate) || !sameCert(gotCli, cliCreds.Certificate) {
		t.Fatal("the peers did not present the sources' certificates")
	}

	// The server's certificate rotates.
	rotated := creds(t, a, "server", a)
	set(t, srvH, rotated)
	if gotSrv, _ = srv.requireOK(t, cli); !sameCert(gotSrv, rotated.Certificate) {
		t.Errorf("after rotation the server presented serial %x, want %x", gotSrv.SerialNumber, rotated.Certificate.Leaf.SerialNumber)
	}

	// The client's roots move to B: the server's A certificate is refused...
	set(t, cliH, &credentials.Credentials{Certificate: cliCreds.Certificate, Roots: []*x509.Certificate{b.Root}})
	c, s := srv.dial(t, cli)
	if !errors.Is(c.err, credentials.ErrUntrusted) || s.err == nil {
		t.Fatalf("a server certificate outside the new roots: client %v, server %v", c.err, s.err)
	}
	// ...until the server rotates to a certificate from B.
	fromB := creds(t, b, "server", a)
	set(t, srvH, fromB)
	if gotSrv, _ = srv.requireOK(t, cli); !sameCert(gotSrv, fromB.Certificate) {
		t.Error("the server's certificate from B was not presented")
	}

	// The server's roots move to B: the client's A certificate is refused...
	set(t, srvH, &credentials.Credentials{Certificate: fromB.Certificate, Roots: []*x509.Certificate{b.Root}})
	c, s = srv.dial(t, cli)
	if !errors.Is(s.err, credentials.ErrUntrusted) || c.err == nil {
		t.Fatalf("a client certificate outside the server's new roots: client %v, server %v", c.err, s.err)
	}
	// ...until the client rotates too.
	cliFromB := creds(t, b, "client", b)
	set(t, cliH, cliFromB)
	if _, gotCli = srv.requireOK(t, cli); !sameCert(gotCli, cliFromB.Certificate) {
		t.Error("the client's certificate from B was not presented")
	}
}

// TestServerConfigRefuses: clients a server must turn away.
func TestServerConfigRefuses(t *testing.T) {
	t.Parallel()
	a, b := pkitest.NewRoot(t, "root A"), pkitest.NewRoot(t, "root B")
	inter := a.Intermediate(t, "inter A")
	srv := serve(t, credentials.ServerConfig(mustHolder(t, creds(t, a, "server", a)), credentials.AuthorizeIdentity("client")))
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
			c, s := srv.dial(t, tc.cfg)
			if tc.want == nil && tc.msg == "" {
				if c.err != nil || s.err != nil {
					t.Fatalf("refused: client %v, server %v", c.err, s.err)
				}
				return
			}
			if c.err == nil || s.err == nil {
				t.Fatalf("accepted: client %v, server %v", c.err, s.err)
			}
			if tc.want != nil && !errors.Is(s.err, tc.want) {
				t.Errorf("server error %v, want %v", s.err, tc.want)
			}
			if !strings.Contains(s.err.Error(), tc.msg) {
				t.Errorf("server error %q, want it to say %q", s.err, tc.msg)
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
			srv := serve(t, &tls.Config{Certificates: []tls.Certificate{tc.server}})
			c, _ := srv.dial(t, credentials.ClientConfig(mustHolder(t, tc.creds), tc.auth))
			if tc.want == nil {
				if c.err != nil {
					t.Fatalf("refused: %v", c.err)
				}
				return
			}
			if !errors.Is(c.err, tc.want) || !strings.Contains(c.err.Error(), tc.msg) {
				t.Errorf("client error %v, want %v saying %q", c.err, tc.want, tc.msg)
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
	srv := serve(t, credentials.ServerConfig(srvH, credentials.AuthorizeAny()))
	cli := credentials.ClientConfig(mustHolder(t, creds(t, a, "client", a)), credentials.AuthorizeAny())
	srv.requireOK(t, cli)
	srvH.Close()
	c, s := srv.dial(t, cli)
	if c.err == nil || !errors.Is(s.err, credentials.ErrClosed) {
		t.Errorf("handshake with a closed source: client %v, server %v", c.err, s.err)
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
