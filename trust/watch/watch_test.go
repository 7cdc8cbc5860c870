package watch_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/watch"
)

// start runs a Watcher with short intervals until the test ends.
func start(t *testing.T, s *enrolltest.Server, set *trust.RevocationSet, mod func(*watch.Config)) *watch.Watcher {
	t.Helper()
	cfg := watch.Config{
		Server: s.URL, Roots: s.Roots(),
		CRLInterval: 20 * time.Millisecond,
		MinBackoff:  5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&cfg)
	}
	w, err := watch.New(set, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	})
	return w
}

func revoked(set *trust.RevocationSet, serial string) func() bool {
	return func() bool { _, ok := set.Serial("", serial); return ok }
}

func TestEventsApplied(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	s.Revoke("9f01", "opus@ct111", "keyCompromise") // before the watcher starts
	set := &trust.RevocationSet{}
	w := start(t, s, set, func(c *watch.Config) { c.CRLInterval = time.Hour })
	eventually.True(t, "the backlog", revoked(set, "9f01"))
	eventually.True(t, "the stream", w.Connected)

	s.Revoke("a1b2", "scout@ct112", "superseded")
	s.RevokeEntity("acme", "entity revoked")
	eventually.True(t, "live events", func() bool {
		_, ok := set.Entity("acme")
		return ok && revoked(set, "a1b2")()
	})
	if r, _ := set.Serial("", "9f01"); r.Reason != "keyCompromise" {
		t.Errorf("reason = %q", r.Reason)
	}
	if got := w.LastEventID(); got != 3 {
		t.Errorf("LastEventID = %d, want 3", got)
	}
	// The first subscription asked for the whole feed.
	reqs := watchRequests(s)
	if len(reqs) == 0 || reqs[0].LastEventID != "0" || reqs[0].After != "0" || reqs[0].Accept != "text/event-stream" {
		t.Errorf("first subscription: %+v", reqs)
	}
}

func watchRequests(s *enrolltest.Server) []enrolltest.Request {
	var out []enrolltest.Request
	for _, r := range s.Requests() {
		if r.Path == "/revocations/watch" {
			out = append(out, r)
		}
	}
	return out
}

func TestResumeAfterDisconnect(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	set := &trust.RevocationSet{}
	s.FailNext("/crl", 1000, 503, "no CRL", "") // only the stream can deliver
	w := start(t, s, set, func(c *watch.Config) {
		c.MinBackoff, c.MaxBackoff = 50*time.Millisecond, 50*time.Millisecond
	})
	eventually.True(t, "the stream", func() bool { return s.Streams() == 1 })
	s.Revoke("01", "a@ct1", "")
	s.Revoke("02", "b@ct1", "")
	eventually.True(t, "two events", func() bool { return w.LastEventID() == 2 })

	// meshd restarts; a revocation lands while the watcher is away.
	s.SetStreamDown(true)
	eventually.True(t, "the disconnect", func() bool { return !w.Connected() })
	s.Revoke("03", "c@ct1", "keyCompromise")
	s.SetStreamDown(false)

	eventually.True(t, "the missed event", func() bool { return w.LastEventID() == 3 })
	if !revoked(set, "3")() {
		t.Error("the missed event was not applied")
	}
	reqs := watchRequests(s)
	last := reqs[len(reqs)-1]
	if last.LastEventID != "2" || last.After != "2" {
		t.Errorf("reconnection asked for Last-Event-ID %q after %q, want 2", last.LastEventID, last.After)
	}
}

func TestCRLFallback(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	s.SetStreamDown(true)
	leaf := s.Issue(t, "opus@ct111")
	serial := leaf.Leaf.SerialNumber.Text(16)
	s.Revoke(serial, "opus@ct111", "keyCompromise")
	set := &trust.RevocationSet{}
	w := start(t, s, set, func(c *watch.Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour })

	eventually.True(t, "the CRL", revoked(set, serial))
	if w.Connected() {
		t.Error("connected although the stream is down")
	}
	if r, _ := set.Serial("", serial); r.Reason != "keyCompromise" {
		t.Errorf("reason from the CRL = %q", r.Reason)
	}
	// It keeps polling while the stream is down.
	later := s.Issue(t, "scout@ct111").Leaf.SerialNumber.Text(16)
	s.Revoke(later, "scout@ct111", "")
	eventually.True(t, "the next poll", revoked(set, later))
	var crlReqs int
	for _, r := range s.Requests() {
		if r.Path == "/crl" {
			crlReqs++
			if r.Accept != "application/x-pem-file" {
				t.Errorf("GET /crl Accept = %q", r.Accept)
			}
		}
	}
	if crlReqs < 2 {
		t.Errorf("%d CRL polls", crlReqs)
	}
}

func TestCRLNotPolledWhileStreamUp(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	set := &trust.RevocationSet{}
	w := start(t, s, set, nil)
	eventually.True(t, "the stream", w.Connected)
	s.Revoke("77", "x@ct1", "")
	eventually.True(t, "the event", revoked(set, "77"))
	for _, r := range s.Requests() {
		if r.Path == "/crl" {
			t.Error("polled the CRL although the stream was up")
		}
	}
}

