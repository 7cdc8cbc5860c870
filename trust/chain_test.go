package trust_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
)

func TestChainVerify(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	pca, entities := partner(t, "partner-corp")
	stranger := pkitest.NewRoot(t, "stranger root")
	revs := &trust.RevocationSet{}
	revokedAgent := m.agent(t, "revoked", "ct111")
	revs.AddSerial(trust.Revoked{Serial: revokedAgent.SerialNumber.Text(16), At: time.Now()})
	gone, goneAnchors := partner(t, "gone-corp")
	revs.AddEntity(trust.Revoked{Entity: "gone-corp", At: time.Now()})

	// meshAnchors trusts the mesh root as the mesh's own CA, to show which
	// of two backends that both know a chain decides.
	meshAnchors := trust.NewAnchors("filestore")
	meshAnchors.Set("", []*x509.Certificate{m.root.Cert})

	// A mesh CA whose intermediate is for servers only.
	serverMesh := newMesh(t)
	serverInter := serverMesh.root.Intermediate(t, "mesh server intermediate", pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))
	serverMesh.inter = serverInter
	serverMesh.local.SetAnchors(serverMesh.root.Cert, []*x509.Certificate{serverInter.Cert})

	now := time.Now()
	agent := m.agent(t, "opus", "ct111")
	partnerLeaf := pca.Leaf(t, "scout")
	expiredPartnerLeaf := pca.Leaf(t, "old-scout", pkitest.Validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour)))

	for _, tc := range []struct {
		name     string
		backends []trust.Backend
		chain    []*x509.Certificate
		clock    func() time.Time

		wantErr     error // sentinel; nil when admitted
		wantReason  string
		wantBackend string
		wantEntity  string
		wantID      identity.Identity
	}{
		{
			name:        "mesh agent leaf alone",
			backends:    []trust.Backend{m.local},
			chain:       chainOf(agent),
			wantBackend: "localca",
			wantID:      identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"},
		},
		{
			name:        "mesh agent with its intermediate",
			backends:    []trust.Backend{m.local},
			chain:       chainOf(agent, m.inter.Cert),
			wantBackend: "localca",
			wantID:      identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"},
		},
		{
			name:       "no certificate",
			backends:   []trust.Backend{m.local},
			chain:      nil,
			wantErr:    trust.ErrNoCertificate,
			wantReason: trust.ReasonNoCertificate,
		},
		{
			name:       "unknown CA",
			backends:   []trust.Backend{m.local, entities},
			chain:      chainOf(stranger.Leaf(t, "opus@ct111", pkitest.URI("spiffe://mesh.local/agent/ct111/opus"))),
			wantErr:    trust.ErrUnknownAuthority,
			wantReason: trust.ReasonUnknownCA,
		},
		{
			name:     "no backends",
			backends: nil,
			chain:    chainOf(agent),
			wantErr:  trust.ErrUnknownAuthority, wantReason: trust.ReasonUnknownCA,
		},
		{
			name:       "expired",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.agent(t, "opus", "ct111", pkitest.Validity(now.Add(-48*time.Hour), now.Add(-time.Minute)))),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonExpired,
		},
		{
			name:       "not yet valid",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.agent(t, "opus", "ct111", pkitest.Validity(now.Add(time.Hour), now.Add(48*time.Hour)))),
			clock:      func() time.Time { return now.Add(30 * time.Minute) },
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonNotYetValid,
		},
		{
			name:       "server-only certificate used as client",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.agent(t, "opus", "ct111", pkitest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonNotClient,
		},
		{
			name:       "mesh intermediate for servers only",
			backends:   []trust.Backend{serverMesh.local},
			chain:      chainOf(serverMesh.agent(t, "opus", "ct111")),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonNotClient,
		},
		{
			name:       "mesh agent with an RSA-1024 key",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.agent(t, "opus", "ct111", pkitest.Key(rsa1024()))),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonWeakKey,
		},
		{
			// Refused before any anchor is looked for: no backend could
			// admit it, and none spends a signature check on it.
			name:       "weak key in a chain of a CA the first backend does not know",
			backends:   []trust.Backend{m.local, entities},
			chain:      chainOf(pca.Leaf(t, "scout", pkitest.Key(rsa1024()))),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonWeakKey,
		},
		{
			name:        "no extended key usage at all is any usage",
			backends:    []trust.Backend{m.local},
			chain:       chainOf(m.agent(t, "opus", "ct111", pkitest.ExtKeyUsage())),
			wantBackend: "localca",
			wantID:      identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"},
		},
		{
			name:       "CA certificate as leaf",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.inter.Cert),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonCAAsLeaf,
		},
		{
			name:       "entity CA certificate as leaf",
			backends:   []trust.Backend{m.local, entities},
			chain:      chainOf(pca.Cert),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonCAAsLeaf,
		},
		{
			name:       "CN and SPIFFE ID disagree",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.inter.Leaf(t, "opus@ct111", pkitest.URI("spiffe://mesh.local/agent/ct111/mallory"))),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonBadIdentity,
		},
		{
			name:       "mesh certificate without SPIFFE ID",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.inter.Leaf(t, "opus@ct111")),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonBadIdentity,
		},
		{
			name:       "SPIFFE ID in another trust domain",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(m.inter.Leaf(t, "opus@ct111", pkitest.URI("spiffe://evil.example/agent/ct111/opus"))),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonBadIdentity,
		},
		{
			name:       "revoked serial",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(revokedAgent),
			wantErr:    trust.ErrRevoked,
			wantReason: trust.ReasonRevoked,
		},
		{
			name:       "revoked entity",
			backends:   []trust.Backend{m.local, goneAnchors},
			chain:      chainOf(gone.Leaf(t, "scout")),
			wantErr:    trust.ErrRevoked,
			wantReason: trust.ReasonEntityRevoked,
		},
		{
			name:        "entity certificate falls through localca",
			backends:    []trust.Backend{m.local, entities},
			chain:       chainOf(partnerLeaf),
			wantBackend: "entities",
			wantEntity:  "partner-corp",
		},
		{
			name:        "first of two backends that know the chain wins",
			backends:    []trust.Backend{m.local, meshAnchors},
			chain:       chainOf(agent, m.inter.Cert),
			wantBackend: "localca",
			wantID:      identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"},
		},
		{
			name:        "first of two backends that know the chain wins, other order",
			backends:    []trust.Backend{meshAnchors, m.local},
			chain:       chainOf(agent, m.inter.Cert),
			wantBackend: "filestore",
			wantID:      identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"},
		},
		{
			// localca knows the CA, so its refusal is final: the next
			// backend, which would not check the SPIFFE ID, is not asked.
			name:       "a refusal by the backend that knows the chain is final",
			backends:   []trust.Backend{m.local, meshAnchors},
			chain:      chainOf(m.inter.Leaf(t, "opus@ct111"), m.inter.Cert),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonBadIdentity,
		},
		{
			name:       "expired certificate of a CA localca does not know is unknown to it",
			backends:   []trust.Backend{m.local},
			chain:      chainOf(expiredPartnerLeaf),
			wantErr:    trust.ErrUnknownAuthority,
			wantReason: trust.ReasonUnknownCA,
		},
		{
			name:       "expired entity certificate is reported by the backend that knows it",
			backends:   []trust.Backend{m.local, entities},
			chain:      chainOf(expiredPartnerLeaf),
			wantErr:    trust.ErrUntrusted,
			wantReason: trust.ReasonExpired,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var opts []trust.ChainOption
			if tc.clock != nil {
				opts = append(opts, trust.WithClock(tc.clock))
			}
			c := trust.NewChain(revs, tc.backends, opts...)
			peer, err := c.Verify(t.Context(), tc.chain)
			if tc.wantErr != nil {
				if peer != nil || err == nil {
					t.Fatalf("Verify = %+v, %v; want refusal %v", peer, err, tc.wantErr)
				}
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("error %v does not wrap %v", err, tc.wantErr)
				}
				var ve *trust.VerifyError
				if !errors.As(err, &ve) {
					t.Fatalf("error %T is not a *trust.VerifyError", err)
				}
				if ve.Reason != tc.wantReason || trust.Reason(err) != tc.wantReason {
					t.Errorf("reason %q, want %q", ve.Reason, tc.wantReason)
				}
				// The detail names what to look at: the certificate, or the
				// revoked entity.
				name := "gone-corp"
				if len(tc.chain) > 0 && tc.wantReason != trust.ReasonEntityRevoked {
					name = tc.chain[0].Subject.CommonName
				}
				if len(tc.chain) > 0 && !strings.Contains(err.Error(), name) {
					t.Errorf("error %q does not name %q", err, name)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v (reason %s)", err, trust.Reason(err))
			}
			if peer.Backend != tc.wantBackend || peer.Entity != tc.wantEntity || peer.Identity != tc.wantID {
				t.Errorf("peer backend %q entity %q identity %+v, want %q %q %+v",
					peer.Backend, peer.Entity, peer.Identity, tc.wantBackend, tc.wantEntity, tc.wantID)
			}
			leaf := tc.chain[0]
			if peer.Leaf != leaf || peer.Fingerprint != trust.Fingerprint(leaf) || peer.Serial != leaf.SerialNumber.Text(16) {
				t.Errorf("peer leaf/fingerprint/serial do not describe the leaf: %+v", peer)
			}
			if want := fmt.Sprintf("%x", leaf.AuthorityKeyId); peer.IssuerKeyID != want || want == "" {
				t.Errorf("IssuerKeyID %q, want %q", peer.IssuerKeyID, want)
			}
		})
	}
}

