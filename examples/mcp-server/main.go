// Command mcp-server is an example MCP server (JSON-RPC over HTTP:
// initialize, tools/list, tools/call) protected by package meshauth:
// callers authenticate with their mesh certificate (mTLS), a policy file
// allow-lists each tool per agent, tools/list shows each caller only what
// it may call, and POST /session/attach mints session tokens bound to the
// caller's certificate. With --registry-url it follows meshd's
// revocations, so a revoked agent is refused at its next request.
// README.md beside it runs it against `make run`'s meshd with curl.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/watch"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9444", "address to serve on")
	certFile := flag.String("cert", "", "the server's certificate (a node certificate of the mesh CA), reloaded when it changes")
	keyFile := flag.String("key", "", "the key of --cert")
	caFile := flag.String("ca", "", "the mesh root certificate: callers' certificates must chain to it")
	td := flag.String("trust-domain", "mesh.local", "the mesh CA's SPIFFE trust domain")
	policy := flag.String("policy", "examples/mcp-server/policy.yaml", "the allow-list policy, reloaded when it changes")
	stateDir := flag.String("state-dir", "mcp-server-state", "where the session signing keys are kept (0700)")
	registry := flag.String("registry-url", "", "meshd's agent port, to follow its revocations (optional)")
	operators := flag.String("operators", "", "comma-separated mesh identities (opus@ct111, ct111.mesh) allowed every tool whatever the policy says (optional)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, *listen, *certFile, *keyFile, *caFile, *td, *policy, *stateDir, *registry, *operators); err != nil {
		log.Error("mcp-server stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, listen, certFile, keyFile, caFile, tdName, policyPath, stateDir, registry, operators string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if certFile == "" || keyFile == "" || caFile == "" {
		return errors.New("--cert, --key and --ca are required")
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	root, err := pemfile.ReadCert(caFile)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	certs, err := file.New(ctx, certFile, keyFile, "", file.WithLogger(log))
	if err != nil {
		return fmt.Errorf("--cert: %w", err)
	}
	defer certs.Close()
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := certs.Current()
		if err != nil {
			return nil, err
		}
		return &c.Certificate, nil
	}

	// Trust: the mesh CA; revocations: meshd's, followed live.
	revs := &trust.RevocationSet{}
	chain := trust.NewChain(revs, []trust.Backend{trust.NewLocalCA(td, root, nil)})
	if registry != "" {
		roots := x509.NewCertPool()
		roots.AddCert(root)
		w, err := watch.New(revs, watch.Config{Server: registry, Roots: roots, Logger: log,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return getCert(nil) }})
		if err != nil {
			return err
		}
		go w.Run(ctx)
	}
	pol, err := meshauth.OpenPolicyFile(ctx, policyPath, log)
	if err != nil {
		return err
	}
	defer pol.Close()
	sessions, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: stateDir, Issuer: "mcp-server"})
	if err != nil {
		return err
	}
	// The policy file decides, and --operators may do anything: their
	// names only on the mesh CA's certificates (AuthorizeIdentity).
	authorize := meshauth.Authorizer(pol.Authorize)
	if operators != "" {
		authorize = meshauth.AuthorizeAnyOf(meshauth.AuthorizeIdentity(strings.Split(operators, ",")...), pol.Authorize)
	}
	auth, err := meshauth.New(meshauth.Config{Chain: chain, Authorizer: authorize, Tokens: sessions, DecisionLog: log})
	if err != nil {
		return err
	}
	svc := &service{auth: auth, sessions: sessions, now: time.Now}
	srv := &http.Server{Handler: svc.handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute,
		// Client certificates are requested, not verified by crypto/tls:
		// meshauth verifies them, so a refusal is a 401 with a reason.
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert, ClientAuth: tls.RequestClientCert}}
	auth.Serve(srv)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("serving MCP", "addr", "https://"+ln.Addr().String()+"/mcp", "policy", policyPath)
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