func TestCRLVerified(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	leaf := s.Issue(t, "opus@ct111")
	serial := leaf.Leaf.SerialNumber.Text(16)
	s.Revoke(serial, "opus@ct111", "keyCompromise")
	good := s.CRL(t)

	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-3] ^= 0xff // inside the signature
	stranger := enrolltest.NewServer(t, enrolltest.Config{})
	stranger.Revoke(serial, "opus@ct111", "")
	foreign := stranger.CRL(t)

	for _, tc := range []struct {
		name    string
		crl     []byte
		want    bool
		wantErr string
	}{
		{"signed by the intermediate", good, true, ""},
		{"bad signature", tampered, false, "does not verify"},
		{"signed by another CA", foreign, false, "signed by no CA of the mesh bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.SetCRL(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: tc.crl}))
			set := &trust.RevocationSet{}
			w, err := watch.New(set, watch.Config{Server: s.URL, Roots: s.Roots()})
			if err != nil {
				t.Fatal(err)
			}
			n, err := w.PollCRL(t.Context())
			_, ok := set.Serial("", serial)
			if ok != tc.want || (n == 1) != tc.want {
				t.Errorf("revoked = %v (%d new), want %v", ok, n, tc.want)
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	// A bundle that lists a CA outside the roots does not make its CRLs
	// count: the roots decide, not meshd.
	t.Run("configured roots decide", func(t *testing.T) {
		s.SetCRL(nil)
		set := &trust.RevocationSet{}
		w, err := watch.New(set, watch.Config{Server: s.URL, Roots: s.Roots(), Intermediates: []*x509.Certificate{stranger.Intermediate}})
		if err != nil {
			t.Fatal(err)
		}
		s.SetCRL(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: foreign}))
		if _, err := w.PollCRL(t.Context()); err == nil {
			t.Error("a CRL of a CA outside the roots was accepted")
		}
		if _, ok := set.Serial("", serial); ok {
			t.Error("serial added from an untrusted CRL")
		}
	})
}

func TestIdleStreamReconnects(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{KeepAlive: time.Hour})
	set := &trust.RevocationSet{}
	start(t, s, set, func(c *watch.Config) { c.IdleTimeout = 30 * time.Millisecond; c.CRLInterval = time.Hour })
	eventually.True(t, "a reconnection after silence", func() bool { return len(watchRequests(s)) >= 2 })
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	set := &trust.RevocationSet{}
	roots := x509.NewCertPool()
	for _, tc := range []struct {
		name string
		set  *trust.RevocationSet
		cfg  watch.Config
	}{
		{"no set", nil, watch.Config{Server: "https://meshd:8443", Roots: roots}},
		{"no roots", set, watch.Config{Server: "https://meshd:8443"}},
		{"plain http", set, watch.Config{Server: "http://meshd:8443", Roots: roots}},
		{"no server", set, watch.Config{Roots: roots}},
	} {
		if _, err := watch.New(tc.set, tc.cfg); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// TestVerifyConnectionRefusesRevoked runs a real TLS server on loopback
// whose tls.Config takes the watcher's hook, and shows a peer refused
// once meshd revokes it.
func TestVerifyConnectionRefusesRevoked(t *testing.T) {
	t.Parallel()
	s := enrolltest.NewServer(t, enrolltest.Config{})
	partner := pkitest.NewRoot(t, "acme root")
	anchors := trust.NewAnchors("filestore")
	anchors.Set("acme", []*x509.Certificate{partner.Cert})
	set := &trust.RevocationSet{}
	w := start(t, s, set, func(c *watch.Config) { c.Entity = watch.AnchorEntity(anchors) })
	eventually.True(t, "the stream", w.Connected)

	roots := s.Roots()
	roots.AddCert(partner.Cert)
	serverCert := s.Issue(t, "ct200.mesh")
	refusals := make(chan error, 10)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := w.VerifyConnection(cs)
			if err != nil {
				refusals <- err
			}
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	dial := func(cert tls.Certificate) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
			RootCAs: s.Roots(), ServerName: "ct200.mesh", Certificates: []tls.Certificate{cert},
		})
		if err != nil {
			return err
		}
		defer c.Close()
		// With TLS 1.3 the server's verdict on the client arrives after
		// the client's handshake: read to learn it.
		_, err = io.ReadFull(c, make([]byte, 2))
		return err
	}

	agent := s.Issue(t, "opus@ct111")
	partnerAgent := partner.Issue(t, "acme-scout")
	for _, c := range []tls.Certificate{agent, partnerAgent} {
		if err := dial(c); err != nil {
			t.Fatalf("%s before any revocation: %v", c.Leaf.Subject.CommonName, err)
		}
	}

	s.Revoke(agent.Leaf.SerialNumber.Text(16), "opus@ct111", "keyCompromise")
	s.RevokeEntity("acme", "entity revoked")
	eventually.True(t, "the revocations", func() bool {
		_, ok := set.Entity("acme")
		return ok && revoked(set, agent.Leaf.SerialNumber.Text(16))()
	})
	for _, c := range []tls.Certificate{agent, partnerAgent} {
		if err := dial(c); err == nil {
			t.Errorf("%s connected after its revocation", c.Leaf.Subject.CommonName)
		}
		select {
		case err := <-refusals:
			if !errors.Is(err, trust.ErrRevoked) {
				t.Errorf("refusal %v does not wrap trust.ErrRevoked", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not refuse")
		}
	}
	// Someone else still gets in.
	if err := dial(s.Issue(t, "scout@ct111")); err != nil {
		t.Errorf("unrevoked peer refused: %v", err)
	}

	// VerifyPeerCertificate refuses the same peers.
	vpc := watch.VerifyPeerCertificate(set, watch.AnchorEntity(anchors))
	if err := vpc([][]byte{agent.Leaf.Raw}, nil); !errors.Is(err, trust.ErrRevoked) {
		t.Errorf("VerifyPeerCertificate(revoked serial) = %v", err)
	}
	if err := vpc([][]byte{partnerAgent.Leaf.Raw}, [][]*x509.Certificate{{partnerAgent.Leaf, partner.Cert}}); !errors.Is(err, trust.ErrRevoked) {
		t.Errorf("VerifyPeerCertificate(revoked entity) = %v", err)
	}
}
