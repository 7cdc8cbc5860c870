package registry

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// registration returns a heartbeat body for id with the given number of
// tools, each with deps dependencies on capability "geocode" and with tags
// tags on the tool and on each dependency.
func registration(t testing.TB, id string, tools, deps, tags int) []byte {
	t.Helper()
	var tagList []string
	for i := range tags {
		tagList = append(tagList, fmt.Sprintf("t%d", i))
	}
	reg := meshapi.Registration{AgentID: id, HTTPHost: "10.0.0.1", HTTPPort: 9000}
	for i := range tools {
		tool := meshapi.Tool{FunctionName: fmt.Sprintf("f%d", i), Capability: fmt.Sprintf("c%d", i), Tags: tagList}
		for range deps {
			tool.Dependencies = append(tool.Dependencies, meshapi.Dependency{Capability: "geocode", Tags: tagList})
		}
		reg.Tools = append(reg.Tools, tool)
	}
	body, err := json.Marshal(reg)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestRegistrationLimits: a registration past any of the default limits is
// refused as invalid, with a reason and a message that name the limit, and
// changes nothing: no record, no store write, no topology change, and an
// agent's earlier registration stays as it was.
func TestRegistrationLimits(t *testing.T) {
	tests := []struct {
		name               string
		tools, deps, tags  int
		reason, limitInMsg string
	}{
		{"tools at the limit", 256, 0, 0, "", ""},
		{"one tool too many", 257, 0, 0, "too_many_tools", "at most 256 tools"},
		{"dependencies of a tool at the limit", 1, 256, 0, "", ""},
		{"a tool with one dependency too many", 1, 257, 0, "too_many_tool_dependencies", "at most 256 dependencies"},
		{"dependencies in all at the limit", 4, 256, 0, "", ""},
		{"one dependency too many in all", 5, 205, 0, "too_many_dependencies", "at most 1024 dependencies"},
		{"tags at the limit", 2, 2, 64, "", ""},
		{"a tool or dependency with one tag too many", 1, 0, 65, "too_many_tags", "at most 64 tags"},
		{"the issue's 1 MiB heartbeat", 12_000, 1, 0, "too_many_tools", "at most 256 tools"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			st := newMemStore()
			c := newClock()
			r := newRegistry(t, st, c)
			opus := peer(t, "opus@ct111", "")
			small := []byte(`{"agent_id":"opus","tools":[{"function_name":"f","capability":"c"}]}`)
			if _, err := r.heartbeatBody(ctx, opus, small); err != nil {
				t.Fatal(err)
			}
			newcomer := peer(t, "geo@ct112", "")
			writes, topo, before := st.writeCount(), r.topology.Load(), r.List(Filter{})
			for _, try := range []struct {
				who  string
				p    *trust.Peer
				body []byte
			}{
				{"a new agent", newcomer, registration(t, "geo", tt.tools, tt.deps, tt.tags)},
				{"a registered agent", opus, registration(t, "opus", tt.tools, tt.deps, tt.tags)},
			} {
				_, err := r.heartbeatBody(ctx, try.p, try.body)
				if tt.reason == "" {
					if err != nil {
						t.Errorf("%s within the limits: %v", try.who, err)
					}
					continue
				}
				if !errors.Is(err, ErrInvalid) || ReasonOf(err) != tt.reason || !strings.Contains(err.Error(), tt.limitInMsg) {
					t.Errorf("%s: err %v (reason %q), want ErrInvalid %q naming %q", try.who, err, ReasonOf(err), tt.reason, tt.limitInMsg)
				}
				// The parsed path refuses it as well.
				reg, payload, perr := ParseRegistration(try.body)
				if perr != nil {
					t.Fatal(perr)
				}
				if _, err := r.Heartbeat(ctx, try.p, reg, payload); ReasonOf(err) != tt.reason {
					t.Errorf("%s through Heartbeat: %v, want %q", try.who, err, tt.reason)
				}
			}
			if tt.reason == "" {
				return
			}
			if st.writeCount() != writes || r.topology.Load() != topo || r.Len() != 1 {
				t.Errorf("refused registrations changed the registry: writes %d -> %d, topology %d -> %d, %d agents",
					writes, st.writeCount(), topo, r.topology.Load(), r.Len())
			}
			if after := r.List(Filter{}); !reflect.DeepEqual(after, before) {
				t.Errorf("agents after refused registrations:\n%+v\nwant\n%+v", after, before)
			}
			if got := string(st.agents["opus"].Payload); got != string(small) {
				t.Errorf("opus's stored registration is now %s", got)
			}
			// The owner's unchanged heartbeat still takes the fast path.
			if _, err := r.heartbeatBody(ctx, opus, small); err != nil || st.writeCount() != writes {
				t.Errorf("opus's unchanged heartbeat after the refusals: %v, %d writes, want %d", err, st.writeCount(), writes)
			}
		})
	}
}

