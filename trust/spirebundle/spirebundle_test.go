package spirebundle_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

var (
	mesh     = spiffeid.RequireTrustDomainFromString("mesh.test")
	partner  = spiffeid.RequireTrustDomainFromString("partner.test")
	stranger = spiffeid.RequireTrustDomainFromString("stranger.test")
	meshd    = spiffeid.RequireFromPath(mesh, "/meshd")
)

// setup runs a Workload API for meshd's workload, federating with
// partner and (though not listed) stranger, and a spire backend over the
// SPIRE provider's source, listing partner only.
func setup(t *testing.T, entities map[spiffeid.TrustDomain]string) (*spiffetest.Server, *spirebundle.Backend, *atomic.Int64) {
	t.Helper()
	return setupBound(t, entities, 0)
}

// setupBound is setup with a staleness bound (0: the default).
func setupBound(t *testing.T, entities map[spiffeid.TrustDomain]string, bound time.Duration) (*spiffetest.Server, *spirebundle.Backend, *atomic.Int64) {
	t.Helper()
	srv := spiffetest.NewServer(t, "")
	srv.SetSVID(meshd)
	srv.AddFederatedBundle(partner)
	srv.AddFederatedBundle(stranger)
	b := spiffetest.NewBackoff()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	src, err := spire.New(ctx, spire.WithSocket(srv.SocketPath()), spire.WithFederation(partner), spire.WithClientOptions(b.ClientOptions()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	be, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, Entities: entities, MaxStaleness: bound, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	changes := &atomic.Int64{}
	be.OnChange(func() { changes.Add(1) })
	eventually.True(t, "the partner bundle", func() bool { return slices.Contains(be.Entities(), be.Entity(partner)) })
	return srv, be, changes
}

func verify(be *spirebundle.Backend, chain []*x509.Certificate) (*trust.Peer, error) {
	return be.Verify(context.Background(), chain, time.Now())
}

// The tests in this file run on the Workload API double (internal/spiffetest)
// for what a real SPIRE cannot be made to produce on demand, each saying
// which; the real server judges the authority's lifecycle
// (TestRealSPIREBundlesFollowed here) and federation, a dropped partner
// bundle and the agent's restart (cmd/meshd's TestRealSPIRE… suite).

// TestBundleVouchesForItsTrustDomainOnly: the double, because it needs CAs
// that sign SVIDs of another trust domain than their own (the partner's
// vouching for a mesh ID), which no real SPIRE server issues.
func TestBundleVouchesForItsTrustDomainOnly(t *testing.T) {
	srv, be, _ := setup(t, nil)
	meshCA, partnerCA, strangerCA := srv.CA(mesh), srv.CA(partner), srv.CA(stranger)

	agent := meshCA.IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/opus"))
	p, err := verify(be, agent.Certificates)
	if err != nil {
		t.Fatalf("mesh agent: %v", err)
	}
	if p.Entity != "" || p.Backend != "spire" {
		t.Errorf("mesh agent: entity %q backend %q, want \"\" (meshd's own trust domain is the mesh's own), spire", p.Entity, p.Backend)
	}
	if want, _ := identity.NewAgent("opus", "ct111"); p.Identity != want {
		t.Errorf("mesh agent identity = %v, want %v (from its SPIFFE ID)", p.Identity, want)
	}

	p, err = verify(be, partnerCA.IssueSVID(spiffeid.RequireFromPath(partner, "/agent/x")).Certificates)
	if err != nil || p.Entity != "partner.test" {
		t.Fatalf("listed federated partner: %v, %v; want entity partner.test", p, err)
	}

	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
	}{
		// The partner's CA signing an ID of the mesh's trust domain: MCP
		// Mesh's fallback to any bundle would admit it.
		{"partner CA vouching for a mesh ID", partnerCA.IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/opus")).Certificates},
		{"mesh CA vouching for a partner ID", meshCA.IssueSVID(spiffeid.RequireFromPath(partner, "/agent/x")).Certificates},
		// Federated, but not listed by the operator.
		{"unlisted federated trust domain", strangerCA.IssueSVID(spiffeid.RequireFromPath(stranger, "/agent/y")).Certificates},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify(be, tc.chain)
			if err == nil {
				t.Fatal("admitted")
			}
			if !errors.Is(err, trust.ErrUnknownAuthority) {
				t.Errorf("error %v, want unknown authority", err)
			}
		})
	}

	// No SPIFFE ID at all: for the next backend.
	chain, _ := meshCA.Issue(&x509.Certificate{URIs: []*url.URL{{Scheme: "https", Host: "example.com"}}})
	if _, err := verify(be, chain); !errors.Is(err, trust.ErrUnknownAuthority) {
		t.Errorf("certificate without a SPIFFE ID: %v, want unknown authority", err)
	}
	if got := be.Entities(); !slices.Equal(got, []string{"partner.test"}) {
		t.Errorf("Entities = %v, want partner.test (the own trust domain is no entity; stranger.test is not listed)", got)
	}
}

func TestEntityMapping(t *testing.T) {
	srv, be, _ := setup(t, map[spiffeid.TrustDomain]string{partner: "acme"})
	p, err := verify(be, srv.CA(partner).IssueSVID(spiffeid.RequireFromPath(partner, "/agent/x")).Certificates)
	if err != nil || p.Entity != "acme" {
		t.Fatalf("mapped trust domain: %v, %v; want entity acme", p, err)
	}
	if len(be.Certificates("acme")) == 0 {
		t.Error("no certificates for the mapped entity")
	}
	if _, err := spirebundle.New(t.Context(), spirebundle.Config{Source: nopSource{}, Entities: map[spiffeid.TrustDomain]string{partner: "Not An Id"}}); err == nil {
		t.Error("an entity name that is not an id was accepted")
	}
}

