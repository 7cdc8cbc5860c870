package trust_test

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
)

func TestAnchorsEntityIsTheRegisteredName(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "acme-corp", pkitest.Subject("acme-corp", "acme-corp"))
	inter := ca.Intermediate(t, "acme issuing", pkitest.Subject("other-corp", "other-corp"))
	a := trust.NewAnchors("entities")
	a.Set("partner-corp", []*x509.Certificate{ca.Cert})
	p, err := a.Verify(t.Context(), chainOf(inter.Leaf(t, "scout", pkitest.Subject("acme-corp", "x")), inter.Cert), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if p.Entity != "partner-corp" || p.Backend != "entities" {
		t.Errorf("entity %q backend %q, want %q %q", p.Entity, p.Backend, "partner-corp", "entities")
	}
	if !p.Identity.IsZero() {
		t.Errorf("a partner's plain CN gave identity %+v, want none", p.Identity)
	}
}

func TestAnchorsSetRemoveReplace(t *testing.T) {
	t.Parallel()
	a := trust.NewAnchors("entities")
	changes := 0
	a.OnChange(func() { changes++ })
	x, y, own := pkitest.NewRoot(t, "x"), pkitest.NewRoot(t, "y"), pkitest.NewRoot(t, "own")
	a.Set("beta", []*x509.Certificate{x.Cert})
	a.Set("alpha", []*x509.Certificate{y.Cert})
	a.Set("", []*x509.Certificate{own.Cert})
	if got, want := a.Entities(), []string{"alpha", "beta"}; !slices.Equal(got, want) {
		t.Errorf("Entities = %q, want %q", got, want)
	}
	if got := a.Certificates("beta"); len(got) != 1 || got[0] != x.Cert {
		t.Errorf("Certificates(beta) = %v", got)
	}
	a.Remove("beta")
	if _, err := a.Verify(t.Context(), chainOf(x.Leaf(t, "scout")), time.Now()); !errors.Is(err, trust.ErrUnknownAuthority) {
		t.Errorf("leaf of a removed entity: %v, want ErrUnknownAuthority", err)
	}
	p, err := a.Verify(t.Context(), chainOf(own.Leaf(t, "scout")), time.Now())
	if err != nil || p.Entity != "" {
		t.Errorf("leaf of the mesh's own CA: %+v, %v; want entity \"\"", p, err)
	}
	a.Replace(map[string][]*x509.Certificate{"gamma": {x.Cert}})
	if got, want := a.Entities(), []string{"gamma"}; !slices.Equal(got, want) {
		t.Errorf("after Replace, Entities = %q, want %q", got, want)
	}
	if changes != 5 {
		t.Errorf("%d change notifications, want 5", changes)
	}
}

// A CA registered under two names is attributed to one of them
// deterministically: the mesh's own first, then the first name in order,
// so that which entity a revocation must name does not change from one
// verification to the next.
func TestAnchorsDuplicateCAIsDeterministic(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "shared root")
	leaf := ca.Leaf(t, "scout")
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{names: []string{"zulu", "alpha", "mike"}, want: "alpha"},
		{names: []string{"zulu", ""}, want: ""},
	} {
		set := map[string][]*x509.Certificate{}
		for _, n := range tc.names {
			set[n] = []*x509.Certificate{ca.Cert}
		}
		a := trust.NewAnchors("entities")
		a.Replace(set)
		for range 50 {
			p, err := a.Verify(t.Context(), chainOf(leaf), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if p.Entity != tc.want {
				t.Fatalf("names %q: entity %q, want %q", tc.names, p.Entity, tc.want)
			}
		}
	}
}

// Concurrent updates of different entities all land, each once: every Set
// or Remove starts from the set the one before it left, while readers keep
// verifying beside them.
func TestAnchorsConcurrentUpdates(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "shared root")
	leaf := ca.Leaf(t, "scout")
	certs := []*x509.Certificate{ca.Cert}
	a := trust.NewAnchors("entities")
	const n = 200
	var want []string
	for i := range n {
		a.Set(fmt.Sprintf("old-%03d", i), certs)
		want = append(want, fmt.Sprintf("new-%03d", i))
	}
	var changes atomic.Int64
	a.OnChange(func() { changes.Add(1) })
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { a.Set(want[i], certs) })
		wg.Go(func() { a.Remove(fmt.Sprintf("old-%03d", i)) })
		wg.Go(func() {
			_, _ = a.Verify(t.Context(), chainOf(leaf), time.Now())
			_ = a.Certificates(want[i])
		})
	}
	wg.Wait()
	if got := a.Entities(); !slices.Equal(got, want) {
		kept := slices.DeleteFunc(slices.Clone(got), func(e string) bool { return !strings.HasPrefix(e, "new-") })
		t.Errorf("after %d concurrent sets and %d removals: %d of the entities set, %d of the removed ones left; want the %d set only", n, n, len(kept), len(got)-len(kept), n)
	}
	if got := changes.Load(); got != 2*n {
		t.Errorf("%d change notifications, want %d", got, 2*n)
	}
	if p, err := a.Verify(t.Context(), chainOf(leaf), time.Now()); err != nil || p.Entity != "new-000" {
		t.Errorf("verify after the updates: %+v, %v; want entity new-000", p, err)
	}
}
