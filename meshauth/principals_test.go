package meshauth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

// principalsPolicy has a rule for each kind of principal, each granting
// one path, so a decision says which kind of principal met the caller.
const principalsPolicy = `
rules:
  - name: ops-identity
    who: [ops@dev1]
    http: ["POST /delete_everything"]
  - name: dev1-agents
    who: ["*@dev1"]
    http: ["GET /dev1"]
  - name: dev1-globs
    who: ["o*@dev1", "*@*"]
    http: ["GET /globs"]
  - name: dev1-node
    who: [dev1.mesh]
    http: ["GET /node"]
  - name: spire-workloads
    who: ["spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/prod/api"]
    http: ["GET /prod"]
  - name: spire-domain
    who: [spiffe://example.org]
    http: ["GET /domain"]
  - name: mesh-domain
    who: [spiffe://mesh.local]
    http: ["GET /mesh"]
  - name: trust-dir-agent
    who: [weather-agent, "geo-*"]
    http: ["GET /weather"]
  - name: partner-ops
    who: ["entity:partner-corp/ops@dev1", "entity:partner-corp/svc-*"]
    http: ["GET /partner-ops"]
  - name: partner-any
    who: ["entity:partner-corp"]
    http: ["GET /partner"]
  - name: by-source
    who: ["source:filestore/ops@dev1", "source:spire"]
    http: ["GET /source"]
`

// fixedBundles is a credentials source of fixed SPIFFE bundles.
type fixedBundles map[spiffeid.TrustDomain][]*x509.Certificate

func (b fixedBundles) Current() (*credentials.Credentials, error) {
	return &credentials.Credentials{Bundles: b}, nil
}
func (fixedBundles) Changed() <-chan struct{} { return nil }

// StaleSince says the fixed bundles are always current.
func (fixedBundles) StaleSince() (time.Time, <-chan struct{}) { return time.Time{}, nil }

// principalsWorld is newWorld's chain (the mesh CA, then partner-corp's
// CA as a registered entity) with, behind them, the trust dir's own CA
// (filestore, entity "") and the SPIFFE bundle of example.org (spire).
type principalsWorld struct {
	*world
	trustDir, spire *pkitest.CA
}

