package meshauth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/meshauth"
)

const grpcPolicy = `
rules:
  - name: checkers
    who: [opus@ct111]
    grpc: [/grpc.health.v1.Health/Check]
  - name: watchers
    who: ["*@ct112"]
    grpc: ["/grpc.health.v1.Health/*"]
`

func TestGRPC(t *testing.T) {
	w := newWorld(t)
	sessions, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: t.TempDir() + "/keys", Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	a := newAuth(t, w, meshauth.Config{Authorizer: mustPolicy(t, grpcPolicy).Authorize, Tokens: sessions})
	server := pkitest.NewRoot(t, "server root")
	serverTLS := serverCertificate(t, server)
	var mu sync.Mutex
	var seen []string
	record := func(ctx context.Context) {
		c, _ := meshauth.FromContext(ctx)
		mu.Lock()
		name := c.Name
		if c.Session != nil {
			name += "+session"
		}
		seen = append(seen, name)
		mu.Unlock()
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverTLS}, ClientAuth: tls.RequestClientCert})),
		grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor(), func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(a.StreamServerInterceptor(), func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context())
			return h(srv, ss)
		}))
	healthpb.RegisterHealthServer(s, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(s.Stop)

	roots := x509.NewCertPool()
	roots.AddCert(server.Cert)
	dial := func(cert *tls.Certificate) healthpb.HealthClient {
		cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	opus, haiku, sonnet := agentOf(t, w.mesh, "opus", "ct111"), agentOf(t, w.mesh, "haiku", "ct112"), agentOf(t, w.mesh, "sonnet", "ct111")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	check := func(c healthpb.HealthClient, ctx context.Context) codes.Code {
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		return status.Code(err)
	}
	watch := func(c healthpb.HealthClient) (codes.Code, string) {
		st, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = st.Recv()
		}
		return status.Code(err), status.Convert(err).Message()
	}
	if got := check(dial(&opus), ctx); got != codes.OK {
		t.Errorf("unary allowed: %v", got)
	}
	if got, msg := watch(dial(&opus)); got != codes.PermissionDenied || !strings.HasPrefix(msg, meshauth.ReasonForbidden) {
		t.Errorf("stream denied: %v %s", got, msg)
	}
	if got, _ := watch(dial(&haiku)); got != codes.OK {
		t.Errorf("stream allowed: %v", got)
	}
	if got := check(dial(&sonnet), ctx); got != codes.PermissionDenied {
		t.Errorf("unary denied: %v", got)
	}
	if got := check(dial(nil), ctx); got != codes.Unauthenticated {
		t.Errorf("no certificate: %v", got)
	}
	tok := mintFor(t, sessions, w, &opus)
	oc := dial(&opus)
	if got := check(oc, metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)); got != codes.OK {
		t.Errorf("with its session token: %v", got)
	}
	if got := check(dial(&sonnet), metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)); got != codes.Unauthenticated {
		t.Errorf("a token on another certificate: %v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, ",") != "opus@ct111,haiku@ct112,opus@ct111+session" {
		t.Errorf("callers in the handlers' context: %v", seen)
	}
}

// mintFor mints a session token for cert through a verified Caller.
func mintFor(t *testing.T, s *meshauth.Sessions, w *world, cert *tlsCert) string {
	t.Helper()
	p, err := w.chain.Verify(context.Background(), []*x509.Certificate{cert.Leaf})
	if err != nil {
		t.Fatal(err)
	}
	c := &meshauth.Caller{Name: p.Identity.CommonName(), Peer: p}
	tok, _, err := s.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
