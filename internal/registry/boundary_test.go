package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

// trustMesh registers three providers of geocode, one of the mesh's own
// CA and one each of the partner entities acme and beta, and four
// consumers of it: one of the mesh, one each of acme and beta, and one of
// cobalt, which offers no provider.
func trustMesh(t *testing.T, cfg Config) (*Registry, map[string]*trust.Peer) {
	t.Helper()
	cfg.Timeout = time.Hour
	r, err := New(context.Background(), newMemStore(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	peers := map[string]*trust.Peer{
		"geo": peer(t, "geo@n2", ""), "acme-geo": peer(t, "acme-geo", "acme"), "beta-geo": peer(t, "beta-geo", "beta"),
		"weather": peer(t, "weather@n1", ""), "acme-weather": peer(t, "acme-weather", "acme"),
		"beta-weather": peer(t, "beta-weather", "beta"), "cobalt-weather": peer(t, "cobalt-weather", "cobalt"),
	}
	for _, id := range []string{"geo", "acme-geo", "beta-geo"} {
		if _, err := heartbeat(t, r, peers[id], fmt.Sprintf(`{"agent_id":%q,"http_host":%q,"http_port":9000,"tools":[{"function_name":"geocode","capability":"geocode"}]}`, id, id+".example")); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"weather", "acme-weather", "beta-weather", "cobalt-weather"} {
		if _, err := heartbeat(t, r, peers[id], consumerBody(id)); err != nil {
			t.Fatal(err)
		}
	}
	return r, peers
}

func consumerBody(id string) string {
	return fmt.Sprintf(`{"agent_id":%q,"tools":[{"function_name":"forecast","capability":"weather","dependencies":[{"capability":"geocode"}]}]}`, id)
}

// checkProviders checks which provider each consumer's heartbeat and
// GET /agents resolve geocode to ("" for none).
func checkProviders(t *testing.T, r *Registry, peers map[string]*trust.Peer, want map[string]string) {
	t.Helper()
	listed := map[string]int{}
	for _, v := range r.List(Filter{}) {
		listed[v.ID] = v.DependenciesResolved
	}
	for consumer, provider := range want {
		res, err := heartbeat(t, r, peers[consumer], consumerBody(consumer))
		if err != nil {
			t.Fatal(err)
		}
		got := res.Resolved["forecast"]
		if len(got) != 1 || got[0].AgentID != provider {
			t.Errorf("%s's geocode resolved to %+v, want %q", consumer, got, provider)
			continue
		}
		if provider != "" && got[0].Endpoint != "https://"+provider+".example:9000" {
			t.Errorf("%s's geocode endpoint %q, want %s's", consumer, got[0].Endpoint, provider)
		}
		if n := map[bool]int{true: 1}[provider != ""]; listed[consumer] != n {
			t.Errorf("GET /agents shows %d of %s's dependencies resolved, want %d", listed[consumer], consumer, n)
		}
	}
}

// TestResolutionStaysInsideTrustBoundary: by default a dependency resolves
// to providers of the consumer's own entity or of the mesh's own CAs, and
// a mesh agent's only to mesh agents, although a partner's provider has
// the lowest id.
func TestResolutionStaysInsideTrustBoundary(t *testing.T) {
	r, peers := trustMesh(t, Config{})
	checkProviders(t, r, peers, map[string]string{
		"weather": "geo", "acme-weather": "acme-geo", "beta-weather": "beta-geo", "cobalt-weather": "geo",
	})
	// Without the mesh's provider, a mesh agent's dependency stays
	// unresolved rather than reaching a partner's host.
	if err := r.Delete(context.Background(), peers["geo"], "geo"); err != nil {
		t.Fatal(err)
	}
	checkProviders(t, r, peers, map[string]string{
		"weather": "", "acme-weather": "acme-geo", "beta-weather": "beta-geo", "cobalt-weather": "",
	})
}

// TestProviderEntities: an entity the operator lists in ProviderEntities
// provides to everyone; the others still only to themselves.
func TestProviderEntities(t *testing.T) {
	r, peers := trustMesh(t, Config{ProviderEntities: []string{"beta"}})
	checkProviders(t, r, peers, map[string]string{
		"weather": "beta-geo", "acme-weather": "acme-geo", "beta-weather": "beta-geo", "cobalt-weather": "beta-geo",
	})
}

// TestTagMatching: a dependency's tags match a tool's in any order and
// with repeats, and lists of tags that join alike stay apart in the
// resolution cache.
func TestTagMatching(t *testing.T) {
	r, _, _ := newTestRegistry(t)
	if _, err := heartbeat(t, r, peer(t, "geo@n2", ""), `{"agent_id":"geo","tools":[{"function_name":"g","capability":"geocode","tags":["osm","maps","eu","maps"]}]}`); err != nil {
		t.Fatal(err)
	}
	res, err := heartbeat(t, r, peer(t, "weather@n1", ""), `{"agent_id":"weather","tools":[{"function_name":"f","capability":"weather","dependencies":[
		{"capability":"geocode","tags":["maps","osm"]},
		{"capability":"geocode","tags":["eu","eu","osm","maps"]},
		{"capability":"geocode","tags":["maps","us"]},
		{"capability":"geocode","tags":["1:a1:b"]},
		{"capability":"geocode","tags":["a","b"]},
		{"capability":"geocode"}]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"geo", "geo", "", "", "", "geo"}
	got := res.Resolved["f"]
	for i := range want {
		if i >= len(got) || got[i].AgentID != want[i] {
			t.Fatalf("resolution %+v, want providers %q", got, want)
		}
	}
	if _, err := heartbeat(t, r, peer(t, "tagged@n3", ""), `{"agent_id":"tagged","tools":[{"function_name":"g","capability":"geocode","tags":["a","b"]}]}`); err != nil {
		t.Fatal(err)
	}
	res, _ = heartbeat(t, r, peer(t, "weather@n1", ""), `{"agent_id":"weather","tools":[{"function_name":"f","capability":"weather","dependencies":[{"capability":"geocode","tags":["1:a1:b"]},{"capability":"geocode","tags":["b","a"]}]}]}`)
	if got := res.Resolved["f"]; len(got) != 2 || got[0].AgentID != "" || got[1].AgentID != "tagged" {
		t.Fatalf("resolution %+v, want none, then tagged", got)
	}
}

// TestResolutionAnonymousProviders: an agent registered without a
// certificate (TLS auto) has the lowest id but never provides for an
// authenticated agent, mesh or partner; agents without a certificate may
// use it and the mesh's own. A certificate that takes the id over makes it
// a mesh provider at once, with no other change to the topology.
func TestResolutionAnonymousProviders(t *testing.T) {
	r, peers := trustMesh(t, Config{})
	peers["anon-weather"] = nil
	if _, err := heartbeat(t, r, nil, consumerBody("anon-weather")); err != nil {
		t.Fatal(err)
	}
	if _, err := heartbeat(t, r, nil, `{"agent_id":"aa-geo","http_host":"aa-geo.example","http_port":9000,"tools":[{"function_name":"geocode","capability":"geocode"}]}`); err != nil {
		t.Fatal(err)
	}
	checkProviders(t, r, peers, map[string]string{
		"weather": "geo", "acme-weather": "acme-geo", "beta-weather": "beta-geo", "cobalt-weather": "geo", "anon-weather": "aa-geo",
	})
	if _, err := heartbeat(t, r, nil, `{"agent_id":"aa-geo","http_host":"aa-geo.example","http_port":9000}`); err != nil {
		t.Fatal(err)
	}
	checkProviders(t, r, peers, map[string]string{"anon-weather": "geo"})
	if _, err := heartbeat(t, r, nil, `{"agent_id":"aa-geo","http_host":"aa-geo.example","http_port":9000,"tools":[{"function_name":"geocode","capability":"geocode"}]}`); err != nil {
		t.Fatal(err)
	}
	if _, err := heartbeat(t, r, peer(t, "aa-geo@n3", ""), `{"agent_id":"aa-geo","http_host":"aa-geo.example","http_port":9000,"tools":[{"function_name":"geocode","capability":"geocode"}]}`); err != nil {
		t.Fatal(err)
	}
	checkProviders(t, r, peers, map[string]string{"weather": "aa-geo", "cobalt-weather": "aa-geo", "anon-weather": "aa-geo", "acme-weather": "aa-geo"})
}
