package registry

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

// svidPeer is a peer admitted by backend whose certificate's only identity
// is the SPIFFE IDs uris (no CN), of entity.
func svidPeer(t *testing.T, backend, entity string, uris ...string) *trust.Peer {
	t.Helper()
	serials++
	leaf := &x509.Certificate{Raw: []byte(fmt.Sprintf("svid/%v/%d", uris, serials)), NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<40, 0)}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		leaf.URIs = append(leaf.URIs, parsed)
	}
	return &trust.Peer{Leaf: leaf, Fingerprint: fmt.Sprintf("fp-%d", serials), Serial: fmt.Sprintf("%x", serials), Backend: backend, Entity: entity}
}

func mustBindings(t *testing.T, s string) map[string]Binding {
	t.Helper()
	b, err := ParseBindings(s, "mcp-mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustNamespace(t *testing.T, s string) Namespace {
	t.Helper()
	ns, err := ParseNamespace(s)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// TestBindingConventions: each of MCP Mesh's certificate shapes, under
// its trust source's binding, speaks for its agent and the agent's
// per-replica ids, and for nothing else; the entity's namespace and the
// first claim still hold. Steps run in order on one registry.
func TestBindingConventions(t *testing.T) {
	ns := NewNamespaces()
	ns.Set("entities", "acme", mustNamespace(t, "ids:weather-agent-1,geo-agent-1"))
	ns.Set("entities", "corp", mustNamespace(t, "first-claim"))
	r, err := New(context.Background(), newMemStore(), Config{Timeout: time.Hour, Namespaces: ns,
		Bindings: mustBindings(t, "localca=cn filestore=cn,trust-domain entities=cn,trust-domain spire=spiffe:spiffe://mcp-mesh.local/agent/{agent} shared=spiffe:spiffe://mcp-mesh.local/mesh-agent tlsauto=cn-replicas")})
	if err != nil {
		t.Fatal(err)
	}
	vault := peerFrom(t, "weather-agent.mcp-mesh.local", "", "filestore")
	vault2 := peerFrom(t, "weather-agent.mcp-mesh.local", "", "filestore") // another replica's certificate
	shared := svidPeer(t, "shared", "", "spiffe://mcp-mesh.local/mesh-agent")
	steps := []struct {
		name   string
		peer   *trust.Peer
		id     string
		reason string // "" for admitted
	}{
		// Vault: CN <name>.<td>, for <name> and <name>-<8 hex>.
		{"vault cert, its name", vault, "weather-agent", ""},
		{"vault cert, a replica id", vault, "weather-agent-1a2b3c4d", ""},
		{"another replica's cert of the same name", vault2, "weather-agent-0f0f0f0f", ""},
		{"vault cert, 7 hex", vault, "weather-agent-1a2b3c4", "identity_mismatch"},
		{"vault cert, 9 hex", vault, "weather-agent-1a2b3c4d5", "identity_mismatch"},
		{"vault cert, not hex", vault, "weather-agent-1a2b3c4g", "identity_mismatch"},
		{"vault cert, two suffixes", vault, "weather-agent-1a2b3c4d-1a2b3c4d", "identity_mismatch"},
		{"vault cert claiming another name", vault, "geo-agent", "identity_mismatch"},
		{"vault cert claiming a prefix of its name", vault, "weather", "identity_mismatch"},
		{"vault cert, replica id of another name", vault, "geo-agent-1a2b3c4d", "identity_mismatch"},
		{"another trust domain", peerFrom(t, "geo-agent.evil.local", "", "filestore"), "geo-agent", "not_agent_cert"},
		{"a subdomain of the trust domain", peerFrom(t, "evil.geo-agent.mcp-mesh.local", "", "filestore"), "geo-agent", "not_agent_cert"},
		{"the trust domain as a suffix without a dot", peerFrom(t, "geo-agentmcp-mesh.local", "", "filestore"), "geo-agent", "not_agent_cert"},
		{"a cert named like a replica cannot take the claimed replica", peerFrom(t, "weather-agent-1a2b3c4d.mcp-mesh.local", "", "filestore"), "weather-agent-1a2b3c4d", "owned_by_other"},
		{"exact CN still binds on the trust dir", peerFrom(t, "geo-agent", "", "filestore"), "geo-agent", ""},
		{"exact CN has no replicas there", peerFrom(t, "geo-agent", "", "filestore"), "geo-agent-1a2b3c4d", "identity_mismatch"},
		{"a node certificate names no agent", peerFrom(t, "ct111.mesh", "", "filestore"), "ct111", "not_agent_cert"},
		{"the mesh CA binds exactly", peer(t, "opus@ct111", ""), "opus", ""},
		{"the mesh CA has no <name>.<td> form", peer(t, "opus@ct111", ""), "opus-1a2b3c4d", "identity_mismatch"},
		// --tls-auto: CN <name>, ids <name>-<8 hex>.
		{"tls-auto cert, a replica", peerFrom(t, "hello-agent", "", "tlsauto"), "hello-agent-00aa11bb", ""},
		{"tls-auto cert, another name", peerFrom(t, "hello-agent", "", "tlsauto"), "weather-agent-2", "identity_mismatch"},
		// Entities: the namespace chosen at registration.
		{"acme's listed id", peerFrom(t, "weather-agent-1.mcp-mesh.local", "acme", "entities"), "weather-agent-1", ""},
		{"acme's replica of a listed id is not listed", peerFrom(t, "weather-agent-1.mcp-mesh.local", "acme", "entities"), "weather-agent-1-1a2b3c4d", "outside_namespace"},
		{"acme claiming beta's id", peerFrom(t, "beta-geo.mcp-mesh.local", "acme", "entities"), "beta-geo", "outside_namespace"},
		{"beta, prefix by default", peerFrom(t, "beta-geo.mcp-mesh.local", "beta", "entities"), "beta-geo", ""},
		{"beta outside its prefix", peerFrom(t, "geo-agent-1.mcp-mesh.local", "beta", "entities"), "geo-agent-1", "outside_namespace"},
		{"corp, first-claim, an unclaimed id", peerFrom(t, "planner.mcp-mesh.local", "corp", "entities"), "planner", ""},
		{"corp, first-claim, beta's claimed id", peerFrom(t, "beta-geo.mcp-mesh.local", "corp", "entities"), "beta-geo", "owned_by_other_entity"},
		{"corp, first-claim, the mesh's claimed id", peerFrom(t, "opus.mcp-mesh.local", "corp", "entities"), "opus", "owned_by_other_entity"},
		{"acme's listed id, with a cert of another trust domain", peerFrom(t, "geo-agent-1.other.local", "acme", "entities"), "geo-agent-1", "not_agent_cert"},
		// SPIRE, one SPIFFE ID per agent.
		{"SVID per agent", svidPeer(t, "spire", "", "spiffe://mcp-mesh.local/agent/billing"), "billing", ""},
		{"SVID per agent, a replica", svidPeer(t, "spire", "", "spiffe://mcp-mesh.local/agent/billing"), "billing-deadbeef", ""},
		{"SVID per agent, another agent", svidPeer(t, "spire", "", "spiffe://mcp-mesh.local/agent/billing"), "ledger", "identity_mismatch"},
		{"SVID outside its trust domain", svidPeer(t, "spire", "", "spiffe://evil.local/agent/ledger"), "ledger", "not_agent_cert"},
		{"SVID with a deeper path", svidPeer(t, "spire", "", "spiffe://mcp-mesh.local/agent/ledger/x"), "ledger", "not_agent_cert"},
		{"SVID with two SPIFFE IDs", svidPeer(t, "spire", "", "spiffe://mcp-mesh.local/agent/ledger", "spiffe://mcp-mesh.local/agent/billing"), "ledger", "not_agent_cert"},
		{"a certificate with no name at all", svidPeer(t, "spire", ""), "ledger", "not_agent_cert"},
		// SPIRE, the seed's one workload ID for every agent: first claim.
		{"shared SVID claims an id", shared, "reporter", ""},
		{"shared SVID claims another", shared, "reporter-2", ""},
		{"shared SVID cannot take the trust dir's claim", svidPeer(t, "shared", "", "spiffe://mcp-mesh.local/mesh-agent"), "weather-agent", "owned_by_other_source"},
		{"another workload of the trust domain", svidPeer(t, "shared", "", "spiffe://mcp-mesh.local/other-workload"), "reporter-3", "not_agent_cert"},
		{"the shared ID from another trust domain", svidPeer(t, "shared", "", "spiffe://other.local/mesh-agent"), "reporter-4", "not_agent_cert"},
	}
	for _, s := range steps {
		_, err := heartbeat(t, r, s.peer, fmt.Sprintf(`{"agent_id":%q}`, s.id))
		if got := ReasonOf(err); (s.reason == "" && err != nil) || (s.reason != "" && got != s.reason) {
			t.Errorf("%s: %s as %q: %v (reason %q), want %q", s.name, s.peer.Name(), s.id, err, got, s.reason)
		}
	}
	owners := map[string]string{}
	for _, v := range r.List(Filter{}) {
		owners[v.ID] = v.Owner
	}
	for id, want := range map[string]string{
		"weather-agent-1a2b3c4d": "weather-agent.mcp-mesh.local", "reporter": "spiffe://mcp-mesh.local/mesh-agent",
		"billing": "spiffe://mcp-mesh.local/agent/billing", "weather-agent-1": "weather-agent-1.mcp-mesh.local",
	} {
		if owners[id] != want {
			t.Errorf("owner of %s = %q, want %q", id, owners[id], want)
		}
	}
	if _, ok := owners["weather-agent-1a2b3c4"]; ok || len(owners) != 13 {
		t.Errorf("registered %d agents, want the 13 admitted: %v", len(owners), owners)
	}
}

// TestParseRules: the operator's settings parse to what they say, and a
// mistake is an error that names it.
func TestParseRules(t *testing.T) {
	b, err := ParseBindings("filestore=cn,trust-domain; spire=spiffe:spiffe://td.example/ns/{agent},trust-domain:corp.example\tlocalca=none", "mcp-mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	if got := b["filestore"].String(); got != "cn,trust-domain:mcp-mesh.local" {
		t.Errorf("filestore = %s", got)
	}
	if got := b["spire"].String(); got != "trust-domain:corp.example,spiffe:spiffe://td.example/ns/{agent}" {
		t.Errorf("spire = %s", got)
	}
	if got := b["localca"].String(); got != "none" {
		t.Errorf("localca = %s", got)
	}
	for _, bad := range []string{"filestore", "=cn", "filestore=cn;filestore=cn", "filestore=subject", "filestore=spiffe:https://x/y",
		"spire=spiffe:spiffe://td/{agent}/{agent}", "spire=spiffe:spiffe://td/a{agent}", "spire=spiffe:spiffe://td", "spire=spiffe:spiffe://Bad_TD/x",
		"filestore=trust-domain:", "filestore=trust-domain:bad/td"} {
		if _, err := ParseBindings(bad, "mcp-mesh.local"); err == nil {
			t.Errorf("ParseBindings(%q): no error", bad)
		}
	}
	n, err := ParseEntityNamespaces("acme=ids:weather-agent-1,geo-agent-1,geo-agent-1;beta=first-claim gamma=prefix")
	if err != nil {
		t.Fatal(err)
	}
	if n["acme"].String() != "ids:geo-agent-1,weather-agent-1" || n["beta"].Mode != NamespaceFirstClaim || n["gamma"].Mode != NamespacePrefix {
		t.Errorf("namespaces: %v", n)
	}
	for _, bad := range []string{"acme", "Acme=prefix", "acme=ids:", "acme=ids:a,,b", "acme=everything", "acme=prefix:x", "acme=first-claim:x", "a=prefix;a=prefix"} {
		if _, err := ParseEntityNamespaces(bad); err == nil {
			t.Errorf("ParseEntityNamespaces(%q): no error", bad)
		}
	}
}

// TestNamespacesConcurrent: lookups run while namespaces change, under
// the race detector, and see a whole value each time.
func TestNamespacesConcurrent(t *testing.T) {
	ns := NewNamespaces()
	list, prefix := mustNamespace(t, "ids:a,b"), mustNamespace(t, "prefix")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			name := fmt.Sprintf("e%d", i%7)
			if i%3 == 0 {
				ns.Set("entities", name, prefix)
			} else {
				ns.Set("entities", name, list)
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		for i := range 7 {
			got := ns.Lookup("entities", fmt.Sprintf("e%d", i))
			if got.Mode == NamespaceIDs && len(got.IDs) != 2 || got.Mode == NamespaceFirstClaim {
				t.Fatalf("a torn namespace: %v", got)
			}
		}
	}
}
