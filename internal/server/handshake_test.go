package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"
)

func handshakeTestConfig(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}}, pool
}

// TestHandshakeListenerStress: many clients handshake at once while others
// stall mid-handshake; Accept hands out only completed handshakes, each
// once, the stalled ones never; Close ends Accept and the stalled ones.
func TestHandshakeListenerStress(t *testing.T) {
	cfg, pool := handshakeTestConfig(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newHandshakeListener(tls.NewListener(raw, cfg), time.Minute, slog.New(slog.DiscardHandler))
	addr := raw.Addr().String()

	const good, stalled = 64, 16
	// Stalled callers: connect and send nothing, holding a handshake open.
	var stalls []net.Conn
	for range stalled {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		stalls = append(stalls, c)
	}

	accepted := make(chan net.Conn, good+stalled)
	acceptDone := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptDone <- err
				return
			}
			accepted <- c
		}
	}()

	var wg sync.WaitGroup
	clientErr := make(chan error, good)
	for range good {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
			if err != nil {
				clientErr <- err
				return
			}
			defer c.Close()
			// The server answers one byte once it holds the connection.
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil {
				clientErr <- err
			}
		}()
	}
	seen := map[net.Conn]bool{}
	for range good {
		c := <-accepted
		tc, ok := c.(*tls.Conn)
		if !ok {
			t.Fatalf("Accept returned %T, want *tls.Conn", c)
		}
		if !tc.ConnectionState().HandshakeComplete {
			t.Fatal("Accept returned a connection whose handshake is not complete")
		}
		if seen[c] {
			t.Fatal("Accept returned one connection twice")
		}
		seen[c] = true
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(clientErr)
	for err := range clientErr {
		t.Errorf("client: %v", err)
	}

	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-acceptDone:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Accept did not return after Close")
	}
	if n := len(accepted); n != 0 {
		t.Fatalf("%d stalled connections were accepted", n)
	}
	// Close ended every pending handshake: the stalled callers read EOF.
	for _, c := range stalls {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a stalled caller's connection stayed open after Close")
		}
		c.Close()
	}
	for c := range seen {
		c.Close()
	}
}

// TestHandshakeListenerTimeout: a caller that never completes its
// handshake is closed after the timeout and never reaches Accept.
func TestHandshakeListenerTimeout(t *testing.T) {
	cfg, _ := handshakeTestConfig(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newHandshakeListener(tls.NewListener(raw, cfg), 50*time.Millisecond, slog.New(slog.DiscardHandler))
	defer ln.Close()
	c, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read from a stalled handshake: %v, want the server to close it", err)
	}
}
