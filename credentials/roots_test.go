package credentials_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/tlstest"
)

// TestOperatorRoots: the CAs an operator adds vouch for a server without
// a SPIFFE ID and for an ID of a trust domain without a bundle, never for
// an ID of a trust domain a bundle speaks for (the SPIRE trust domain's
// own, or a federated one's); without bundles they count as roots.
func TestOperatorRoots(t *testing.T) {
	t.Parallel()
	spire, partner, mesh, other := pkitest.NewRoot(t, "SPIRE"), pkitest.NewRoot(t, "partner"), pkitest.NewRoot(t, "mesh CA"), pkitest.NewRoot(t, "other")
	tdSPIRE, tdPartner := td(t, "mcp-mesh.local"), td(t, "partner.test")
	mine := issue(t, spire, "", pkitest.URI("spiffe://mcp-mesh.local/agent/opus"))
	spiffe := &credentials.Credentials{
		Certificate:   mine,
		Roots:         []*x509.Certificate{spire.Root},
		Bundles:       map[spiffeid.TrustDomain][]*x509.Certificate{tdSPIRE: {spire.Root}, tdPartner: {partner.Root}},
		OperatorRoots: []*x509.Certificate{mesh.Root},
	}
	plain := &credentials.Credentials{Certificate: mine, Roots: []*x509.Certificate{spire.Root}, OperatorRoots: []*x509.Certificate{mesh.Root}}
	for _, tc := range []struct {
		name   string
		server tls.Certificate
		creds  *credentials.Credentials
		msg    string // "": accepted
	}{
		{"mesh CA, no SPIFFE ID", issue(t, mesh, "meshd"), spiffe, ""},
		{"mesh CA, the mesh CA's trust domain", issue(t, mesh, "meshd.mesh", pkitest.URI("spiffe://meshtrust.test/node/meshd")), spiffe, ""},
		{"mesh CA, an ID of the SPIRE trust domain", issue(t, mesh, "meshd", pkitest.URI("spiffe://mcp-mesh.local/agent/meshd")), spiffe, "unknown authority"},
		{"mesh CA, an ID of the federated trust domain", issue(t, mesh, "", pkitest.URI("spiffe://partner.test/agent/x")), spiffe, "unknown authority"},
		{"mesh CA, a SPIFFE ID beside another URI", issue(t, mesh, "meshd", pkitest.URI("spiffe://mcp-mesh.local/agent/meshd"), pkitest.URI("https://meshd.test")), spiffe, "its SPIFFE ID"},
		{"SPIRE, an ID of the SPIRE trust domain", issue(t, spire, "", pkitest.URI("spiffe://mcp-mesh.local/meshd")), spiffe, ""},
		{"SPIRE, an ID of a trust domain without a bundle", issue(t, spire, "", pkitest.URI("spiffe://meshtrust.test/node/meshd")), spiffe, "unknown authority"},
		{"SPIRE, no SPIFFE ID", issue(t, spire, "meshd"), spiffe, ""},
		{"another CA, no SPIFFE ID", issue(t, other, "meshd"), spiffe, "unknown authority"},
		{"no bundles: mesh CA", issue(t, mesh, "meshd", pkitest.URI("spiffe://mcp-mesh.local/agent/meshd")), plain, ""},
		{"no bundles: roots", issue(t, spire, "meshd"), plain, ""},
		{"no bundles: another CA", issue(t, other, "meshd"), plain, "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := tlstest.Serve(t, &tls.Config{Certificates: []tls.Certificate{tc.server}})
			c, _ := srv.Dial(t, credentials.ClientConfig(mustHolder(t, tc.creds), credentials.AuthorizeAny()))
			if tc.msg == "" {
				if c.Err != nil {
					t.Fatalf("refused: %v", c.Err)
				}
				return
			}
			if !errors.Is(c.Err, credentials.ErrUntrusted) || !strings.Contains(c.Err.Error(), tc.msg) {
				t.Errorf("client error %v, want ErrUntrusted saying %q", c.Err, tc.msg)
			}
		})
	}
}

// rotating is a Source that can be told to rotate.
type rotating struct {
	*credentials.Holder
	rotated int
}

func (r *rotating) Rotate(context.Context) error { r.rotated++; return nil }

