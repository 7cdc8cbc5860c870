package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/agent"
	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/watch"
)

// handshake runs one TLS handshake between a server and a client over
// loopback and returns each side's error.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		err = tc.HandshakeContext(t.Context())
		if err == nil {
			// TLS 1.3 clients finish before the server has verified
			// them: answer, so the client learns the outcome.
			_, err = tc.Write([]byte("ok"))
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	clientErr = tc.HandshakeContext(t.Context())
	if clientErr == nil {
		buf := make([]byte, 2)
		_, clientErr = tc.Read(buf)
	}
	return <-done, clientErr
}

// TestAgentToAgentTLS: ServerTLS and ClientTLS admit the mesh's agents,
// and refuse one meshd revoked as soon as the Watcher has the revocation.
func TestAgentToAgentTLS(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	// geo's server presents its node's certificate: the mesh CA's agent
	// certificates are for clients only.
	opusCreds, geoCreds := m.agent("opus", "ct111"), m.node("ct112")
	opus, geo := holder(t, opusCreds), holder(t, geoCreds)
	// The watcher follows meshd with a certificate of its own, which no
	// revocation below touches.
	w := connectedWatcher(t, m, m.agent("watcher", "ct114"))

	serve := agent.ServerTLS(geo, w)
	call := agent.ClientTLS(opus, w, credentials.AuthorizeIdentity("ct112.mesh"))
	if serr, cerr := handshake(t, serve, call); serr != nil || cerr != nil {
		t.Fatalf("opus calling geo: server %v, client %v", serr, cerr)
	}

	// A stranger to the mesh's CA is refused by both (this one trusts
	// the mesh, so that its own check of geo passes).
	strangerCreds := newPKI(t).agent("opus", "ct111")
	strangerCreds.Roots = opusCreds.Roots
	stranger := holder(t, strangerCreds)
	if serr, _ := handshake(t, serve, agent.ClientTLS(stranger, w)); !errors.Is(serr, credentials.ErrUntrusted) {
		t.Fatalf("geo accepting a stranger: %v, want ErrUntrusted", serr)
	}
	if _, cerr := handshake(t, agent.ServerTLS(holder(t, newPKI(t).node("ct112")), w), call); !errors.Is(cerr, credentials.ErrUntrusted) {
		t.Fatalf("opus calling a stranger: %v, want ErrUntrusted", cerr)
	}
	// An Authorizer narrows the peers.
	if _, cerr := handshake(t, serve, agent.ClientTLS(opus, w, credentials.AuthorizeIdentity("billing@ct113"))); !errors.Is(cerr, credentials.ErrUnauthorized) {
		t.Fatalf("opus calling geo for billing: %v, want ErrUnauthorized", cerr)
	}
	// Without a revocation set, nothing is admitted.
	if serr, _ := handshake(t, agent.ServerTLS(geo, nil), call); !errors.Is(serr, trust.ErrUntrusted) || !strings.Contains(serr.Error(), "no revocation set") {
		t.Fatalf("geo without revocations: %v, want a refusal naming the missing set", serr)
	}

	m.revoke(serialOf(opusCreds))
	eventually.True(t, "the watcher to learn of the revocation", func() bool { return w.VerifyPeerCertificate([][]byte{opusCreds.Certificate.Leaf.Raw}, nil) != nil })
	if serr, _ := handshake(t, serve, call); !errors.Is(serr, trust.ErrRevoked) {
		t.Fatalf("geo accepting revoked opus: %v, want ErrRevoked", serr)
	}
	m.revoke(serialOf(geoCreds))
	eventually.True(t, "the watcher to learn of the second revocation", func() bool { return w.VerifyPeerCertificate([][]byte{geoCreds.Certificate.Leaf.Raw}, nil) != nil })
	caller := holder(t, m.agent("scout", "ct115"))
	if _, cerr := handshake(t, serve, agent.ClientTLS(caller, w)); !errors.Is(cerr, trust.ErrRevoked) {
		t.Fatalf("scout calling revoked geo: %v, want ErrRevoked", cerr)
	}
}

// TestNewWatcherOperatorRoots: an agent whose provider's roots are not
// the mesh CA's (SPIRE's, Vault's) follows meshd's revocations when the
// operator added the mesh CA (MCP_MESH_TLS_CA).
func TestNewWatcherOperatorRoots(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	c := m.agent("watcher", "ct114")
	c.OperatorRoots, c.Roots = c.Roots, newPKI(t).agent("other", "ct1").Roots
	connectedWatcher(t, m, c)
}

// connectedWatcher runs a Watcher of m's revocations with credentials c
// until the test ends, once its stream is up (meshd requires the agent's
// certificate in strict mode).
func connectedWatcher(t *testing.T, m *testMeshd, c *credentials.Credentials) *watch.Watcher {
	t.Helper()
	w, err := agent.NewWatcher(holder(t, c), watch.Config{Server: m.url})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually.True(t, "the revocation stream to come up", w.Connected)
	return w
}

func TestNewWatcherRefuses(t *testing.T) {
	p := newPKI(t)
	noRoots := p.agent("opus", "ct111")
	noRoots.Roots = nil
	closed := holder(t, p.agent("opus", "ct111"))
	closed.Close()
	for _, tt := range []struct {
		name string
		src  credentials.Source
		cfg  watch.Config
		want string
	}{
		{"no source", nil, watch.Config{Server: "https://meshd:8000"}, "no credentials Source"},
		{"no roots", holder(t, noRoots), watch.Config{Server: "https://meshd:8000"}, "no roots"},
		{"closed source", closed, watch.Config{Server: "https://meshd:8000"}, "source closed"},
		{"no server", holder(t, p.agent("opus", "ct111")), watch.Config{}, "https://host:port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.NewWatcher(tt.src, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewWatcher: %v, want an error saying %q", err, tt.want)
			}
		})
	}
}
