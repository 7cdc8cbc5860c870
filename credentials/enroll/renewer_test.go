package enroll_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// fakeClock is the tests' manual clock.
type fakeClock = clocktest.Clock

func newFakeClock(now time.Time) *fakeClock { return clocktest.New(now) }

func waitUpdated(t *testing.T, r *enroll.Renewer) {
	t.Helper()
	select {
	case <-r.Updated():
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal")
	}
}

func x509Opts(roots *x509.CertPool, chain []*x509.Certificate) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	return x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}

// node enrolls ct112 with agent opus into a fresh Dir.
// clockedNode returns a meshd whose clock is clk, a client of it, and a
// node enrolled through it (with agent opus).
func clockedNode(t *testing.T) (*fakeClock, *enrolltest.Server, *enroll.Client, enroll.Dir) {
	t.Helper()
	clk := newFakeClock(time.Now())
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret, Now: clk.Now})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	return clk, s, c, node(t, s, c)
}

func node(t *testing.T, s *enrolltest.Server, c *enroll.Client) enroll.Dir {
	t.Helper()
	key, b := enrolled(t, s, c)
	dir := enroll.Dir(t.TempDir())
	if err := dir.WriteNode(key, b); err != nil {
		t.Fatal(err)
	}
	akey, ab := opusCert(t, c, b.TLSCertificate(key))
	if err := dir.WriteAgent("opus", akey, ab); err != nil {
		t.Fatal(err)
	}
	return dir
}

const day = 24 * time.Hour

func TestRenewerRun(t *testing.T) {
	t.Parallel()
	clk, s, c, dir := clockedNode(t)
	var logs bytes.Buffer
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{
		Clock:      clk,
		Rand:       func(n int64) int64 { return n - 1 }, // the most jitter, the longest backoff
		MinBackoff: time.Second, MaxBackoff: 3 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Certificate()
	leaf := first.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if due := r.Due(); !due.Equal(enroll.RenewAt(leaf, 2.0/3)) {
		t.Errorf("Due = %s, want 2/3 of the node's lifetime", due)
	}

	// meshd is down for the first three attempts.
	s.FailNext("/renew", 3, 503, "meshd restarting", "")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	// It waits until 2/3 of the lifetime plus its jitter (5% of the
	// lifetime at most; Rand gives the most).
	wantWait := enroll.RenewAt(leaf, 2.0/3).Sub(clk.Now()) + time.Duration(float64(life)*0.05) - 1
	if got := clk.NextWait(t, 10*time.Second); got != wantWait {
		t.Fatalf("first wait %s, want %s", got, wantWait)
	}
	clk.Advance(wantWait)
	// Then retries, doubling the delay up to MaxBackoff.
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		if got := clk.NextWait(t, 10*time.Second); got != want {
			t.Fatalf("retry wait %s, want %s", got, want)
		}
		if r.Certificate() != first {
			t.Fatal("the certificate changed while meshd was failing")
		}
		clk.Advance(want)
	}
	waitUpdated(t, r)
	renewed := r.Certificate()
	if renewed.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 || renewed.Leaf.Subject.CommonName != "ct112.mesh" {
		t.Fatalf("renewed certificate: %s serial %x", renewed.Leaf.Subject.CommonName, renewed.Leaf.SerialNumber)
	}
	// Same key, new certificate: on disk and from the tls.Config hooks.
	got, _ := r.GetClientCertificate(&tls.CertificateRequestInfo{})
	srv, _ := r.GetCertificate(&tls.ClientHelloInfo{})
	if got != renewed || srv != renewed {
		t.Error("GetClientCertificate / GetCertificate do not return the renewed certificate")
	}
	if !renewed.Leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("renewal changed the key")
	}
	disk, err := dir.Load()
	if err != nil {
		t.Fatal(err)
	}
	if disk.Certificate.Leaf.SerialNumber.Cmp(renewed.Leaf.SerialNumber) != 0 {
		t.Error("the renewed node certificate was not written to the Dir")
	}
	// The agent rode along.
	agent, ok := r.AgentCertificate("opus")
	if !ok || agent.Leaf.NotBefore.Before(renewed.Leaf.NotBefore) || disk.Agents[0].Certificate.Leaf.SerialNumber.Cmp(agent.Leaf.SerialNumber) != 0 {
		t.Error("the agent certificate was not renewed with the node")
	}
	acc, err := r.AgentClientCertificate("opus")(&tls.CertificateRequestInfo{})
	if err != nil || acc != agent {
		t.Errorf("AgentClientCertificate = %v, %v", acc, err)
	}
	if _, err := r.AgentClientCertificate("ghost")(&tls.CertificateRequestInfo{}); err == nil {
		t.Error("certificate for an unknown agent")
	}

	// And it schedules the next renewal from the new certificate.
	next := clk.NextWait(t, 10*time.Second)
	nl := renewed.Leaf
	if want := enroll.RenewAt(nl, 2.0/3).Sub(clk.Now()) + time.Duration(float64(nl.NotAfter.Sub(nl.NotBefore))*0.05) - 1; next != want {
		t.Errorf("next wait %s, want %s", next, want)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run = %v", err)
	}

	// Nothing secret reached the log.
	key, _ := os.ReadFile(dir.Path("node.key"))
	for _, leak := range []string{secret, string(key), "PRIVATE KEY"} {
		if strings.Contains(logs.String(), leak) {
			t.Errorf("log contains %q", leak)
		}
	}
	if !strings.Contains(logs.String(), "meshd restarting") {
		t.Errorf("the failures were not logged:\n%s", logs.String())
	}
}