// consumers registers a geocode provider and n consumers, each with one
// tool and deps dependencies on geocode, and returns the registry.
func consumers(t testing.TB, n, deps int) *Registry {
	t.Helper()
	ctx := context.Background()
	r, err := New(ctx, newMemStore(), Config{Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	geo := []byte(`{"agent_id":"geo","http_host":"10.0.0.2","http_port":9102,"tools":[{"function_name":"geocode","capability":"geocode","tags":["t0"]}]}`)
	if _, err := r.heartbeatBody(ctx, peerFor(t, "geo@n0"), geo); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("weather-%d", i)
		if _, err := r.heartbeatBody(ctx, peerFor(t, id+"@n1"), registration(t, id, 1, deps, 1)); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// peerFor is a mesh CA agent certificate for cn, usable in benchmarks.
func peerFor(t testing.TB, cn string) *trust.Peer {
	serials++
	id, err := identity.Parse(cn)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<40, 0)}
	return &trust.Peer{Leaf: leaf, Fingerprint: fmt.Sprintf("fp-%d", serials), Serial: fmt.Sprintf("%x", serials), Backend: "localca", Identity: id}
}

// TestListDoesNotResolveAgain: with nothing changed, GET /agents costs the
// same whether agents declare dependencies or not. Resolution is computed
// once per topology change, not on every list.
func TestListDoesNotResolveAgain(t *testing.T) {
	const n, deps = 10, 100
	with, without := consumers(t, n, deps), consumers(t, n, 0)
	for _, v := range with.List(Filter{}) {
		if v.ID != "geo" && (v.TotalDependencies != deps || v.DependenciesResolved != deps) {
			t.Fatalf("%s: %d of %d dependencies resolved, want %d of %d", v.ID, v.DependenciesResolved, v.TotalDependencies, deps, deps)
		}
	}
	without.List(Filter{})
	withAllocs := testing.AllocsPerRun(20, func() { with.List(Filter{}) })
	withoutAllocs := testing.AllocsPerRun(20, func() { without.List(Filter{}) })
	// Resolving again would cost at least one allocation per dependency
	// (deps per agent); a few per agent are the dependency lists a view
	// carries, plus what background goroutines allocate (AllocsPerRun
	// counts the whole process, more so under -race).
	if withAllocs > withoutAllocs+3*n {
		t.Errorf("listing %d agents with %d dependencies each allocates %.0f times, without dependencies %.0f: the list resolves again though nothing changed",
			n, deps, withAllocs, withoutAllocs)
	}
}

// TestConfigLimits: the limits are the registry's Config.
func TestConfigLimits(t *testing.T) {
	ctx := context.Background()
	r, err := New(ctx, newMemStore(), Config{MaxTools: 2, MaxToolDependencies: 3, MaxDependencies: 4, MaxTags: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		tools, deps, tags int
		reason            string
	}{
		{2, 2, 1, ""},
		{3, 0, 0, "too_many_tools"},
		{1, 4, 0, "too_many_tool_dependencies"},
		{2, 3, 0, "too_many_dependencies"},
		{1, 1, 2, "too_many_tags"},
	} {
		_, err := r.heartbeatBody(ctx, peerFor(t, "geo@n1"), registration(t, "geo", tt.tools, tt.deps, tt.tags))
		if (tt.reason == "" && err != nil) || (tt.reason != "" && (!errors.Is(err, ErrInvalid) || ReasonOf(err) != tt.reason)) {
			t.Errorf("%d tools with %d dependencies and %d tags: %v, want %q", tt.tools, tt.deps, tt.tags, err, tt.reason)
		}
	}
}

// TestResolutionOncePerTopology: after a topology change, listing N
// agents that declare the same dependency looks its providers up once, and
// neither another list nor the agents' resolutions look again until the
// topology moves.
func TestResolutionOncePerTopology(t *testing.T) {
	const n = 20
	ctx := context.Background()
	r := consumers(t, n, 3)
	var lookups atomic.Int64
	r.hooks.resolve = func(string) { lookups.Add(1) }
	check := func(what string, want int64) {
		t.Helper()
		if got := lookups.Swap(0); got != want {
			t.Errorf("%s: %d provider lookups, want %d", what, got, want)
		}
	}
	// A provider joins, with a lower id than geo: the topology moves.
	atlas := peerFor(t, "atlas@n0")
	body := func(port int) []byte {
		return fmt.Appendf(nil, `{"agent_id":"atlas","http_port":%d,"tools":[{"function_name":"geocode","capability":"geocode","tags":["t0"]}]}`, port)
	}
	if _, err := r.heartbeatBody(ctx, atlas, body(9000)); err != nil {
		t.Fatal(err)
	}
	check("the provider's own heartbeat", 0)
	for _, v := range r.List(Filter{}) {
		if v.TotalDependencies != 0 && v.DependenciesResolved != 3 {
			t.Fatalf("%s: %d dependencies resolved, want 3", v.ID, v.DependenciesResolved)
		}
	}
	check("the first list after the change", 1)
	r.List(Filter{})
	check("a second list", 0)
	for i := range n {
		id := fmt.Sprintf("weather-%d", i)
		if got := r.resolution(r.lookup(id)).res["f0"]; len(got) != 3 || got[0].AgentID != "atlas" {
			t.Fatalf("%s resolves geocode to %+v, want atlas", id, got)
		}
	}
	check("every agent's resolution, as its heartbeat answers it", 0)
	// The provider moves: the next list looks once again.
	if _, err := r.heartbeatBody(ctx, atlas, body(9001)); err != nil {
		t.Fatal(err)
	}
	r.List(Filter{})
	check("a list after the provider moved", 1)
	if got := r.resolution(r.lookup("weather-0")).res["f0"][0].Endpoint; got != "https://:9001" {
		t.Errorf("weather-0 resolves geocode at %q, want atlas's new endpoint", got)
	}
}

// TestStoredRegistrationOverLimit: a record stored before the limits is
// loaded with a warning; its owner's unchanged heartbeat is answered, and
// its next change is refused.
func TestStoredRegistrationOverLimit(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	wide := registration(t, "wide", 300, 0, 0)
	_, payload, err := ParseRegistration(wide)
	if err != nil {
		t.Fatal(err)
	}
	st.agents["wide"] = store.Agent{ID: "wide", Owner: "wide@n1", Source: "localca", Payload: payload, CertFingerprint: "fp-wide", Status: StatusHealthy, Version: 1}
	var log bytes.Buffer
	r, err := New(ctx, st, Config{Timeout: time.Hour, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "agent=wide reason=too_many_tools") {
		t.Errorf("log after loading an agent over the limits:\n%s", log.String())
	}
	p := peerFor(t, "wide@n1")
	p.Fingerprint = "fp-wide"
	if _, err := r.heartbeatBody(ctx, p, wide); err != nil {
		t.Errorf("the owner's unchanged heartbeat: %v", err)
	}
	if _, err := r.heartbeatBody(ctx, p, registration(t, "wide", 301, 0, 0)); ReasonOf(err) != "too_many_tools" {
		t.Errorf("the owner's next change: %v, want too_many_tools", err)
	}
}
