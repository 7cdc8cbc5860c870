package spiffetest_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshtrust/meshtrust/internal/spiffetest"
)

// wait bounds every wait for an event, so a stuck test fails instead of
// hanging; no test waits for time to pass.
const wait = 30 * time.Second

var (
	td1, td2 = spiffetest.MeshTD, spiffetest.PartnerTD
	idA, idB = spiffetest.AgentA, spiffetest.AgentB
)

func newClient(t *testing.T, s *spiffetest.Server, opts ...workloadapi.ClientOption) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(t.Context(), append([]workloadapi.ClientOption{workloadapi.WithAddr(s.Addr())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// watcher hands the X.509 contexts and errors a client's watch receives
// to the test goroutine.
type watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w *watcher) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default: // the test reads the first errors only
	}
}

func watch(t *testing.T, c *workloadapi.Client) *watcher {
	t.Helper()
	w := &watcher{updates: make(chan *workloadapi.X509Context), errs: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.WatchX509Context(ctx, w)
	}()
	t.Cleanup(func() {
		cancel()
		for {
			select {
			case <-w.updates: // unblock a pending update
			case <-done:
				return
			}
		}
	})
	return w
}

func (w *watcher) next(t *testing.T) *workloadapi.X509Context {
	t.Helper()
	select {
	case c := <-w.updates:
		return c
	case <-time.After(wait):
		t.Fatal("no X.509 context update")
		return nil
	}
}

func bundle(t *testing.T, c *workloadapi.X509Context, td spiffeid.TrustDomain) *x509bundle.Bundle {
	t.Helper()
	b, ok := c.Bundles.Get(td)
	if !ok {
		t.Fatalf("no bundle for %s", td)
	}
	return b
}

func TestFetchX509Context(t *testing.T) {
	for _, tt := range spiffetest.Signings() {
		t.Run(tt.Name, func(t *testing.T) {
			s := spiffetest.NewServer(t, "", tt.Opts...)
			issued := s.SetSVID(idA)
			s.AddFederatedBundle(td2)
			got, err := newClient(t, s).FetchX509Context(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			svid := got.DefaultSVID()
			if svid.ID != idA || len(got.SVIDs) != 1 {
				t.Fatalf("SVIDs %v, want one for %s", got.SVIDs, idA)
			}
			if len(svid.Certificates) != tt.Chain {
				t.Fatalf("chain of %d certificates, want %d", len(svid.Certificates), tt.Chain)
			}
			leaf := svid.Certificates[0]
			if !leaf.Equal(issued.Certificates[0]) {
				t.Fatal("the client got another leaf than SetSVID returned")
			}
			// SPIRE's shape: the SPIFFE ID is the only SAN, no common name.
			if leaf.Subject.CommonName != "" || len(leaf.URIs) != 1 || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.IsCA {
				t.Fatalf("leaf CN %q, URIs %v, DNS %v, IPs %v, CA %v: not SPIRE's shape", leaf.Subject.CommonName, leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.IsCA)
			}
			if _, _, err := x509svid.Verify(svid.Certificates, got.Bundles); err != nil {
				t.Fatalf("the SVID does not verify against its bundle: %v", err)
			}
			if n := len(bundle(t, got, td1).X509Authorities()); n != 1 {
				t.Fatalf("bundle of %s has %d authorities, want 1", td1, n)
			}
			if !bundle(t, got, td2).Equal(s.CA(td2).Bundle()) {
				t.Fatalf("federated bundle of %s is not its CA's", td2)
			}
			if want := s.SocketPath(); s.Addr() != "unix://"+want {
				t.Fatalf("Addr %q, socket %q", s.Addr(), want)
			}
		})
	}
}

func TestNoIdentity(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	c := newClient(t, s)
	_, err := c.FetchX509Context(t.Context())
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509Context without an SVID: %v, want PermissionDenied", err)
	}
	_, err = c.FetchX509Bundles(t.Context())
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509Bundles without an SVID: %v, want PermissionDenied", err)
	}
}