// TestAgentOutageKeepsBundles: the Workload API going away keeps the last
// bundles; its return brings the changes made meanwhile. The double,
// because it changes a bundle exactly while its Workload API is down.
func TestAgentOutageKeepsBundles(t *testing.T) {
	srv, be, _ := setup(t, nil)
	svid := srv.CA(partner).IssueSVID(spiffeid.RequireFromPath(partner, "/agent/x"))
	srv.Stop()
	if _, err := verify(be, svid.Certificates); err != nil {
		t.Fatalf("while the agent is away: %v", err)
	}
	srv.RemoveFederatedBundle(partner)
	srv.Restart()
	eventually.True(t, "the change made during the outage", func() bool { return !slices.Contains(be.Entities(), "partner.test") })
}

// TestConcurrentVerifyAndChange verifies from several goroutines while the
// partner's CA rotates and its bundle is pruned, under the race detector,
// and checks what every verification returned: the mesh SVID, whose bundle
// never changes, is always the same peer; the partner SVID minted before
// the first rotation is the partner's peer until its authority is pruned
// and refused as unknown from then on, never the other way round; both
// trust domains stay listed throughout. The double, because it rotates
// and prunes far faster than a real server can.
func TestConcurrentVerifyAndChange(t *testing.T) {
	srv, be, _ := setup(t, nil)
	svid := srv.CA(mesh).IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/ct111/a"))
	old := srv.CA(partner).IssueSVID(spiffeid.RequireFromPath(partner, "/agent/x"))
	meshRoots := be.Certificates("")
	agent, _ := identity.NewAgent("a", "ct111")
	// check returns what was wrong with one round of reads, or "", and
	// whether the old partner SVID was refused.
	check := func() (bad string, refused bool) {
		p, err := verify(be, svid.Certificates)
		if err != nil || p.Entity != "" || p.Backend != "spire" || p.Identity != agent {
			return fmt.Sprintf("the mesh SVID: %+v, %v; want agent a@ct111 of mesh.test by spire", p, err), false
		}
		switch p, err := verify(be, old.Certificates); {
		case err == nil && (p.Entity != "partner.test" || p.Backend != "spire"):
			return fmt.Sprintf("the old partner SVID: admitted as entity %q by %q", p.Entity, p.Backend), false
		case err != nil && !errors.Is(err, trust.ErrUnknownAuthority):
			return fmt.Sprintf("the old partner SVID: %v, want admitted or unknown authority", err), false
		case err != nil:
			refused = true
		}
		if got := be.Entities(); !slices.Equal(got, []string{"partner.test"}) {
			return fmt.Sprintf("Entities = %v, want partner.test", got), refused
		}
		if got := be.Certificates(""); !slices.EqualFunc(got, meshRoots, (*x509.Certificate).Equal) {
			return fmt.Sprintf("Certificates(\"\") changed: %d certificates, was %d", len(got), len(meshRoots)), refused
		}
		if got := be.Certificates("partner.test"); len(got) == 0 {
			return "Certificates(partner.test) is empty", refused
		}
		return "", refused
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	rounds := make([]int, 4)
	for g := range rounds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wasRefused := false
			for ; ; rounds[g]++ {
				select {
				case <-stop:
					return
				default:
				}
				bad, refused := check()
				if bad == "" && wasRefused && !refused {
					bad = "the old partner SVID was admitted again after its authority was pruned"
				}
				if bad != "" {
					t.Errorf("goroutine %d, round %d: %s", g, rounds[g], bad)
					return
				}
				wasRefused = refused
			}
		}()
	}
	for range 20 {
		srv.RotateCA(partner)
		srv.PruneBundle(partner)
	}
	eventually.True(t, "the old partner authority to be pruned", func() bool {
		_, err := verify(be, old.Certificates)
		return errors.Is(err, trust.ErrUnknownAuthority)
	})
	close(stop)
	wg.Wait()
	for g, n := range rounds {
		if n == 0 && !t.Failed() {
			t.Errorf("goroutine %d verified nothing", g)
		}
	}
}

// nopSource has no credentials.
type nopSource struct{}

func (nopSource) Current() (*credentials.Credentials, error) { return nil, credentials.ErrClosed }
func (nopSource) Changed() <-chan struct{}                   { return make(chan struct{}) }
func (nopSource) StaleSince() (time.Time, <-chan struct{})   { return time.Time{}, nil }

// TestOwnTrustDomain: meshd's own trust domain is the mesh's own (entity
// ""), whether given or taken from the source's SVID; a mapping makes it
// an entity.
func TestOwnTrustDomain(t *testing.T) {
	_, be, _ := setup(t, nil)
	if be.TrustDomain() != mesh {
		t.Errorf("TrustDomain = %v, want %v (the SVID's)", be.TrustDomain(), mesh)
	}
	if e := be.Entity(mesh); e != "" {
		t.Errorf("Entity(own) = %q, want \"\"", e)
	}
	if e := be.Entity(partner); e != "partner.test" {
		t.Errorf("Entity(partner) = %q, want partner.test", e)
	}
	srv, mapped, _ := setup(t, map[spiffeid.TrustDomain]string{mesh: "mesh"})
	if p, err := verify(mapped, srv.CA(mesh).IssueSVID(spiffeid.RequireFromPath(mesh, "/agent/x")).Certificates); err != nil || p.Entity != "mesh" {
		t.Errorf("mapped own trust domain: %v, %v; want entity mesh", p, err)
	}
	if e := mapped.Entity(mesh); e != "mesh" {
		t.Errorf("mapped own trust domain: Entity = %q, want mesh", e)
	}
	if got := mapped.Entities(); !slices.Contains(got, "mesh") {
		t.Errorf("mapped own trust domain: Entities = %v, want it listed", got)
	}
}