func TestReasonOfOtherErrors(t *testing.T) {
	t.Parallel()
	if got := trust.Reason(errors.New("boom")); got != "error" {
		t.Errorf("Reason(plain error) = %q, want %q", got, "error")
	}
	if got := trust.Reason(fmt.Errorf("wrapped: %w", &trust.VerifyError{Reason: trust.ReasonExpired})); got != trust.ReasonExpired {
		t.Errorf("Reason(wrapped) = %q, want %q", got, trust.ReasonExpired)
	}
}

// An entity CA whose own certificate expires before the leaves it signed
// stops admitting them, even when the verdict was cached before.
func TestChainCachedAdmitEndsWithTheCA(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	ca := pkitest.NewRoot(t, "short-lived root", pkitest.Validity(now.Add(-time.Hour), now.Add(time.Hour)))
	a := trust.NewAnchors("entities")
	a.Set("partner", []*x509.Certificate{ca.Cert})
	leaf := ca.Leaf(t, "scout", pkitest.Validity(now.Add(-time.Hour), now.Add(24*time.Hour)))
	clk := clocktest.New(now)
	c := trust.NewChain(nil, []trust.Backend{a}, trust.WithClock(clk.Now))
	if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
		t.Fatalf("before the CA expires: %v", err)
	}
	clk.Advance(2 * time.Hour)
	_, err := c.Verify(t.Context(), chainOf(leaf))
	if !errors.Is(err, trust.ErrUntrusted) || trust.Reason(err) != trust.ReasonBadChain {
		t.Fatalf("after the CA expired: err %v (reason %s), want %s", err, trust.Reason(err), trust.ReasonBadChain)
	}
}