func newPrincipalsWorld(t *testing.T) *principalsWorld {
	t.Helper()
	w := &principalsWorld{world: newWorld(t), trustDir: pkitest.NewRoot(t, "trust dir root"), spire: pkitest.NewRoot(t, "example.org spire root")}
	ctx, cancel := context.WithCancel(context.Background())
	// meshd's own SVID is of the mesh CA's trust domain, so example.org
	// is a federated trust domain: the entity of its name.
	sb, err := spirebundle.New(ctx, spirebundle.Config{Source: fixedBundles{
		spiffeid.RequireTrustDomainFromString("example.org"): {w.spire.Cert},
	}, TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.local")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); sb.Close() })
	fs := trust.NewAnchors("filestore")
	fs.Set("", []*x509.Certificate{w.trustDir.Cert})
	backends := append(w.chain.Backends(), fs, sb)
	w.chain = trust.NewChain(w.revs, backends, trust.WithClock(w.clock.Now))
	return w
}

func (w *principalsWorld) caller(t *testing.T, cert tls.Certificate) *meshauth.Caller {
	t.Helper()
	p, err := w.chain.Verify(context.Background(), []*x509.Certificate{cert.Leaf})
	if err != nil {
		t.Fatalf("%s: %v", cert.Leaf.Subject.CommonName, err)
	}
	return meshauth.CallerFromPeer(p)
}

// TestPartnerCannotBearMeshNames: a partner entity's CA can write any
// name into its certificates; it meets only the principals that name its
// entity or source, never a mesh identity, a node, a glob of identities or
// a SPIFFE ID its bundle did not vouch for. On the code before, the
// partner's ops@dev1 was granted ops@dev1's rules, its x@dev1 matched
// *@dev1, and its URI SAN spiffe://example.org/ns/prod/api the SPIRE
// workloads' rules.
func TestPartnerCannotBearMeshNames(t *testing.T) {
	w := newPrincipalsWorld(t)
	p := mustPolicy(t, principalsPolicy)
	paths := []string{"/delete_everything", "/dev1", "/globs", "/node", "/prod", "/domain", "/mesh", "/weather", "/partner-ops", "/partner", "/source"}
	tests := []struct {
		name    string
		cert    tls.Certificate
		allowed []string // the paths allowed, with the rule each
		rules   []string
	}{
		{"mesh ops@dev1", agentOf(t, w.mesh, "ops", "dev1"),
			[]string{"/delete_everything", "/dev1", "/globs", "/mesh"}, []string{"ops-identity", "dev1-agents", "dev1-globs", "mesh-domain"}},
		{"mesh dev1.mesh", leafOf(t, w.mesh, "dev1.mesh", "spiffe://mesh.local/node/dev1", "dev1.mesh"),
			[]string{"/node", "/mesh"}, []string{"dev1-node", "mesh-domain"}},
		// The three attacks of the issue, and their kin.
		{"partner ops@dev1 with the mesh's SPIFFE ID", leafOf(t, w.partner, "ops@dev1", "spiffe://mesh.local/agent/dev1/ops"),
			[]string{"/partner-ops", "/partner"}, []string{"partner-ops", "partner-any"}},
		{"partner x@dev1", leafOf(t, w.partner, "x@dev1", ""),
			[]string{"/partner"}, []string{"partner-any"}},
		{"partner with SPIRE's URI SAN", leafOf(t, w.partner, "api", "spiffe://example.org/ns/prod/api"),
			[]string{"/partner"}, []string{"partner-any"}},
		{"partner node dev1.mesh", leafOf(t, w.partner, "dev1.mesh", "", "dev1.mesh"),
			[]string{"/partner"}, []string{"partner-any"}},
		{"partner weather-agent", leafOf(t, w.partner, "weather-agent", ""),
			[]string{"/partner"}, []string{"partner-any"}},
		{"partner svc-1", leafOf(t, w.partner, "svc-1", ""),
			[]string{"/partner-ops", "/partner"}, []string{"partner-ops", "partner-any"}},
		// The trust dir's own CA: its plain CNs, not mesh identities.
		{"trust dir weather-agent", leafOf(t, w.trustDir, "weather-agent", ""),
			[]string{"/weather"}, []string{"trust-dir-agent"}},
		{"trust dir geo-1", leafOf(t, w.trustDir, "geo-1", ""),
			[]string{"/weather"}, []string{"trust-dir-agent"}},
		{"trust dir ops@dev1", leafOf(t, w.trustDir, "ops@dev1", "spiffe://example.org/ns/prod/api"),
			[]string{"/source"}, []string{"by-source"}},
		// example.org's own bundle vouches for its SPIFFE IDs, and for no
		// mesh identity.
		{"spire api", leafOf(t, w.spire, "", "spiffe://example.org/ns/prod/api"),
			[]string{"/prod", "/domain", "/source"}, []string{"spire-workloads", "spire-domain", "by-source"}},
		{"spire with a mesh identity's CN", leafOf(t, w.spire, "ops@dev1", "spiffe://example.org/agent/dev1/ops"),
			[]string{"/domain", "/source"}, []string{"spire-domain", "by-source"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := w.caller(t, tt.cert)
			for _, path := range paths {
				op := &meshauth.Operation{Kind: meshauth.KindHTTP, Method: "GET", Path: path}
				if path == "/delete_everything" {
					op.Method = "POST"
				}
				d := p.Authorize(c, op)
				want, rule := false, meshauth.DefaultDeny
				for i, a := range tt.allowed {
					if a == path {
						want, rule = true, tt.rules[i]
					}
				}
				if d.Allowed != want || d.Rule != rule {
					t.Errorf("%s: %+v, want allowed %v by %q", op, d, want, rule)
				}
			}
		})
	}
}

// TestPartnerCannotMeetAuthorizers: the composable authorizers keep the
// same rule as a Policy.
func TestPartnerCannotMeetAuthorizers(t *testing.T) {
	w := newPrincipalsWorld(t)
	op := &meshauth.Operation{Kind: meshauth.KindHTTP, Method: "GET", Path: "/"}
	mesh := w.caller(t, agentOf(t, w.mesh, "ops", "dev1"))
	partner := w.caller(t, leafOf(t, w.partner, "ops@dev1", "spiffe://mesh.local/agent/dev1/ops"))
	partnerSpire := w.caller(t, leafOf(t, w.partner, "api", "spiffe://example.org/ns/prod/api"))
	spire := w.caller(t, leafOf(t, w.spire, "", "spiffe://example.org/ns/prod/api"))
	trustDir := w.caller(t, leafOf(t, w.trustDir, "weather-agent", ""))
	tests := []struct {
		name string
		a    meshauth.Authorizer
		c    *meshauth.Caller
		want bool
	}{
		{"identity, mesh CA", meshauth.AuthorizeIdentity("ops@dev1"), mesh, true},
		{"identity, partner", meshauth.AuthorizeIdentity("ops@dev1"), partner, false},
		{"identity, trust dir CN", meshauth.AuthorizeIdentity("weather-agent"), trustDir, true},
		{"node, mesh CA", meshauth.AuthorizeNode("dev1"), mesh, true},
		{"node, partner", meshauth.AuthorizeNode("dev1"), partner, false},
		{"member of mesh.local, mesh CA", meshauth.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("mesh.local")), mesh, true},
		{"member of mesh.local, partner", meshauth.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("mesh.local")), partner, false},
		{"member of example.org, partner", meshauth.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("example.org")), partnerSpire, false},
		{"member of example.org, its bundle", meshauth.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("example.org")), spire, true},
		{"entity, partner", meshauth.AuthorizeEntity("partner-corp"), partner, true},
	}
	for _, tt := range tests {
		if got := tt.a(tt.c, op).Allowed; got != tt.want {
			t.Errorf("%s: allowed %v, want %v", tt.name, got, tt.want)
		}
	}
	if !mesh.MeshCA || mesh.Source != "localca" || partner.MeshCA || partner.Source != "entities" || partner.Entity != "partner-corp" ||
		!partner.Identity.IsZero() || partner.SPIFFEID != "" || spire.Source != "spire" || spire.SPIFFEID != "spiffe://example.org/ns/prod/api" {
		t.Errorf("sources: mesh %+v, partner %+v, spire %+v", mesh, partner, spire)
	}
}

