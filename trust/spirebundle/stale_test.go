package spirebundle_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

// staleRefusal reports whether err is the spire backend's refusal of
// bundles stale past the bound.
func staleRefusal(err error) bool {
	return errors.Is(err, trust.ErrUntrusted) && trust.Reason(err) == trust.ReasonStaleTrust
}

// TestStaleBundlesRefused: once the Workload API has been gone for the
// bound, the chains the last bundles would admit are refused as stale and
// the change is published; chains they would not admit stay unknown, for
// the next backend; the agent's return admits again, published too. The
// double stands in for the agent: it vanishes and comes back in place, in
// milliseconds, with the client's retries a few milliseconds apart. The
// real agent's PermissionDenied is internal/server's
// TestE2ERealSPIREStale.
func TestStaleBundlesRefused(t *testing.T) {
	srv, be, changes := setupBound(t, nil, 200*time.Millisecond)
	own := srv.CA(mesh).IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/a"))
	partnerSVID := srv.CA(partner).IssueSVID(spiffeid.RequireFromPath(partner, "/agent/x"))
	foreign := spiffetest.NewServer(t, "").CA(mesh).IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/b"))
	for _, c := range [][]*x509.Certificate{own.Certificates, partnerSVID.Certificates} {
		if _, err := verify(be, c); err != nil {
			t.Fatalf("while current: %v", err)
		}
	}
	if since, stale := be.StaleSince(time.Now()); !since.IsZero() || stale {
		t.Fatalf("StaleSince = %v, %v while the Workload API is up", since, stale)
	}
	before := changes.Load()

	srv.Stop()
	eventually.True(t, "the stale bundles refused and the change published", func() bool {
		_, err := verify(be, own.Certificates)
		return staleRefusal(err) && changes.Load() > before
	})
	if _, err := verify(be, partnerSVID.Certificates); !staleRefusal(err) {
		t.Errorf("the federated partner's SVID while stale: %v, want %s", err, trust.ReasonStaleTrust)
	}
	if _, err := verify(be, foreign.Certificates); !errors.Is(err, trust.ErrUnknownAuthority) {
		t.Errorf("an SVID no bundle signed, while stale: %v, want unknown authority (the next backend may know it)", err)
	}
	if since, stale := be.StaleSince(time.Now()); since.IsZero() || !stale {
		t.Errorf("StaleSince = %v, %v while refusing", since, stale)
	}

	refused := changes.Load()
	srv.Restart()
	eventually.True(t, "admitted again and the change published", func() bool {
		_, err := verify(be, own.Certificates)
		return err == nil && changes.Load() > refused
	})
	if since, stale := be.StaleSince(time.Now()); !since.IsZero() || stale {
		t.Errorf("StaleSince = %v, %v once current again", since, stale)
	}
}

// fakeSource is a Source whose staleness the test sets.
type fakeSource struct {
	creds *credentials.Credentials

	mu      sync.Mutex
	since   time.Time
	changed chan struct{}
}

func newFakeSource(bundles map[spiffeid.TrustDomain][]*x509.Certificate) *fakeSource {
	return &fakeSource{creds: &credentials.Credentials{Bundles: bundles}, changed: make(chan struct{})}
}

func (f *fakeSource) Current() (*credentials.Credentials, error) { return f.creds, nil }
func (f *fakeSource) Changed() <-chan struct{}                   { return nil }

func (f *fakeSource) StaleSince() (time.Time, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.since, f.changed
}

func (f *fakeSource) setStale(since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.since = since
	close(f.changed)
	f.changed = make(chan struct{})
}