func TestChainCache(t *testing.T) {
	t.Parallel()

	t.Run("second verify is a hit", func(t *testing.T) {
		t.Parallel()
		m := newMesh(t)
		c := trust.NewChain(nil, []trust.Backend{m.local})
		leaf := m.agent(t, "opus", "ct111")
		p1, err := c.Verify(t.Context(), chainOf(leaf))
		if err != nil {
			t.Fatal(err)
		}
		p2, err := c.Verify(t.Context(), chainOf(leaf))
		if err != nil {
			t.Fatal(err)
		}
		if hits, misses := c.CacheStats(); hits != 1 || misses != 1 {
			t.Errorf("CacheStats = %d hits, %d misses; want 1, 1", hits, misses)
		}
		if p1 != p2 {
			t.Errorf("cached verify returned a different peer")
		}
	})

	t.Run("revocation after a cached admit refuses", func(t *testing.T) {
		t.Parallel()
		m := newMesh(t)
		revs := &trust.RevocationSet{}
		c := trust.NewChain(revs, []trust.Backend{m.local})
		leaf := m.agent(t, "opus", "ct111")
		if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
			t.Fatal(err)
		}
		gen := c.Generation()
		if !revs.AddSerial(trust.Revoked{Serial: leaf.SerialNumber.Text(16), At: time.Now()}) {
			t.Fatal("AddSerial reported an existing serial")
		}
		if c.Generation() == gen {
			t.Error("Generation did not move on revocation")
		}
		if _, err := c.Verify(t.Context(), chainOf(leaf)); !errors.Is(err, trust.ErrRevoked) {
			t.Fatalf("after revocation: %v, want ErrRevoked", err)
		}
		if revs.AddSerial(trust.Revoked{Serial: leaf.SerialNumber.Text(16)}) {
			t.Error("AddSerial of a revoked serial reported it new")
		}
	})

	t.Run("entity revocation and reinstatement", func(t *testing.T) {
		t.Parallel()
		pca, entities := partner(t, "partner-corp")
		revs := &trust.RevocationSet{}
		c := trust.NewChain(revs, []trust.Backend{entities})
		leaf := pca.Leaf(t, "scout")
		if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
			t.Fatal(err)
		}
		revs.AddEntity(trust.Revoked{Entity: "partner-corp", At: time.Now()})
		if _, err := c.Verify(t.Context(), chainOf(leaf)); trust.Reason(err) != trust.ReasonEntityRevoked {
			t.Fatalf("after entity revocation: %v, want %s", err, trust.ReasonEntityRevoked)
		}
		if !revs.RemoveEntity("partner-corp") {
			t.Fatal("RemoveEntity reported nothing removed")
		}
		if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
			t.Fatalf("after reinstatement: %v", err)
		}
		if s, e := revs.Len(); s != 0 || e != 0 {
			t.Errorf("Len = %d, %d; want 0, 0", s, e)
		}
	})

	t.Run("SetAnchors on LocalCA invalidates", func(t *testing.T) {
		t.Parallel()
		m := newMesh(t)
		c := trust.NewChain(nil, []trust.Backend{m.local})
		leaf := m.agent(t, "opus", "ct111")
		if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
			t.Fatal(err)
		}
		// A new root replaces the old one: its leaves are no longer known.
		next := newMesh(t)
		m.local.SetAnchors(next.root.Cert, []*x509.Certificate{next.inter.Cert})
		if _, err := c.Verify(t.Context(), chainOf(leaf)); !errors.Is(err, trust.ErrUnknownAuthority) {
			t.Fatalf("after rotation: %v, want ErrUnknownAuthority", err)
		}
		if _, err := c.Verify(t.Context(), chainOf(next.agent(t, "opus", "ct111"))); err != nil {
			t.Fatalf("leaf of the new root: %v", err)
		}
	})

	t.Run("removing an entity invalidates", func(t *testing.T) {
		t.Parallel()
		pca, entities := partner(t, "partner-corp")
		c := trust.NewChain(nil, []trust.Backend{entities})
		leaf := pca.Leaf(t, "scout")
		if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
			t.Fatal(err)
		}
		entities.Remove("partner-corp")
		if _, err := c.Verify(t.Context(), chainOf(leaf)); !errors.Is(err, trust.ErrUnknownAuthority) {
			t.Fatalf("after removal: %v, want ErrUnknownAuthority", err)
		}
	})

	t.Run("a refusal is cached for a while only", func(t *testing.T) {
		t.Parallel()
		pca := pkitest.NewRoot(t, "late root")
		a := trust.NewAnchors("entities")
		clk := clocktest.New(time.Now())
		c := trust.NewChain(nil, []trust.Backend{hideNotify{a}}, trust.WithClock(clk.Now))
		leaf := pca.Leaf(t, "scout")
		if _, err := c.Verify(t.Context(), chainOf(leaf)); !errors.Is(err, trust.ErrUnknownAuthority) {
			t.Fatalf("before the CA is known: %v", err)
		}
		a.Set("late", []*x509.Certificate{pca.Cert}) // the chain is not told
		if _, err := c.Verify(t.Context(), chainOf(leaf)); !errors.Is(err, trust.ErrUnknownAuthority) {
			t.Fatalf("cached refusal: %v, want the cached ErrUnknownAuthority", err)
		}
		clk.Advance(6 * time.Second)
		p, err := c.Verify(t.Context(), chainOf(leaf))
		if err != nil {
			t.Fatalf("after the refusal ran out: %v", err)
		}
		if p.Entity != "late" {
			t.Errorf("entity %q, want %q", p.Entity, "late")
		}
		if hits, misses := c.CacheStats(); hits != 1 || misses != 2 {
			t.Errorf("CacheStats = %d hits, %d misses; want 1, 2", hits, misses)
		}
	})

	t.Run("a cached admit expires with its leaf", func(t *testing.T) {
		t.Parallel()
		m := newMesh(t)
		now := time.Now().Truncate(time.Second)
		clk := clocktest.New(now)
		c := trust.NewChain(nil, []trust.Backend{m.local}, trust.WithClock(clk.Now))
		leaf := m.agent(t, "opus", "ct111", pkitest.Validity(now.Add(-time.Hour), now.Add(time.Minute)))
		if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
			t.Fatal(err)
		}
		clk.Advance(2 * time.Minute)
		if _, err := c.Verify(t.Context(), chainOf(leaf)); trust.Reason(err) != trust.ReasonExpired {
			t.Fatalf("after expiry: %v, want %s", err, trust.ReasonExpired)
		}
	})

	t.Run("Invalidate forces a recompute", func(t *testing.T) {
		t.Parallel()
		m := newMesh(t)
		c := trust.NewChain(nil, []trust.Backend{m.local})
		leaf := m.agent(t, "opus", "ct111")
		for range 2 {
			if _, err := c.Verify(t.Context(), chainOf(leaf)); err != nil {
				t.Fatal(err)
			}
			c.Invalidate()
		}
		if hits, misses := c.CacheStats(); hits != 0 || misses != 2 {
			t.Errorf("CacheStats = %d hits, %d misses; want 0, 2", hits, misses)
		}
	})
}