// TestPartnerRefusedOverTLS: the middleware in front of a handler, over
// real TLS: partner-corp's ops@dev1 is refused what the mesh CA's ops@dev1
// may do.
func TestPartnerRefusedOverTLS(t *testing.T) {
	w := newPrincipalsWorld(t)
	a, err := meshauth.New(meshauth.Config{Chain: w.chain, Authorizer: mustPolicy(t, principalsPolicy).Authorize, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, a, a.Handler(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { rw.Write([]byte("deleted")) })))
	mesh, partner := agentOf(t, w.mesh, "ops", "dev1"), leafOf(t, w.partner, "ops@dev1", "spiffe://mesh.local/agent/dev1/ops")
	if r := do(t, client(srv, &mesh), "POST", srv.URL+"/delete_everything", ""); r.code != 200 {
		t.Fatalf("the mesh CA's ops@dev1: %d %s", r.code, r.body)
	}
	if r := do(t, client(srv, &partner), "POST", srv.URL+"/delete_everything", ""); r.code != 403 || !strings.Contains(r.body, "ops@dev1 (a certificate of entity partner-corp) may not call") {
		t.Fatalf("partner-corp's ops@dev1: %d %s", r.code, r.body)
	}
	if r := do(t, client(srv, &partner), "GET", srv.URL+"/partner-ops", ""); r.code != 200 {
		t.Fatalf("partner-corp's ops@dev1, by a rule naming its entity: %d %s", r.code, r.body)
	}
}