// TestStaleBound: the bound is exact at Verify's now: stale for less than
// it admits, for it refuses. Zero is the default bound, negative an error;
// a closed backend stops vouching one bound after Close.
func TestStaleBound(t *testing.T) {
	ca := spiffetest.NewServer(t, "").CA(mesh)
	svid := ca.IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/a")).Certificates
	src := newFakeSource(map[spiffeid.TrustDomain][]*x509.Certificate{mesh: ca.Bundle().X509Authorities()})
	since := time.Now().Add(-time.Second)
	src.setStale(since)
	const bound = time.Hour
	be, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, TrustDomain: mesh, MaxStaleness: bound, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	at := func(now time.Time) error { _, err := be.Verify(context.Background(), svid, now); return err }
	if err := at(since.Add(bound - time.Nanosecond)); err != nil {
		t.Errorf("stale for less than the bound: %v", err)
	}
	if err := at(since.Add(bound)); !staleRefusal(err) {
		t.Errorf("stale for the bound: %v, want %s", err, trust.ReasonStaleTrust)
	}
	if got, stale := be.StaleSince(since.Add(bound)); !got.Equal(since) || !stale {
		t.Errorf("StaleSince = %v, %v; want %v, true", got, stale, since)
	}

	if _, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, TrustDomain: mesh, MaxStaleness: -time.Second}); err == nil {
		t.Error("a negative MaxStaleness was accepted")
	}
	def, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, TrustDomain: mesh, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if def.MaxStaleness() != spirebundle.DefaultMaxStaleness {
		t.Errorf("MaxStaleness() = %v for zero, want the default %v", def.MaxStaleness(), spirebundle.DefaultMaxStaleness)
	}
	src.setStale(time.Time{})
	eventually.True(t, "current again", func() bool { s, _ := def.StaleSince(time.Now()); return s.IsZero() })
	closed := time.Now()
	def.Close()
	if _, err := def.Verify(context.Background(), svid, closed); err != nil {
		t.Errorf("just after Close: %v", err)
	}
	if _, err := def.Verify(context.Background(), svid, closed.Add(spirebundle.DefaultMaxStaleness+time.Second)); !staleRefusal(err) {
		t.Errorf("one bound after Close: %v, want %s", err, trust.ReasonStaleTrust)
	}
}

// TestStaleLoggedOnce: going stale past the bound is logged once, and
// coming back once, however often the source's staleness is read.
func TestStaleLoggedOnce(t *testing.T) {
	ca := spiffetest.NewServer(t, "").CA(mesh)
	svid := ca.IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/a")).Certificates
	src := newFakeSource(map[spiffeid.TrustDomain][]*x509.Certificate{mesh: ca.Bundle().X509Authorities()})
	var log logtest.Buffer
	be, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, TrustDomain: mesh, MaxStaleness: time.Minute, Logger: log.JSONLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	src.setStale(time.Now().Add(-time.Hour))
	eventually.True(t, "refusing", func() bool { _, err := verify(be, svid); return staleRefusal(err) })
	src.setStale(time.Now().Add(-2 * time.Hour)) // still stale: no second line
	src.setStale(time.Time{})
	eventually.True(t, "admitting", func() bool { _, err := verify(be, svid); return err == nil })
	eventually.True(t, "the recovery logged", func() bool { return strings.Count(log.String(), "admitting SPIFFE certificates again") == 1 })
	if n := strings.Count(log.String(), "refusing every SPIFFE certificate"); n != 1 {
		t.Errorf("going stale logged %d times, want once:\n%s", n, log.String())
	}
}

// TestConcurrentVerifyAndStaleness verifies from several goroutines, under
// the race detector, while the source flips between stale past the bound
// and current: every verdict is the admission of the one peer or the stale
// refusal, never anything else, both are seen, and once the source is
// current for good the SVID is admitted.
func TestConcurrentVerifyAndStaleness(t *testing.T) {
	ca := spiffetest.NewServer(t, "").CA(mesh)
	svid := ca.IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/a")).Certificates
	src := newFakeSource(map[spiffeid.TrustDomain][]*x509.Certificate{mesh: ca.Bundle().X509Authorities()})
	be, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, TrustDomain: mesh, MaxStaleness: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	var notified atomic.Int64
	be.OnChange(func() { notified.Add(1) })
	var admitted, refused atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				p, err := verify(be, svid)
				switch {
				case err == nil && p.Entity == "" && p.SPIFFEID.String() == "spiffe://mesh.test/agent/ct111/a":
					admitted.Add(1)
				case staleRefusal(err):
					refused.Add(1)
				default:
					errs <- fmt.Sprintf("verdict %+v, %v: want the peer or %s", p, err, trust.ReasonStaleTrust)
					return
				}
			}
		})
	}
	for i := range 200 {
		if i%2 == 0 {
			src.setStale(time.Now().Add(-time.Hour))
			eventually.True(t, "refusing", func() bool { return refused.Load() > 0 })
		} else {
			src.setStale(time.Time{})
		}
	}
	eventually.True(t, "admitted once current", func() bool { _, err := verify(be, svid); return err == nil })
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Errorf("%d admissions and %d stale refusals; want both", admitted.Load(), refused.Load())
	}
	if notified.Load() < 2 {
		t.Errorf("%d change notifications for the flips, want at least 2", notified.Load())
	}
}