// TestAddRoots: the roots are added to every generation of the source's
// credentials, one value per generation; the source's Rotate stays; a
// bad bundle is refused.
func TestAddRoots(t *testing.T) {
	t.Parallel()
	spire, mesh := pkitest.NewRoot(t, "SPIRE"), pkitest.NewRoot(t, "mesh CA")
	h := mustHolder(t, creds(t, spire, "opus", spire))
	src, err := credentials.AddRoots(h, []*x509.Certificate{mesh.Root})
	if err != nil {
		t.Fatal(err)
	}
	first, err := src.Current()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := src.Current(); again != first {
		t.Fatal("Current returned a new value without a change")
	}
	if len(first.OperatorRoots) != 1 || !first.OperatorRoots[0].Equal(mesh.Root) || len(first.Roots) != 1 || !first.Roots[0].Equal(spire.Root) {
		t.Fatalf("roots %d, operator's %d: want the source's and the added CA", len(first.Roots), len(first.OperatorRoots))
	}
	if _, ok := src.(interface{ Rotate(context.Context) error }); ok {
		t.Error("a Source without Rotate gained one")
	}
	changed := src.Changed()
	set(t, h, creds(t, spire, "opus", spire))
	<-changed
	if next, _ := src.Current(); next == first || len(next.OperatorRoots) != 1 {
		t.Fatal("a rotation did not give a new value with the added CA")
	}

	r := &rotating{Holder: h}
	rsrc, err := credentials.AddRoots(r, []*x509.Certificate{mesh.Root})
	if err != nil {
		t.Fatal(err)
	}
	if rot, ok := rsrc.(interface{ Rotate(context.Context) error }); !ok || rot.Rotate(t.Context()) != nil || r.rotated != 1 {
		t.Error("the source's Rotate was not kept")
	}

	leaf := mesh.Leaf(t, "meshd")
	for _, tc := range []struct {
		name  string
		roots []*x509.Certificate
		want  string
	}{
		{"none", nil, "no CA certificates"},
		{"an end-entity certificate", []*x509.Certificate{mesh.Root, leaf}, "not a CA certificate"},
	} {
		if _, err := credentials.AddRoots(h, tc.roots); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := credentials.AddRoots(h, []*x509.Certificate{leaf}); !errors.Is(err, credentials.ErrNotCA) {
		t.Errorf("an end-entity certificate: %v, want ErrNotCA", err)
	}
}

// TestAddRootsConcurrent: readers on many goroutines while the source
// rotates each get, for every generation, the one value AddRoots serves
// for it, with the added CA.
func TestAddRootsConcurrent(t *testing.T) {
	t.Parallel()
	spire, mesh := pkitest.NewRoot(t, "SPIRE"), pkitest.NewRoot(t, "mesh CA")
	gens := make([]*credentials.Credentials, 20)
	for i := range gens {
		gens[i] = creds(t, spire, "opus", spire)
	}
	h := mustHolder(t, gens[0])
	src, err := credentials.AddRoots(h, []*x509.Certificate{mesh.Root})
	if err != nil {
		t.Fatal(err)
	}
	const readers = 8
	seen := make([]map[*x509.Certificate]*credentials.Credentials, readers)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range readers {
		seen[i] = map[*x509.Certificate]*credentials.Credentials{}
		wg.Go(func() {
			for {
				c, err := src.Current()
				if err != nil {
					t.Error(err)
					return
				}
				if len(c.OperatorRoots) != 1 {
					t.Errorf("%d operator roots, want the added CA", len(c.OperatorRoots))
					return
				}
				if prev, ok := seen[i][c.Certificate.Leaf]; ok && prev != c {
					t.Errorf("two values for the generation of serial %x", c.Certificate.Leaf.SerialNumber)
					return
				}
				seen[i][c.Certificate.Leaf] = c
				select {
				case <-stop:
					return
				default:
				}
			}
		})
	}
	for _, g := range gens[1:] {
		set(t, h, g)
	}
	close(stop)
	wg.Wait()
	// One value per generation, whichever reader saw it.
	byLeaf := map[*x509.Certificate]*credentials.Credentials{}
	for _, m := range seen {
		for leaf, c := range m {
			if prev, ok := byLeaf[leaf]; ok && prev != c {
				t.Fatalf("two values served for the generation of serial %x", leaf.SerialNumber)
			}
			byLeaf[leaf] = c
		}
	}
	if last, _ := src.Current(); last.Certificate.Leaf != gens[len(gens)-1].Certificate.Leaf {
		t.Fatal("Current is not the last generation's")
	}
}