// TestCallerForModelsTheSource: a modelled caller bears what its source
// may vouch for; one its source cannot issue is an error.
func TestCallerForModelsTheSource(t *testing.T) {
	p := mustPolicy(t, principalsPolicy)
	tests := []struct {
		who     string
		src     meshauth.ModelSource
		op      string
		allowed bool
		rule    string
	}{
		{"ops@dev1", meshauth.ModelSource{}, "POST /delete_everything", true, "ops-identity"},
		{"ops@dev1", meshauth.ModelSource{Backend: "localca"}, "POST /delete_everything", true, "ops-identity"},
		{"ops@dev1", meshauth.ModelSource{Entity: "partner-corp"}, "POST /delete_everything", false, meshauth.DefaultDeny},
		{"ops@dev1", meshauth.ModelSource{Entity: "partner-corp"}, "GET /partner-ops", true, "partner-ops"},
		{"x@dev1", meshauth.ModelSource{Entity: "partner-corp"}, "GET /dev1", false, meshauth.DefaultDeny},
		{"x@dev1", meshauth.ModelSource{}, "GET /dev1", true, "dev1-agents"},
		{"spiffe://example.org/ns/prod/api", meshauth.ModelSource{Entity: "partner-corp"}, "GET /prod", false, meshauth.DefaultDeny},
		{"spiffe://example.org/ns/prod/api", meshauth.ModelSource{}, "GET /prod", true, "spire-workloads"},
		{"spiffe://example.org/ns/prod/api", meshauth.ModelSource{Backend: "spire"}, "GET /prod", true, "spire-workloads"},
		{"spiffe://mesh.local/agent/dev1/ops", meshauth.ModelSource{}, "POST /delete_everything", true, "ops-identity"},
		{"ops@dev1", meshauth.ModelSource{Backend: "filestore"}, "GET /source", true, "by-source"},
		{"ops@dev1", meshauth.ModelSource{Backend: "filestore"}, "POST /delete_everything", false, meshauth.DefaultDeny},
		{"weather-agent", meshauth.ModelSource{Backend: "filestore"}, "GET /weather", true, "trust-dir-agent"},
	}
	for _, tt := range tests {
		c, err := meshauth.ModelCaller(tt.who, tt.src, td)
		if err != nil {
			t.Errorf("%s %+v: %v", tt.who, tt.src, err)
			continue
		}
		op, err := meshauth.ParseOperation(tt.op)
		if err != nil {
			t.Fatal(err)
		}
		if d := p.Authorize(c, &op); d.Allowed != tt.allowed || d.Rule != tt.rule {
			t.Errorf("%s %+v %s: %+v, want %v by %q", tt.who, tt.src, tt.op, d, tt.allowed, tt.rule)
		}
	}
	for _, bad := range []struct {
		who string
		src meshauth.ModelSource
	}{
		{"weather-agent", meshauth.ModelSource{}},                              // the mesh CA issues only mesh identities
		{"spiffe://example.org/x", meshauth.ModelSource{Backend: "localca"}},   // nor another trust domain's IDs
		{"ops@dev1", meshauth.ModelSource{Backend: "spire"}},                   // a bundle vouches for SPIFFE IDs only
		{"ops@dev1", meshauth.ModelSource{Backend: "localca", Entity: "acme"}}, // the mesh CA has no entity
		{"ops@dev1", meshauth.ModelSource{Entity: "not a name"}},               // an entity is an id
	} {
		if c, err := meshauth.ModelCaller(bad.who, bad.src, td); err == nil {
			t.Errorf("%s %+v: modelled as %+v", bad.who, bad.src, c)
		}
	}
}

// TestQualifiedPrincipalsRefused: entity:/source: principals name one
// exact entity or backend.
func TestQualifiedPrincipalsRefused(t *testing.T) {
	for _, who := range []string{"entity:partner-*/ops@dev1", "entity:/ops", "entity:partner-corp/", "source:", "source:file store", "source:spire/"} {
		doc := "rules:\n  - name: r\n    who: [\"" + who + "\"]\n    http: [\"GET /\"]\n"
		if _, err := meshauth.ParsePolicy("p.yaml", []byte(doc)); err == nil {
			t.Errorf("who %q accepted", who)
		}
	}
}

// TestAgentIDBySource: a caller speaks for an agent id only as its source
// vouches; on the code before, partner-corp's ops@dev1 spoke for "ops".
func TestAgentIDBySource(t *testing.T) {
	w := newPrincipalsWorld(t)
	tests := []struct {
		name string
		cert tls.Certificate
		want string // "" for none
	}{
		{"mesh ops@dev1", agentOf(t, w.mesh, "ops", "dev1"), "ops"},
		{"partner ops@dev1", leafOf(t, w.partner, "ops@dev1", "spiffe://mesh.local/agent/dev1/ops"), ""},
		{"partner weather-agent", leafOf(t, w.partner, "weather-agent", ""), ""},
		{"trust dir ops@dev1", leafOf(t, w.trustDir, "ops@dev1", ""), ""},
		{"trust dir weather-agent", leafOf(t, w.trustDir, "weather-agent", ""), "weather-agent"},
		{"spire agent", leafOf(t, w.spire, "ops@dev1", "spiffe://example.org/agent/dev1/ops"), ""},
	}
	for _, tt := range tests {
		id, err := w.caller(t, tt.cert).AgentID()
		if id != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("%s: %q, %v; want %q", tt.name, id, err, tt.want)
		}
	}
}

// TestModelSPIREEntity: a modelled SPIRE caller is the mesh's own (entity
// ""), as meshd's own trust domain is, unless the entity a federated trust
// domain maps to is named.
func TestModelSPIREEntity(t *testing.T) {
	for _, tc := range []struct{ entity, want string }{{"", ""}, {"acme", "acme"}} {
		c, err := meshauth.ModelCaller("spiffe://example.org/agent/x", meshauth.ModelSource{Backend: meshauth.SourceSPIRE, Entity: tc.entity}, td)
		if err != nil || c.Entity != tc.want || c.Source != meshauth.SourceSPIRE {
			t.Errorf("entity %q: %+v, %v; want entity %q of source spire", tc.entity, c, err, tc.want)
		}
	}
}