// Many goroutines verify while revocations land; run under -race. Every
// certificate revoked before a verification starts must be refused by it.
func TestChainConcurrent(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	pca, entities := partner(t, "partner-corp")
	revs := &trust.RevocationSet{}
	c := trust.NewChain(revs, []trust.Backend{m.local, entities})
	const n = 32
	leaves := make([]*x509.Certificate, n)
	for i := range leaves {
		if i%2 == 0 {
			leaves[i] = m.agent(t, fmt.Sprintf("a%d", i), "ct111")
		} else {
			leaves[i] = pca.Leaf(t, fmt.Sprintf("p%d", i))
		}
	}
	revoked := make([]chan struct{}, n) // closed once leaf i is revoked
	for i := range revoked {
		revoked[i] = make(chan struct{})
	}

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for round := range 200 {
				i := (g + round) % n
				var wasRevoked bool
				select {
				case <-revoked[i]:
					wasRevoked = true
				default:
				}
				p, err := c.Verify(t.Context(), chainOf(leaves[i]))
				switch {
				case wasRevoked && !errors.Is(err, trust.ErrRevoked):
					errs <- fmt.Errorf("leaf %d revoked before Verify: got %v", i, err)
					return
				case err != nil && !errors.Is(err, trust.ErrRevoked):
					errs <- fmt.Errorf("leaf %d: %v", i, err)
					return
				case err == nil && p.Leaf != leaves[i]:
					errs <- fmt.Errorf("leaf %d: peer of another leaf", i)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; i < n; i += 3 {
			revs.AddSerial(trust.Revoked{Serial: leaves[i].SerialNumber.Text(16), At: time.Now()})
			close(revoked[i])
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 0; i < n; i += 3 {
		if _, err := c.Verify(t.Context(), chainOf(leaves[i])); !errors.Is(err, trust.ErrRevoked) {
			t.Errorf("leaf %d after all revocations: %v, want ErrRevoked", i, err)
		}
	}
}

func BenchmarkChainVerify(b *testing.B) {
	m := newMesh(b)
	c := trust.NewChain(&trust.RevocationSet{}, []trust.Backend{m.local})
	chain := chainOf(m.agent(b, "opus", "ct111"), m.inter.Cert)
	ctx := b.Context()
	if _, err := c.Verify(ctx, chain); err != nil {
		b.Fatal(err)
	}
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Verify(ctx, chain); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("uncached", func(b *testing.B) {
		for b.Loop() {
			c.Invalidate()
			if _, err := c.Verify(ctx, chain); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// refuseDomain is a backend that knows the leaf's trust domain is not one
// it trusts, as the spire backend does.
type refuseDomain struct{}

func (refuseDomain) Name() string { return "spire" }
func (refuseDomain) Verify(context.Context, []*x509.Certificate, time.Time) (*trust.Peer, error) {
	return nil, trust.NewVerifyError(trust.ErrUnknownTrustDomain, trust.ReasonUnknownCA, "trust domain stranger.test is not trusted here")
}

// TestChainKeepsTheSpecificRefusal: when no backend admits a chain, the
// refusal is the one that said why (an untrusted trust domain), not the
// generic unknown authority, whichever backend came first; a later backend
// that admits still wins.
func TestChainKeepsTheSpecificRefusal(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	stranger := pkitest.NewRoot(t, "stranger root")
	leaf := stranger.Leaf(t, "x")
	for _, backends := range [][]trust.Backend{{m.local, refuseDomain{}}, {refuseDomain{}, m.local}} {
		_, err := trust.NewChain(&trust.RevocationSet{}, backends).Verify(context.Background(), chainOf(leaf))
		if !errors.Is(err, trust.ErrUnknownAuthority) || !errors.Is(err, trust.ErrUnknownTrustDomain) || trust.Reason(err) != trust.ReasonUnknownCA || !strings.Contains(err.Error(), "stranger.test is not trusted here") {
			t.Errorf("backends %v: %v (reason %s), want the trust domain's refusal", backends, err, trust.Reason(err))
		}
	}
	agent := m.agent(t, "opus", "ct111")
	if _, err := trust.NewChain(&trust.RevocationSet{}, []trust.Backend{refuseDomain{}, m.local}).Verify(context.Background(), chainOf(agent)); err != nil {
		t.Errorf("a later backend that admits: %v", err)
	}
}
