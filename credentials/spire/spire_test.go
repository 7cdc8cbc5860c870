package spire_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
	"github.com/meshtrust/meshtrust/internal/tlstest"
)

// wait bounds every wait for an event, so that a stuck test fails rather
// than hangs; no test waits for time to pass.
const wait = 30 * time.Second

var (
	td1, td2      = spiffetest.MeshTD, spiffetest.PartnerTD
	idA, idB, idC = spiffetest.AgentA, spiffetest.AgentB, spiffetest.PartnerC
)

// logLines collects a source's log, JSON, one record a line.
type logLines struct{ logtest.Buffer }

func newLog() (*logLines, *slog.Logger) {
	l := &logLines{}
	return l, l.JSONLogger()
}

// count returns how many records say msg.
func (l *logLines) count(msg string) int { return strings.Count(l.String(), `"msg":"`+msg) }

// newSource follows s's Workload API, retrying every few milliseconds
// through the Backoff it returns.
func newSource(t *testing.T, s *spiffetest.Server, opts ...spire.Option) (*spire.Source, *spiffetest.Backoff) {
	t.Helper()
	b := spiffetest.NewBackoff()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	src, err := spire.New(ctx, append([]spire.Option{spire.WithSocket(s.SocketPath()), spire.WithClientOptions(b.ClientOptions()...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src, b
}

// await waits until src's credentials satisfy ok, and returns them.
func await(t *testing.T, src credentials.Source, what string, ok func(*credentials.Credentials) bool) *credentials.Credentials {
	t.Helper()
	return awaitWithin(t, wait, src, what, ok)
}

// awaitWithin is await with another bound, for the real SPIRE's slower
// events (an SVID rotation, every minute).
func awaitWithin(t *testing.T, within time.Duration, src credentials.Source, what string, ok func(*credentials.Credentials) bool) *credentials.Credentials {
	t.Helper()
	bound := time.After(within)
	for {
		changed := src.Changed()
		if c := sourcetest.Current(t, src); ok(c) {
			return c
		}
		select {
		case <-changed:
		case <-bound:
			t.Fatalf("the source never had %s", what)
		}
	}
}

// awaitSVID waits until src presents svid.
func awaitSVID(t *testing.T, src credentials.Source, svid *x509svid.SVID) *credentials.Credentials {
	t.Helper()
	return await(t, src, "SVID serial "+svid.Certificates[0].SerialNumber.String(), func(c *credentials.Credentials) bool {
		return c.Certificate.Leaf.Equal(svid.Certificates[0])
	})
}

// static is a client config over fixed credentials, such as a forged
// SVID: it presents chain and key, and trusts server SVIDs of the
// bundles' trust domains.
func static(t *testing.T, chain []*x509.Certificate, key crypto.Signer, bundles ...*x509bundle.Bundle) *tls.Config {
	t.Helper()
	cert, err := credentials.NewTLSCertificate(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	c := &credentials.Credentials{Certificate: cert, Roots: bundles[0].X509Authorities(), Bundles: map[spiffeid.TrustDomain][]*x509.Certificate{}}
	for _, b := range bundles {
		c.Bundles[b.TrustDomain()] = b.X509Authorities()
	}
	h := new(credentials.Holder)
	if err := h.Set(c); err != nil {
		t.Fatal(err)
	}
	return credentials.ClientConfig(h, credentials.AuthorizeAny())
}

// staticSVID is static for an SVID.
func staticSVID(t *testing.T, svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *tls.Config {
	t.Helper()
	return static(t, svid.Certificates, svid.PrivateKey, bundles...)
}

// authorize allows a peer with any SPIFFE ID, so that what a test sees
// is the verification of its chain.
func authorize() credentials.Authorizer { return credentials.AdaptMatcher(spiffeid.MatchAny()) }

func TestNew(t *testing.T) {
	for _, tt := range spiffetest.Signings() {
		t.Run(tt.Name, func(t *testing.T) {
			s := spiffetest.NewServer(t, "", tt.Opts...)
			svid := s.SetSVID(idA)
			s.AddFederatedBundle(td2)
			src, _ := newSource(t, s)
			if want := "unix://" + s.SocketPath(); src.Addr() != want {
				t.Errorf("Addr %q, want %q", src.Addr(), want)
			}
			c := sourcetest.Current(t, src)
			if len(c.Certificate.Certificate) != tt.Chain || !c.Certificate.Leaf.Equal(svid.Certificates[0]) {
				t.Fatalf("certificate: chain of %d, want the SVID's %d", len(c.Certificate.Certificate), tt.Chain)
			}
			if id, err := x509svid.IDFromCert(c.Certificate.Leaf); err != nil || id != idA {
				t.Fatalf("leaf's SPIFFE ID %v (%v), want %s", id, err, idA)
			}
			// Roots: the own trust domain's authorities only, though
			// the agent sent a second bundle.
			own := s.CA(td1).Bundle().X509Authorities()
			if len(c.Roots) != 1 || !c.Roots[0].Equal(own[0]) {
				t.Fatalf("Roots: %d certificates, want %s's authority only", len(c.Roots), td1)
			}
			if len(c.Bundles) != 1 || len(c.Bundles[td1]) != 1 || !c.Bundles[td1][0].Equal(own[0]) {
				t.Fatalf("Bundles: %v, want %s's only (%s is not federated)", c.Bundles, td1, td2)
			}
		})
	}
}

func TestMutualTLS(t *testing.T) {
	s := spiffetest.NewServer(t, "", spiffetest.WithIntermediate())
	b := s.NewWorkload()
	svidA, svidB := s.SetSVID(idA), b.SetSVID(idB)
	srcA, _ := newSource(t, s)
	srcB, _ := newSource(t, b)

	srv := tlstest.Serve(t, credentials.ServerConfig(srcA, credentials.AdaptMatcher(spiffeid.MatchID(idB))))
	gotA, gotB := srv.RequireOK(t, credentials.ClientConfig(srcB, credentials.AdaptMatcher(spiffeid.MatchID(idA))))
	if !gotA.Equal(svidA.Certificates[0]) || !gotB.Equal(svidB.Certificates[0]) {
		t.Fatal("the workloads did not present their SVIDs")
	}

	// B expects another server: its Authorizer refuses A.
	c, _ := srv.Dial(t, credentials.ClientConfig(srcB, credentials.AdaptMatcher(spiffeid.MatchID(idB))))
	if !errors.Is(c.Err, credentials.ErrUnauthorized) || !strings.Contains(c.Err.Error(), idA.String()) {
		t.Fatalf("a client that wants %s talking to %s: %v, want ErrUnauthorized naming %s", idB, idA, c.Err, idA)
	}
}

// TestRotation: one listener and one client config for the whole test;
// the SVIDs and the bundle rotate under them.
func TestRotation(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	b := s.NewWorkload()
	s.SetSVID(idA)
	b.SetSVID(idB)
	srcA, _ := newSource(t, s)
	srcB, _ := newSource(t, b)
	srv := tlstest.Serve(t, credentials.ServerConfig(srcA, authorize()))
	client := credentials.ClientConfig(srcB, authorize())
	srv.RequireOK(t, client)

	// SVID rotations, as the agent makes them at half of an SVID's life.
	rotatedA := s.RotateSVID()
	awaitSVID(t, srcA, rotatedA)
	if gotA, _ := srv.RequireOK(t, client); !gotA.Equal(rotatedA.Certificates[0]) {
		t.Fatal("after A's rotation the server did not present its new SVID")
	}
	rotatedB := b.RotateSVID()
	awaitSVID(t, srcB, rotatedB)
	if _, gotB := srv.RequireOK(t, client); !gotB.Equal(rotatedB.Certificates[0]) {
		t.Fatal("after B's rotation the client did not present its new SVID")
	}

	// A CA rotation: a new authority joins the bundle and signs new
	// SVIDs for both. An SVID of the old authority still verifies while
	// it is in the bundle.
	old := s.CA(td1).IssueSVID(idB)
	s.RotateCA(td1)
	newA, newB := s.SVID(), b.SVID()
	awaitSVID(t, srcA, newA)
	awaitSVID(t, srcB, newB)
	if n := len(sourcetest.Current(t, srcA).Bundles[td1]); n != 2 {
		t.Fatalf("after RotateCA the bundle has %d authorities, want 2", n)
	}
	gotA, gotB := srv.RequireOK(t, client)
	if !gotA.Equal(newA.Certificates[0]) || !gotB.Equal(newB.Certificates[0]) {
		t.Fatal("after RotateCA the workloads did not present the SVIDs of the new authority")
	}
	// (The old SVID's holder trusts the new bundle, so that it accepts
	// A's new SVID and only the server's verdict is tested.)
	srv.RequireOK(t, staticSVID(t, old, s.CA(td1).Bundle()))

	// The old authority leaves the bundle: its SVID is refused at the
	// next handshake, the new ones are not.
	s.PruneBundle(td1)
	await(t, srcA, "a bundle of one authority", func(c *credentials.Credentials) bool { return len(c.Bundles[td1]) == 1 })
	srv.RequireRefused(t, staticSVID(t, old, s.CA(td1).Bundle()), credentials.ErrUntrusted)
	srv.RequireOK(t, client)
}

// TestAgentRestart: the Workload API disappears; the source keeps serving
// its last SVID, retries with back-off, and picks up the agent's new SVID
// when it comes back.
func TestAgentRestart(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	b := s.NewWorkload()
	s.SetSVID(idA)
	b.SetSVID(idB)
	log, logger := newLog()
	srcA, retries := newSource(t, s, spire.WithLogger(logger))
	srcB, _ := newSource(t, b)
	srv := tlstest.Serve(t, credentials.ServerConfig(srcA, authorize()))
	client := credentials.ClientConfig(srcB, authorize())
	srv.RequireOK(t, client)
	before := sourcetest.Current(t, srcA)
	changed := srcA.Changed()

	s.Stop()
	retries.WaitRetries(t, retries.Retries()+3) // three failed attempts while the agent is away
	if c := sourcetest.Current(t, srcA); c != before {
		t.Fatal("the credentials changed while the agent was away")
	}
	select {
	case <-changed:
		t.Fatal("Changed was closed while the agent was away")
	default:
	}
	if gotA, _ := srv.RequireOK(t, client); !gotA.Equal(before.Certificate.Leaf) {
		t.Fatal("while the agent was away the server did not present its last SVID")
	}
	if n := log.count("the Workload API is unreachable"); n != 1 {
		t.Fatalf("the outage was logged %d times, want once:\n%s", n, log)
	}

	rotated := s.RotateSVID() // the restarted agent has a new SVID
	s.Restart()
	awaitSVID(t, srcA, rotated)
	if gotA, _ := srv.RequireOK(t, client); !gotA.Equal(rotated.Certificates[0]) {
		t.Fatal("after the agent came back the server did not present the new SVID")
	}
	if n := log.count("the Workload API is reachable again"); n != 1 {
		t.Fatalf("the recovery was logged %d times, want once:\n%s", n, log)
	}
}

// TestFederation: a bundle vouches only for its own trust domain, and
// only if the caller federates with it.
func TestFederation(t *testing.T) {
	for _, federate := range []bool{false, true} {
		name := map[bool]string{false: "not federated", true: "federated"}[federate]
		t.Run(name, func(t *testing.T) {
			s := spiffetest.NewServer(t, "")
			s.SetSVID(idA)
			s.AddFederatedBundle(td2) // the agent sends td2's bundle either way
			c := s.NewWorkload()
			svidC := c.SetSVID(idC)
			c.AddFederatedBundle(td1)
			ca1, ca2 := s.CA(td1), s.CA(td2)
			b1, b2 := ca1.Bundle(), ca2.Bundle()

			log, logger := newLog()
			opts := []spire.Option{spire.WithLogger(logger)}
			if federate {
				opts = append(opts, spire.WithFederation(td2))
			}
			srcA, _ := newSource(t, s, opts...)
			srcC, _ := newSource(t, c, spire.WithFederation(td1))
			creds := sourcetest.Current(t, srcA)
			if _, ok := creds.Bundles[td2]; ok != federate {
				t.Fatalf("Bundles has %s: %v, want %v", td2, ok, federate)
			}
			if len(creds.Roots) != 1 || !creds.Roots[0].Equal(b1.X509Authorities()[0]) {
				t.Fatalf("Roots hold %d certificates, want %s's authority only", len(creds.Roots), td1)
			}

			srv := tlstest.Serve(t, credentials.ServerConfig(srcA, authorize()))
			partner := credentials.ClientConfig(srcC, authorize())
			if federate {
				if _, got := srv.RequireOK(t, partner); !got.Equal(svidC.Certificates[0]) {
					t.Fatal("the partner's SVID was not the one presented")
				}
			} else {
				srv.RequireRefused(t, partner, credentials.ErrUntrusted)
				if n := log.count("dropping the bundle"); n != 1 {
					t.Fatalf("the dropped bundle was logged %d times, want once:\n%s", n, log)
				}
			}

			// Refused whether or not td2 is federated.
			cn, cnKey := ca2.Issue(&x509.Certificate{Subject: pkix.Name{CommonName: "partner"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			for _, tc := range []struct {
				name string
				cfg  *tls.Config
				want error
			}{
				{"td2's ID signed by td1's CA", staticSVID(t, ca1.IssueSVID(idC), b1, b2), credentials.ErrUntrusted},
				{"td1's ID signed by td2's CA", staticSVID(t, ca2.IssueSVID(idB), b1, b2), credentials.ErrUntrusted},
				// Roots are td1's only: td2's CA vouches for no
				// certificate without a SPIFFE ID either.
				{"no SPIFFE ID, signed by td2's CA", static(t, cn, cnKey, b1, b2), credentials.ErrUntrusted},
			} {
				t.Run(tc.name, func(t *testing.T) { srv.RequireRefused(t, tc.cfg, tc.want) })
			}

			// More updates, among them one of td2's bundle, log no
			// more drops.
			s.RotateCA(td2)
			s.RotateSVID()
			awaitSVID(t, srcA, s.SVID())
			if n := log.count("dropping the bundle"); n != map[bool]int{false: 1, true: 0}[federate] {
				t.Fatalf("the dropped bundle was logged %d times:\n%s", n, log)
			}
			if !federate {
				return
			}
			await(t, srcA, "td2's rotated bundle", func(c *credentials.Credentials) bool { return len(c.Bundles[td2]) == 2 })

			// The agent stops sending td2's bundle: its SVIDs are no
			// longer trusted.
			s.RemoveFederatedBundle(td2)
			await(t, srcA, "no bundle for td2", func(c *credentials.Credentials) bool { _, ok := c.Bundles[td2]; return !ok })
			srv.RequireRefused(t, partner, credentials.ErrUntrusted)
		})
	}
}

func TestNewFails(t *testing.T) {
	t.Run("no identity", func(t *testing.T) {
		s := spiffetest.NewServer(t, "")
		err := newFails(t, s.SocketPath())
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "registration entry") {
			t.Fatalf("New: %v, want PermissionDenied and what to do about it", err)
		}
	})
	t.Run("no agent", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "spire")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		err = newFails(t, filepath.Join(dir, "agent.sock"))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "is the SPIRE agent running") {
			t.Fatalf("New: %v, want Unavailable and what to check", err)
		}
	})
	t.Run("watch refused", func(t *testing.T) {
		// A client whose calls lose go-spiffe's security header: the
		// server refuses them as a SPIRE agent does, go-spiffe does not
		// retry, and New fails at once rather than when ctx ends.
		s := spiffetest.NewServer(t, "")
		s.SetSVID(idA)
		strip := grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.NewOutgoingContext(ctx, metadata.MD{}), desc, cc, method, opts...)
		})
		_, err := spire.New(t.Context(), spire.WithSocket(s.SocketPath()), spire.WithClientOptions(workloadapi.WithDialOptions(strip)))
		if !errors.Is(err, spire.ErrNoSVID) || status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), s.SocketPath()) {
			t.Fatalf("New: %v, want ErrNoSVID, InvalidArgument and the socket", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		_, err := spire.New(t.Context(), spire.WithSocket("agent.sock"))
		if err == nil || !strings.Contains(err.Error(), `"agent.sock" (from WithSocket)`) {
			t.Fatalf("New with a relative path: %v, want it named with where it came from", err)
		}
	})
}

// newFails runs New on socket until its client has retried twice, then
// ends New's context, and returns New's error after checking what every
// such error says.
func newFails(t *testing.T, socket string) error {
	t.Helper()
	b := spiffetest.NewBackoff()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		select {
		case <-b.Retried(2):
			cancel()
		case <-ctx.Done():
		}
	}()
	src, err := spire.New(ctx, spire.WithSocket(socket), spire.WithClientOptions(b.ClientOptions()...))
	if err == nil {
		src.Close()
		t.Fatal("New succeeded")
	}
	if !errors.Is(err, spire.ErrNoSVID) || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), socket) {
		t.Fatalf("New: %v, want ErrNoSVID, the context's error and the socket %s", err, socket)
	}
	return err
}