func TestRenewerKeepsCertificateUntilExpiry(t *testing.T) {
	t.Parallel()
	clk, s, c, dir := clockedNode(t)
	var logs bytes.Buffer
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{
		Clock: clk, Jitter: -1, Rand: func(n int64) int64 { return n - 1 },
		MinBackoff: time.Hour, MaxBackoff: 10 * day,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Certificate()
	s.FailNext("/renew", 1000, 503, "down", "")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go r.Run(ctx)
	// Advance through every wait until past expiry.
	for clk.Now().Before(first.Leaf.NotAfter.Add(day)) {
		clk.Advance(clk.NextWait(t, 10*time.Second))
		if r.Certificate() != first {
			t.Fatal("certificate replaced although every renewal failed")
		}
	}
	clk.NextWait(t, 10*time.Second) // the attempt past expiry has been logged
	if !strings.Contains(logs.String(), "enroll the node again") {
		t.Errorf("no advice to re-enroll after expiry:\n%s", logs.String())
	}
}

func TestRenewerAdoptsFromDisk(t *testing.T) {
	t.Parallel()
	clk, s, c, dir := clockedNode(t)
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk, Jitter: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go r.Run(ctx)
	wait := clk.NextWait(t, 10*time.Second)

	// A day later, another process (the meshctl renew timer) renews.
	clk.Advance(day)
	other, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.RenewNow(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := len(s.Requests())
	// When this renewer's turn comes, it takes the renewed files.
	clk.Advance(wait - day)
	waitUpdated(t, r)
	if got, want := r.Certificate().Leaf.SerialNumber, other.Certificate().Leaf.SerialNumber; got.Cmp(want) != 0 {
		t.Errorf("serial %x, want the one on disk %x", got, want)
	}
	clk.NextWait(t, 10*time.Second)
	if n := len(s.Requests()) - before; n != 0 {
		t.Errorf("%d requests to meshd; the renewed files should have been adopted", n)
	}
}

func TestRenewNow(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	dir := node(t, s, c)
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Due().After(time.Now()) {
		t.Fatal("a fresh certificate is due")
	}
	old := r.Certificate()
	// An agent minted after the Renewer started rides along.
	skey := pkitest.NewKey(t)
	sb, err := c.AgentCert(t.Context(), *old, "scout", skey)
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.WriteAgent("scout", skey, sb); err != nil {
		t.Fatal(err)
	}
	res, err := r.RenewNow(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if res.Node.Serial == old.Leaf.SerialNumber.Text(16) || len(res.Agents) != 2 || res.Agents["scout"] == nil {
		t.Errorf("renewal: %+v", res)
	}
	if sc, ok := r.AgentCertificate("scout"); !ok || sc.Leaf.SerialNumber.Cmp(sb.Certificate.SerialNumber) == 0 {
		t.Error("the agent minted later is not served renewed")
	}
	if r.Certificate() == old {
		t.Error("the certificate in use did not change")
	}

	// A refusal leaves the credentials alone.
	s.FailNext("/renew", 1, 403, "certificate revoked", "")
	cur := r.Certificate()
	if _, err := r.RenewNow(t.Context()); err == nil {
		t.Fatal("renewed against a refusal")
	}
	if r.Certificate() != cur {
		t.Error("a refused renewal changed the certificate")
	}
}

func TestNewRenewerConfig(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	if _, err := enroll.NewRenewer(c, enroll.Dir(t.TempDir()), enroll.RenewerConfig{}); err == nil {
		t.Error("renewer over an empty dir")
	}
	dir := node(t, s, c)
	if _, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{RenewFraction: 1.5}); err == nil {
		t.Error("renew fraction 1.5 accepted")
	}
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{RenewFraction: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if want := enroll.RenewAt(r.Certificate().Leaf, 0.5); !r.Due().Equal(want) {
		t.Errorf("Due = %s, want %s", r.Due(), want)
	}
}

// handshake connects a client with cli to a server with srv over
// loopback and returns the certificates each presented.
func handshake(t *testing.T, ln net.Listener, cli *tls.Config) (server, client *x509.Certificate) {
	t.Helper()
	peer := make(chan *x509.Certificate, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			peer <- nil
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Errorf("server handshake: %v", err)
			peer <- nil
			return
		}
		tc.Write([]byte("ok"))
		peer <- tc.ConnectionState().PeerCertificates[0]
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, 2)); err != nil {
		t.Fatalf("client read: %v", err)
	}
	return conn.ConnectionState().PeerCertificates[0], <-peer
}

// TestRenewerSource: the Renewer is the node's credentials.Source and
// AgentSource an agent's: tls.Configs and Materialize built on them
// follow a renewal without a restart.
func TestRenewerSource(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	dir := node(t, s, c)
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: newFakeClock(time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	nodeCreds, err := r.Current()
	if err != nil {
		t.Fatal(err)
	}
	if !nodeCreds.Certificate.Leaf.Equal(r.Certificate().Leaf) || nodeCreds.Certificate.PrivateKey == nil {
		t.Error("Current does not hold the node's certificate and key")
	}
	root, err := pemfile.ParseCerts(s.RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	if len(nodeCreds.Roots) != 1 || !nodeCreds.Roots[0].Equal(root[0]) {
		t.Errorf("Roots: %d certificates, want the mesh root", len(nodeCreds.Roots))
	}
	if again, _ := r.Current(); again != nodeCreds {
		t.Error("Current changed without a renewal")
	}
	agent, err := r.AgentSource("opus")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AgentSource("ghost"); err == nil || !strings.Contains(err.Error(), "meshctl agent-cert ghost") {
		t.Errorf("AgentSource of an agent without a certificate: %v", err)
	}
	agentCreds, err := agent.Current()
	if err != nil {
		t.Fatal(err)
	}
	if cn := agentCreds.Certificate.Leaf.Subject.CommonName; cn != "opus@ct112" || len(agentCreds.Roots) != 1 {
		t.Errorf("agent credentials: %s with %d roots", cn, len(agentCreds.Roots))
	}

	// The node serves, the agent dials, each verifying the other.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", credentials.ServerConfig(r, credentials.AuthorizeIdentity("opus@ct112")))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli := credentials.ClientConfig(agent, credentials.AuthorizeIdentity("ct112.mesh"))
	srvCert, cliCert := handshake(t, ln, cli)
	if !srvCert.Equal(nodeCreds.Certificate.Leaf) || !cliCert.Equal(agentCreds.Certificate.Leaf) {
		t.Fatal("the handshake did not present the sources' certificates")
	}
	files, err := credentials.Materialize(t.Context(), agent, "opus", credentials.MaterializeIn(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	reader, err := file.New(t.Context(), files.CertFile, files.KeyFile, files.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	nodeChanged, agentChanged := r.Changed(), agent.Changed()
	if _, err := r.RenewNow(t.Context()); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan struct{}{"node": nodeChanged, "agent": agentChanged} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("the %s's Changed was not closed by the renewal", name)
		}
	}
	renewedNode, _ := r.Current()
	renewedAgent, _ := agent.Current()
	if renewedNode.Certificate.Leaf.Equal(nodeCreds.Certificate.Leaf) || renewedAgent.Certificate.Leaf.Equal(agentCreds.Certificate.Leaf) {
		t.Fatal("Current did not move to the renewed certificates")
	}
	srvCert, cliCert = handshake(t, ln, cli)
	if !srvCert.Equal(renewedNode.Certificate.Leaf) || !cliCert.Equal(renewedAgent.Certificate.Leaf) {
		t.Error("the next handshake did not present the renewed certificates")
	}
	// A process that reads the materialized files sees the renewal.
	for {
		ch := reader.Changed()
		got, err := reader.Current()
		if err != nil {
			t.Fatal(err)
		}
		if got.Certificate.Leaf.Equal(renewedAgent.Certificate.Leaf) {
			break
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("the materialized files were not rewritten after the renewal")
		}
	}

	// Closing an agent's source leaves the Renewer alone.
	other, err := r.AgentSource("opus")
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	if _, err := other.Current(); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("a closed AgentSource: %v", err)
	}
	if _, err := agent.Current(); err != nil {
		t.Errorf("closing one AgentSource closed another: %v", err)
	}
}

// TestRenewerClose: Close stops Run and closes the node's and the agents'
// sources.
func TestRenewerClose(t *testing.T) {
	t.Parallel()
	clk, _, c, dir := clockedNode(t)
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := r.AgentSource("opus")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(t.Context()) }()
	clk.NextWait(t, 10*time.Second) // Run waits for the due time
	nodeChanged, agentChanged := r.Changed(), agent.Changed()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, credentials.ErrClosed) {
			t.Errorf("Run = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop at Close")
	}
	for name, src := range map[string]credentials.Source{"node": r, "agent": agent} {
		if _, err := src.Current(); !errors.Is(err, credentials.ErrClosed) {
			t.Errorf("%s Current after Close = %v", name, err)
		}
	}
	select {
	case <-nodeChanged:
	default:
		t.Error("Close did not wake the node's waiters")
	}
	select {
	case <-agentChanged:
	default:
		t.Error("Close did not wake the agent's waiters")
	}
	if _, err := r.RenewNow(t.Context()); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("RenewNow after Close = %v", err)
	}
	if _, err := r.AgentSource("opus"); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("AgentSource after Close = %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