// TestSecurityHeader calls the socket with a plain gRPC client, which
// does not send the header go-spiffe adds, as a SPIRE agent is called
// by a client that was not written for it.
func TestSecurityHeader(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	s.SetSVID(idA)
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := workload.NewSpiffeWorkloadAPIClient(conn)
	withHeader := metadata.AppendToOutgoingContext(t.Context(), "workload.spiffe.io", "true")

	refused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "security header missing from request" {
			t.Errorf("%s: %v, want InvalidArgument: security header missing from request", what, err)
		}
	}
	for _, ctx := range []struct {
		name string
		ctx  context.Context
	}{
		{"no header", t.Context()},
		{"header false", metadata.AppendToOutgoingContext(t.Context(), "workload.spiffe.io", "false")},
		{"header twice", metadata.AppendToOutgoingContext(withHeader, "workload.spiffe.io", "true")},
	} {
		svids, err := api.FetchX509SVID(ctx.ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = svids.Recv()
		}
		refused(ctx.name+": FetchX509SVID", err)
		bundles, err := api.FetchX509Bundles(ctx.ctx, &workload.X509BundlesRequest{})
		if err == nil {
			_, err = bundles.Recv()
		}
		refused(ctx.name+": FetchX509Bundles", err)
		_, err = api.FetchJWTSVID(ctx.ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
		refused(ctx.name+": FetchJWTSVID", err)
	}

	svids, err := api.FetchX509SVID(withHeader, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := svids.Recv(); err != nil || len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != idA.String() {
		t.Fatalf("with the header: %v, %v", resp, err)
	}
	if _, err := api.FetchJWTSVID(withHeader, &workload.JWTSVIDRequest{Audience: []string{"x"}}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchJWTSVID with the header: %v, want Unimplemented", err)
	}
}

func TestStreamsFollowChanges(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	b := s.NewWorkload()
	first := s.SetSVID(idA)
	b.SetSVID(idB)
	w := watch(t, newClient(t, s))

	got := w.next(t)
	if !got.DefaultSVID().Certificates[0].Equal(first.Certificates[0]) {
		t.Fatal("the first update is not the SVID SetSVID issued")
	}

	// Another workload's rotation sends this one nothing: the next
	// update it gets is its own rotation.
	b.RotateSVID()
	rotated := s.RotateSVID()
	got = w.next(t)
	leaf := got.DefaultSVID().Certificates[0]
	if !leaf.Equal(rotated.Certificates[0]) || leaf.Equal(first.Certificates[0]) {
		t.Fatal("after RotateSVID the stream did not carry the new SVID")
	}

	oldRoot := s.CA(td1).Bundle().X509Authorities()[0]
	s.RotateCA(td1)
	got = w.next(t)
	roots := bundle(t, got, td1).X509Authorities()
	if len(roots) != 2 || !roots[0].Equal(oldRoot) {
		t.Fatalf("after RotateCA the bundle has %d authorities, want the old and a new one", len(roots))
	}
	newPool := x509.NewCertPool()
	newPool.AddCert(roots[1])
	if _, err := got.DefaultSVID().Certificates[0].Verify(x509.VerifyOptions{Roots: newPool}); err != nil {
		t.Fatalf("after RotateCA the SVID is not signed by the new authority: %v", err)
	}
	if err := b.SVID().Certificates[0].CheckSignatureFrom(roots[1]); err != nil {
		t.Fatal("RotateCA did not reissue the other workload's SVID")
	}

	s.PruneBundle(td1)
	if roots := bundle(t, w.next(t), td1).X509Authorities(); len(roots) != 1 || roots[0].Equal(oldRoot) {
		t.Fatal("after PruneBundle the old authority is still in the bundle")
	}

	s.AddFederatedBundle(td2)
	if !bundle(t, w.next(t), td2).Equal(s.CA(td2).Bundle()) {
		t.Fatal("AddFederatedBundle did not send the bundle")
	}
	s.RotateCA(td2)
	if n := len(bundle(t, w.next(t), td2).X509Authorities()); n != 2 {
		t.Fatalf("after RotateCA(%s) the federated bundle has %d authorities, want 2", td2, n)
	}
	s.RemoveFederatedBundle(td2)
	if _, ok := w.next(t).Bundles.Get(td2); ok {
		t.Fatal("RemoveFederatedBundle did not remove the bundle")
	}
}

func TestBundlesStream(t *testing.T) {
	s := spiffetest.NewServer(t, "")
	s.SetSVID(idA)
	s.AddFederatedBundle(td2)
	c := newClient(t, s)
	updates := make(chan *x509bundle.Set)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.WatchX509Bundles(ctx, bundleWatcher(updates))
	}()
	defer func() {
		cancel()
		<-done
	}()
	next := func() *x509bundle.Set {
		select {
		case set := <-updates:
			return set
		case <-time.After(wait):
			t.Fatal("no bundle update")
			return nil
		}
	}
	set := next()
	if set.Len() != 2 || !set.Has(td1) || !set.Has(td2) {
		t.Fatalf("bundles %v, want %s and %s", set.Bundles(), td1, td2)
	}
	s.RotateCA(td2)
	b, _ := next().Get(td2)
	if len(b.X509Authorities()) != 2 {
		t.Fatal("the bundle stream did not follow RotateCA")
	}
}

type bundleWatcher chan *x509bundle.Set

func (w bundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) { w <- s }
func (bundleWatcher) OnX509BundlesWatchError(error)           {}

func TestStopRestart(t *testing.T) {
	dir, err := os.MkdirTemp("", "spiffetest-dir")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s := spiffetest.NewServer(t, dir)
	s.SetSVID(idA)
	retries := spiffetest.NewBackoff()
	w := watch(t, newClient(t, s, retries.ClientOptions()...))
	before := w.next(t)

	s.Stop()
	select {
	case err := <-w.errs:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("the stream ended with %v, want Unavailable", err)
		}
	case <-time.After(wait):
		t.Fatal("the open stream did not end at Stop")
	}
	if _, err := os.Stat(s.SocketPath()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after Stop the socket is still there: %v", err)
	}
	// The client keeps trying: two back-offs while nothing listens.
	retries.WaitRetries(t, retries.Retries()+2)
	rotated := s.RotateSVID()

	s.Restart()
	after := w.next(t)
	leaf := after.DefaultSVID().Certificates[0]
	if !leaf.Equal(rotated.Certificates[0]) || leaf.Equal(before.DefaultSVID().Certificates[0]) {
		t.Fatal("after Restart the client did not get the SVID rotated while the server was stopped")
	}
	s.Stop()
	s.Stop() // idempotent
}
