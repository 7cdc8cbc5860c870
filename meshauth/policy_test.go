package meshauth_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/meshauth"
)

const rulesPolicy = `
version: 1
rules:
  - name: opus
    who: [opus@ct111]
    grpc: [/mesh.Runtime/Exec]
  - name: ct112-agents
    who: ["*@ct112"]
    grpc: ["/mesh.Runtime/*"]
  - name: search-agents
    who: ["search-*@ct113"]
    grpc: [/mesh.Search/Query]
  - name: partner
    who: ["entity:partner-corp"]
    grpc: [/mesh.Data/Get]
  - name: partners
    who: ["entity:partner-*"]
    grpc: [/mesh.Data/List]
  - name: spire-workloads
    who: ["spiffe://example.org/ns/prod/*"]
    grpc: [/mesh.Data/Put]
  - name: spire-domain
    who: [spiffe://example.org]
    grpc: [/mesh.Status/Get]
  - name: spiffe-exact
    who: [spiffe://example.org/ns/dev/tool]
    grpc: [/mesh.Data/Delete]
  - name: nodes
    who: ["ct*.mesh"]
    http: ["* /node/**"]
`

func TestPolicyRules(t *testing.T) {
	p := mustPolicy(t, rulesPolicy)
	grpcOp := func(m string) meshauth.Operation { return meshauth.Operation{Kind: meshauth.KindGRPC, Path: m} }
	tests := []struct {
		who, entity, op string
		rule            string
	}{
		{"opus@ct111", "", "grpc /mesh.Runtime/Exec", "opus"},
		{"opus@ct111", "", "grpc /mesh.Runtime/Kill", meshauth.DefaultDeny},
		{"haiku@ct112", "", "grpc /mesh.Runtime/Kill", "ct112-agents"},
		{"ct112.mesh", "", "grpc /mesh.Runtime/Kill", meshauth.DefaultDeny}, // *@node is the node's agents, not the node
		{"search-1@ct113", "", "grpc /mesh.Search/Query", "search-agents"},
		{"index@ct113", "", "grpc /mesh.Search/Query", meshauth.DefaultDeny},
		{"bob", "partner-corp", "grpc /mesh.Data/Get", "partner"},
		{"bob", "partner-two", "grpc /mesh.Data/Get", meshauth.DefaultDeny},
		{"bob", "partner-two", "grpc /mesh.Data/List", "partners"},
		{"spiffe://example.org/ns/prod/api", "", "grpc /mesh.Data/Put", "spire-workloads"},
		{"spiffe://example.org/ns/prod/api/x", "", "grpc /mesh.Data/Put", meshauth.DefaultDeny}, // * stays in a segment
		{"spiffe://example.org/ns/dev/tool", "", "grpc /mesh.Status/Get", "spire-domain"},
		{"spiffe://example.org/ns/dev/tool", "", "grpc /mesh.Data/Delete", "spiffe-exact"},
		{"spiffe://other.org/ns/dev/tool", "", "grpc /mesh.Status/Get", meshauth.DefaultDeny},
		{"ct200.mesh", "", "DELETE /node/a/b", "nodes"},
		{"anonymous", "", "DELETE /node/a/b", meshauth.DefaultDeny},
	}
	for _, tt := range tests {
		c, err := meshauth.ModelCaller(tt.who, meshauth.ModelSource{Entity: tt.entity}, td)
		if err != nil {
			t.Fatal(err)
		}
		op, err := meshauth.ParseOperation(tt.op)
		if err != nil {
			t.Fatal(err)
		}
		d := p.Authorize(c, &op)
		if d.Rule != tt.rule || d.Allowed != (tt.rule != meshauth.DefaultDeny) {
			t.Errorf("%s (%s) %s: %+v, want rule %q", tt.who, tt.entity, tt.op, d, tt.rule)
		}
	}
	// The first rule in file order decides.
	p2 := mustPolicy(t, "rules:\n  - name: a\n    who: [\"*@ct1\"]\n    grpc: [\"/s.S/*\"]\n  - name: b\n    who: [x@ct1]\n    grpc: [/s.S/M]\n")
	c, _ := meshauth.ModelCaller("x@ct1", meshauth.ModelSource{}, td)
	if op := grpcOp("/s.S/M"); p2.Authorize(c, &op).Rule != "a" {
		t.Errorf("the later rule decided")
	}
	if empty := mustPolicy(t, "rules: []"); empty.Authorize(c, &meshauth.Operation{Kind: meshauth.KindGRPC, Path: "/s.S/M"}).Allowed {
		t.Error("an empty policy allowed something")
	}
}

func TestPolicyErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"empty", "", "test.yaml: rules? no: the document is empty"},
		{"not yaml", "rules:\n  - name: r\n    who: [a@b\n", "test.yaml:2: invalid policy: yaml: line 2:"},
		{"unknown top key", "rule: []\n", `test.yaml:1: invalid policy: unknown key "rule"`},
		{"no name", "rules:\n  - who: [a@b]\n    grpc: [/a.B/C]\n", "test.yaml:2: rule #1: invalid policy: needs a name"},
		{"bad identity", "rules:\n  - name: r\n    who:\n      - opus@@ct1\n    grpc: [/a.B/C]\n", `test.yaml:4: rule "r": invalid policy: who "opus@@ct1"`},
		{"bad node", "rules:\n  - name: r\n    who: [\"*@CT1\"]\n    grpc: [/a.B/C]\n", `test.yaml:3: rule "r": invalid policy: who "*@CT1": node`},
		{"bad http", "rules:\n  - name: r\n    who: [a@b]\n    http: [\"get /x\"]\n", `test.yaml:4: rule "r": invalid policy: http "get /x": the method must be uppercase`},
		{"bad grpc", "rules:\n  - name: r\n    who: [a@b]\n    grpc: [Exec]\n", `test.yaml:4: rule "r": invalid policy: grpc "Exec"`},
		{"tools/call in methods", "rules:\n  - name: r\n    who: [a@b]\n    mcp:\n      methods: [tools/call]\n", `test.yaml:5: rule "r": invalid policy: mcp.methods "tools/call": tools/call is allowed per name: use mcp.tools`},
		{"unknown rule key", "rules:\n  - name: r\n    who: [a@b]\n    allow: [x]\n", `test.yaml:4: rule "r": invalid policy: unknown key "allow"`},
		{"grants nothing", "rules:\n  - name: r\n    who: [a@b]\n", `test.yaml:2: rule "r": invalid policy: allows nothing`},
		{"duplicate name", "rules:\n  - name: r\n    who: [a@b]\n    grpc: [/a.B/C]\n  - name: r\n    who: [a@b]\n    grpc: [/a.B/C]\n", `test.yaml:5: rule "r": invalid policy: the name is already used by the rule at line 2`},
		{"not a string", "rules:\n  - name: r\n    who: [[a]]\n    grpc: [/a.B/C]\n", `test.yaml:3: rule "r": invalid policy: who: every item must be a string`},
		{"glob trust domain", "rules:\n  - name: r\n    who: [\"spiffe://*.org/x\"]\n    grpc: [/a.B/C]\n", `test.yaml:3: rule "r": invalid policy: who "spiffe://*.org/x"`},
		{"two documents", "rules: []\n---\nrules: []\n", "test.yaml:2: invalid policy: a second YAML document"},
	}
	for _, tt := range tests {
		_, err := meshauth.ParsePolicy("test.yaml", []byte(tt.doc))
		var pe *meshauth.PolicyError
		if !errors.As(err, &pe) || !errors.Is(err, meshauth.ErrPolicy) && tt.name != "not yaml" {
			t.Errorf("%s: %v, want a PolicyError", tt.name, err)
			continue
		}
		want := strings.Replace(tt.want, "rules? no: ", "invalid policy: ", 1)
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s:\n got %s\nwant %s...", tt.name, err, want)
		}
	}
}

func TestPolicyFileReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write := func(doc string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as editors and ConfigMaps do
			t.Fatal(err)
		}
	}
	write("rules:\n  - name: one\n    who: [a@ct1]\n    grpc: [/s.S/One]\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, err := meshauth.OpenPolicyFile(ctx, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reloaded := make(chan error, 16)
	f.OnReload(func(err error) { reloaded <- err })
	wait := func() error {
		t.Helper()
		select {
		case err := <-reloaded:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload")
		}
		return nil
	}
	c, _ := meshauth.ModelCaller("a@ct1", meshauth.ModelSource{}, td)
	decide := func(m string) string {
		return f.Authorize(c, &meshauth.Operation{Kind: meshauth.KindGRPC, Path: m}).Rule
	}
	if decide("/s.S/One") != "one" {
		t.Fatal("the first policy is not in force")
	}

	write("rules:\n  - name: two\n    who: [a@ct1]\n    grpc: [/s.S/Two]\n")
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if decide("/s.S/Two") != "two" || decide("/s.S/One") != meshauth.DefaultDeny {
		t.Fatal("the good file did not take effect")
	}

	write("rules:\n  - name: three\n    who: [a@@ct1]\n    grpc: [/s.S/Three]\n")
	err = wait()
	if err == nil || !strings.HasPrefix(err.Error(), path+`:3: rule "three"`) || f.Err() == nil {
		t.Fatalf("bad file: %v", err)
	}
	if decide("/s.S/Two") != "two" || decide("/s.S/Three") != meshauth.DefaultDeny {
		t.Fatal("the bad file replaced the last good policy")
	}

	write("rules:\n  - name: four\n    who: [a@ct1]\n    grpc: [/s.S/Four]\n")
	if err := wait(); err != nil || f.Err() != nil || decide("/s.S/Four") != "four" {
		t.Fatalf("recovery: %v", err)
	}
}

func TestOpenPolicyFileRefusesABadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(path, []byte("rules: {}\n"), 0o600)
	if _, err := meshauth.OpenPolicyFile(context.Background(), path, nil); err == nil || !strings.Contains(err.Error(), path+":1: invalid policy: rules must be a list") {
		t.Fatalf("open a bad file: %v", err)
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(rulesPolicy))
	f.Add([]byte(mcpPolicy))
	f.Add([]byte(httpPolicy))
	f.Add([]byte("rules: []"))
	f.Add([]byte("rules:\n  - name: r\n    who: [\"**\"]\n    http: [\"* /**\"]\n"))
	ops := []meshauth.Operation{
		{Kind: meshauth.KindHTTP, Method: "GET", Path: "/files/a"},
		{Kind: meshauth.KindGRPC, Path: "/mesh.Runtime/Exec"},
		{Kind: meshauth.KindMCP, MCPMethod: "tools/call", Name: "search_docs"},
	}
	callers := []string{"opus@ct111", "haiku@ct112", "spiffe://example.org/ns/prod/api", "anonymous", "ct1.mesh"}
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := meshauth.ParsePolicy("fuzz.yaml", doc)
		if err != nil {
			var pe *meshauth.PolicyError
			if !errors.As(err, &pe) || !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error of the wrong shape: %v", err)
			}
			return
		}
		for _, who := range callers {
			c, _ := meshauth.ModelCaller(who, meshauth.ModelSource{Entity: "partner-corp"}, td)
			for i := range ops {
				d := p.Authorize(c, &ops[i])
				if d.Allowed == (d.Rule == meshauth.DefaultDeny) {
					t.Fatalf("decision %+v", d)
				}
			}
		}
	})
}
