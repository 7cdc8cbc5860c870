package credentials_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// handshakePair is a server and a client configuration that complete a
// full mTLS handshake with each other.
type handshakePair struct{ server, client *tls.Config }

// handshakeConfigs returns the same certificates (a server and a client
// leaf under an intermediate, one root) as static tls.Configs, verified
// by crypto/tls, and as ServerConfig and ClientConfig over Sources.
// Session tickets are off, so every handshake is a full one.
func handshakeConfigs(b *testing.B) (static, source handshakePair) {
	b.Helper()
	root := pkitest.NewRoot(b, "bench root")
	inter := root.Intermediate(b, "bench intermediate")
	serverCert, clientCert := issue(b, inter, "ct111.mesh"), issue(b, inter, "opus@ct111")
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)

	static.server = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots, SessionTicketsDisabled: true}
	static.client = &tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: roots, ServerName: "localhost"}

	holder := func(c tls.Certificate) credentials.Source {
		h := new(credentials.Holder)
		if err := h.Set(&credentials.Credentials{Certificate: c, Roots: []*x509.Certificate{root.Cert}}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		return h
	}
	source.server = credentials.ServerConfig(holder(serverCert), credentials.AuthorizeAny())
	source.server.SessionTicketsDisabled = true
	source.client = credentials.ClientConfig(holder(clientCert), credentials.AuthorizeAny())
	return static, source
}

// handshake runs one full handshake over an in-memory connection.
func (p handshakePair) handshake(b *testing.B) {
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	done := make(chan error, 1)
	go func() { done <- tls.Server(sc, p.server).Handshake() }()
	if err := tls.Client(cc, p.client).Handshake(); err != nil {
		b.Fatal("client:", err)
	}
	if err := <-done; err != nil {
		b.Fatal("server:", err)
	}
}

// BenchmarkHandshake compares a full mTLS handshake (both sides) on
// ServerConfig and ClientConfig over Sources with one on static
// tls.Configs holding the same certificates.
func BenchmarkHandshake(b *testing.B) {
	static, source := handshakeConfigs(b)
	b.Run("static", func(b *testing.B) {
		for b.Loop() {
			static.handshake(b)
		}
	})
	b.Run("source", func(b *testing.B) {
		for b.Loop() {
			source.handshake(b)
		}
	})
}

// BenchmarkHandshakeRatio runs the two kinds of handshake alternately and
// reports the cost of the Source's relative to the static one
// (source/static): a ratio measured in the same moments, which a noisy
// machine skews less than two separate runs.
func BenchmarkHandshakeRatio(b *testing.B) {
	static, source := handshakeConfigs(b)
	var st, so time.Duration
	for b.Loop() {
		t0 := time.Now()
		static.handshake(b)
		t1 := time.Now()
		source.handshake(b)
		st, so = st+t1.Sub(t0), so+time.Since(t1)
	}
	b.ReportMetric(float64(so)/float64(st), "source/static")
	b.ReportMetric(float64(st.Nanoseconds())/float64(b.N), "static-ns/handshake")
	b.ReportMetric(float64(so.Nanoseconds())/float64(b.N), "source-ns/handshake")
}
