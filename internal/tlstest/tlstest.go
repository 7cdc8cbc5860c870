// Package tlstest is test support: a loopback TLS server with one config
// for its whole life that reports each handshake's outcome, so that a test
// sees what both the client and the server saw.
package tlstest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// Wait bounds every wait for a handshake, so that a stuck test fails
// rather than hangs.
const Wait = 30 * time.Second

// End is one side's outcome of a handshake: its error and the leaf it saw
// of the other side (nil when the other side presented none).
type End struct {
	Err  error
	Peer *x509.Certificate
}

// Server accepts TLS connections on loopback with one config for its
// whole life, and reports each handshake's outcome.
type Server struct {
	addr    string
	results chan End
}

// Serve starts a Server with cfg; it stops when the test ends.
func Serve(t testing.TB, cfg *tls.Config) *Server {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &Server{addr: ln.Addr().String(), results: make(chan End, 16)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := conn.(*tls.Conn)
				defer tc.Close()
				tc.SetDeadline(time.Now().Add(Wait))
				var e End
				if e.Err = tc.Handshake(); e.Err == nil {
					if peers := tc.ConnectionState().PeerCertificates; len(peers) > 0 {
						e.Peer = peers[0]
					}
					_, e.Err = tc.Write([]byte("ok"))
				}
				s.results <- e
			}()
		}
	}()
	return s
}

// Dial handshakes with cfg and returns what each side saw. The client
// reads a first message, so that a refusal of its certificate, which TLS
// 1.3 reports after the client's handshake, is seen too.
func (s *Server) Dial(t testing.TB, cfg *tls.Config) (client, server End) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: Wait}, "tcp", s.addr, cfg)
	if err != nil {
		client.Err = err
	} else {
		conn.SetDeadline(time.Now().Add(Wait))
		_, client.Err = io.ReadFull(conn, make([]byte, 2))
		client.Peer = conn.ConnectionState().PeerCertificates[0]
		conn.Close()
	}
	select {
	case server = <-s.results:
	case <-time.After(Wait):
		t.Fatal("the server reported no handshake")
	}
	return client, server
}

// RequireOK fails unless both sides completed the handshake, and returns
// the leaf each saw of the other.
func (s *Server) RequireOK(t testing.TB, cfg *tls.Config) (serverLeaf, clientLeaf *x509.Certificate) {
	t.Helper()
	c, srv := s.Dial(t, cfg)
	if c.Err != nil || srv.Err != nil {
		t.Fatalf("handshake refused: client %v, server %v", c.Err, srv.Err)
	}
	return c.Peer, srv.Peer
}

// RequireRefused fails unless the server refused the client with want.
func (s *Server) RequireRefused(t testing.TB, cfg *tls.Config, want error) {
	t.Helper()
	c, srv := s.Dial(t, cfg)
	if c.Err == nil || !errors.Is(srv.Err, want) {
		t.Fatalf("handshake: client %v, server %v; want the server to refuse with %v", c.Err, srv.Err, want)
	}
}