func TestClose(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	s.SetSVID(idA)
	src, retries := newSource(t, s)
	changed := src.Changed()
	s.Stop()
	retries.WaitRetries(t, retries.Retries()+1)

	// Close returns while the client is backing off.
	closed := make(chan error)
	go func() { closed <- src.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not return while the agent was away")
	}
	if _, err := src.Current(); !errors.Is(err, credentials.ErrClosed) {
		t.Fatalf("Current after Close: %v, want ErrClosed", err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Close did not close Changed")
	}
	if err := src.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestLogHoldsNoKey: a source's log, through rotations, an outage and a
// dropped bundle, holds no private key in any encoding.
func TestLogHoldsNoKey(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	svids := []*x509svid.SVID{s.SetSVID(idA)}
	s.AddFederatedBundle(td2)
	log, logger := newLog()
	src, retries := newSource(t, s, spire.WithLogger(logger))
	svids = append(svids, s.RotateSVID())
	awaitSVID(t, src, svids[1])
	s.Stop()
	retries.WaitRetries(t, retries.Retries()+2)
	svids = append(svids, s.RotateSVID())
	s.Restart()
	awaitSVID(t, src, svids[2])

	out := log.String()
	if !strings.Contains(out, idA.String()) {
		t.Fatalf("the log does not name the SVID, so this test checks nothing:\n%s", out)
	}
	for _, svid := range svids {
		_, der, err := svid.MarshalRaw()
		if err != nil {
			t.Fatal(err)
		}
		for _, enc := range []string{
			base64.StdEncoding.EncodeToString(der),
			base64.StdEncoding.EncodeToString(der)[:32],
			hex.EncodeToString(der)[:32],
			string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
			"PRIVATE KEY",
		} {
			if strings.Contains(out, enc) {
				t.Fatalf("the log holds a private key (%.20s...):\n%s", enc, out)
			}
		}
	}
}
