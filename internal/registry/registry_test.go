package registry

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// memStore is the registry's Store in memory that counts writes, so tests can
// assert which heartbeats reached the store. Like every store, it
// ignores a record older than the one it holds, writes a change only over
// a record of the same ownership, and inserts only through a claim. Like
// meshd's stores, it keeps an audit log with the writes that come with an
// entry.
type memStore struct {
	mu     sync.Mutex
	agents map[string]store.Agent
	audit  []store.AuditEntry
	writes int
	fail   error
}

func newMemStore() *memStore { return &memStore{agents: map[string]store.Agent{}} }

func (m *memStore) PutAgents(_ context.Context, agents []store.Agent) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.writes++
	for _, a := range agents {
		m.update(a)
	}
	return nil
}

// update writes a over a held record of the same ownership that is not
// newer, and reports why it did not.
func (m *memStore) update(a store.Agent) error {
	held, ok := m.agents[a.ID]
	if err := store.UpdateRefusal(a, held, ok); err != nil || a.Version < held.Version {
		return err
	}
	a.Payload = append([]byte(nil), a.Payload...)
	m.agents[a.ID] = a
	return nil
}

func (m *memStore) UpdateAgent(_ context.Context, a store.Agent) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.writes++
	return m.update(a)
}

// PutAgentAudited is the claim, with its audit entry, in one write,
// refused with store.ErrAgentOwned as meshd's stores refuse it.
func (m *memStore) PutAgentAudited(_ context.Context, ag store.Agent, a store.AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	held, ok := m.agents[ag.ID]
	if ok && store.OwnedByOther(held, ag) {
		return store.ErrAgentOwned
	}
	m.writes++
	switch {
	case !ok || ag.Version >= held.Version:
	case !store.SameOwner(held, ag):
		ag.Version = held.Version + 1
	default:
		ag = held
	}
	ag.Payload = append([]byte(nil), ag.Payload...)
	m.agents[ag.ID] = ag
	m.audit = append(m.audit, a)
	return nil
}

func (m *memStore) DeleteAgent(_ context.Context, id string, a store.AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.agents[id]; !ok {
		return store.ErrNotFound
	}
	m.writes++
	delete(m.agents, id)
	m.audit = append(m.audit, a)
	return nil
}

// auditLog returns a copy of the audit entries written so far.
func (m *memStore) auditLog() []store.AuditEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]store.AuditEntry(nil), m.audit...)
}

func (m *memStore) Agents(context.Context) ([]store.Agent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Agent
	for _, a := range m.agents {
		out = append(out, a)
	}
	return out, nil
}

func (m *memStore) writeCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes
}

// newClock returns a test clock at a fixed time.
func newClock() *clocktest.Clock { return clocktest.New(time.Unix(1_800_000_000, 0)) }

var serials int

// peer returns a verified peer for common name cn, belonging to entity,
// admitted as meshd's default chain would: the mesh CA's certificates by
// localca, an entity's by the entities backend.
func peer(t *testing.T, cn, entity string) *trust.Peer {
	t.Helper()
	backend := "localca"
	if entity != "" {
		backend = "entities"
	}
	return peerFrom(t, cn, entity, backend)
}

// peerFrom is peer admitted by the trust backend named backend.
func peerFrom(t *testing.T, cn, entity, backend string) *trust.Peer {
	t.Helper()
	serials++
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, Raw: []byte(fmt.Sprintf("%s/%s/%d", cn, entity, serials)),
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<40, 0)}
	p := &trust.Peer{Leaf: leaf, Fingerprint: fmt.Sprintf("fp-%d", serials), Serial: fmt.Sprintf("%x", serials), Backend: backend, Entity: entity}
	// Like trust's backends: the mesh CA's certs must be identities;
	// another CA's CN is read as one when it parses.
	id, err := identity.Parse(cn)
	if err != nil && backend == "localca" {
		t.Fatal(err)
	}
	p.Identity = id
	return p
}

func newRegistry(t *testing.T, st Store, c *clocktest.Clock) *Registry {
	t.Helper()
	r, err := New(context.Background(), st, Config{Timeout: 20 * time.Second, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newTestRegistry returns a registry (newRegistry's) on a new memStore
// with a new clock.
func newTestRegistry(t *testing.T) (*Registry, *memStore, *clocktest.Clock) {
	t.Helper()
	st, c := newMemStore(), newClock()
	return newRegistry(t, st, c), st, c
}

func heartbeat(t *testing.T, r *Registry, p *trust.Peer, body string) (Result, error) {
	t.Helper()
	reg, payload, err := ParseRegistration([]byte(body))
	if err != nil {
		t.Fatalf("ParseRegistration(%s): %v", body, err)
	}
	return r.Heartbeat(context.Background(), p, reg, payload)
}

func TestBinding(t *testing.T) {
	ctx := context.Background()
	r, st, _ := newTestRegistry(t)
	opus := peer(t, "opus@ct111", "")
	if _, err := heartbeat(t, r, opus, `{"agent_id":"opus"}`); err != nil {
		t.Fatalf("owner registers: %v", err)
	}
	corp := peer(t, "acme-corp-x", "acme-corp")
	if _, err := heartbeat(t, r, corp, `{"agent_id":"acme-corp-x"}`); err != nil {
		t.Fatalf("entity agent registers: %v", err)
	}
	tests := []struct {
		name   string
		peer   *trust.Peer
		id     string
		reason string
	}{
		{"agent cert names another agent", peer(t, "gpt@ct111", ""), "opus", "identity_mismatch"},
		{"same agent id on another node", peer(t, "opus@ct112", ""), "opus", "owned_by_other"},
		{"node cert", peer(t, "ct111.mesh", ""), "opus", "not_agent_cert"},
		{"external user cert", peer(t, "alice@external", ""), "opus", "not_agent_cert"},
		{"entity cert outside its namespace", peer(t, "weather", "acme"), "weather", "outside_namespace"},
		{"entity cert naming a mesh agent", peer(t, "opus@ct111", "acme"), "opus", "outside_namespace"},
		// "acme-corp-x" lies in the namespaces of both acme and acme-corp:
		// the first claim decides.
		{"another entity takes an owned id", peer(t, "acme-corp-x", "acme"), "acme-corp-x", "owned_by_other_entity"},
		// The first claim binds the trust backend that admitted it: a
		// trust-dir CA (the mesh's own, entity "") may write a mesh CA
		// agent's name, and an entity's CA may be in the trust dir and
		// registered both.
		{"a trust-dir CA naming a mesh CA agent", peerFrom(t, "opus@ct111", "", "filestore"), "opus", "owned_by_other_source"},
		{"the entity's CA in the trust dir as well", peerFrom(t, "acme-corp-x", "acme-corp", "filestore"), "acme-corp-x", "owned_by_other_source"},
		{"the owner with a renewed certificate", peer(t, "acme-corp-x", "acme-corp"), "acme-corp-x", ""},
		{"the mesh owner with a renewed certificate", peer(t, "opus@ct111", ""), "opus", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := st.writeCount()
			_, hbErr := heartbeat(t, r, tt.peer, fmt.Sprintf(`{"agent_id":%q,"http_port":9}`, tt.id))
			_, headErr := r.Check(tt.peer, tt.id)
			delErr := r.Authorize(tt.peer, tt.id)
			for what, err := range map[string]error{"POST": hbErr, "HEAD": headErr, "DELETE": delErr} {
				if tt.reason == "" {
					if err != nil {
						t.Errorf("%s: %v, want allowed", what, err)
					}
					continue
				}
				if !errors.Is(err, ErrForbidden) || ReasonOf(err) != tt.reason {
					t.Errorf("%s: err %v (reason %q), want ErrForbidden %q", what, err, ReasonOf(err), tt.reason)
				}
			}
			if tt.reason != "" && st.writeCount() != before {
				t.Errorf("a refused request wrote to the store")
			}
		})
	}
	// The owner of opus is untouched by the refused attempts.
	if v := r.List(Filter{}); len(v) != 2 || v[1].Owner != "opus@ct111" || v[1].Status != StatusHealthy {
		t.Fatalf("agents after refused takeovers: %+v", v)
	}
	// A refused DELETE leaves the agent; the owner's DELETE removes it.
	if err := r.Delete(ctx, peer(t, "gpt@ct111", ""), "opus"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("delete by another agent: %v", err)
	}
	if err := r.Delete(ctx, opus, "opus"); err != nil {
		t.Fatalf("owner delete: %v", err)
	}
	if _, err := r.Check(opus, "opus"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("HEAD after delete: %v, want ErrUnknown", err)
	}
}

func TestUnchangedHeartbeatWritesNothing(t *testing.T) {
	r, st, c := newTestRegistry(t)
	p := peer(t, "opus@ct111", "")
	body := `{"agent_id":"opus","name":"opus","http_host":"10.0.0.1","http_port":9000,"tools":[{"function_name":"f","capability":"c"}]}`
	res, err := heartbeat(t, r, p, body)
	if err != nil || !res.Created {
		t.Fatalf("first heartbeat: %+v, %v", res, err)
	}
	if st.writeCount() != 1 {
		t.Fatalf("first registration: %d writes, want 1 (durable before acknowledged)", st.writeCount())
	}
	for i := 0; i < 100; i++ {
		c.Advance(time.Second)
		if _, err := heartbeat(t, r, p, body); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Check(p, "opus"); err != nil {
			t.Fatal(err)
		}
	}
	if st.writeCount() != 1 {
		t.Fatalf("100 unchanged heartbeats: %d writes, want still 1", st.writeCount())
	}
	if err := r.Flush(context.Background()); err != nil || st.writeCount() != 1 {
		t.Fatalf("flush after unchanged heartbeats wrote: %d, %v", st.writeCount(), err)
	}
	// A changed payload is written at once.
	if _, err := heartbeat(t, r, p, `{"agent_id":"opus","name":"opus","http_port":9001}`); err != nil {
		t.Fatal(err)
	}
	if st.writeCount() != 2 {
		t.Fatalf("changed payload: %d writes, want 2", st.writeCount())
	}
}

func TestFailedWriteIsNotAcknowledged(t *testing.T) {
	st := newMemStore()
	st.fail = errors.New("disk full")
	r := newRegistry(t, st, newClock())
	p := peer(t, "opus@ct111", "")
	if _, err := heartbeat(t, r, p, `{"agent_id":"opus"}`); err == nil {
		t.Fatal("heartbeat acknowledged although the store refused it")
	}
	if r.Len() != 0 {
		t.Fatalf("registry holds %d agents after a failed first write", r.Len())
	}
	st.fail = nil
	if _, err := heartbeat(t, r, p, `{"agent_id":"opus"}`); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func TestLivenessAndRestart(t *testing.T) {
	ctx := context.Background()
	r, st, c := newTestRegistry(t)
	a, b := peer(t, "a@n1", ""), peer(t, "b@n1", "")
	for _, p := range []*trust.Peer{a, b} {
		if _, err := heartbeat(t, r, p, fmt.Sprintf(`{"agent_id":%q}`, p.Identity.Name)); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(15 * time.Second)
	if _, err := r.Check(a, "a"); err != nil {
		t.Fatal(err)
	}
	c.Advance(10 * time.Second) // b silent 25s, a 10s
	if n := r.Sweep(); n != 1 {
		t.Fatalf("sweep marked %d, want 1", n)
	}
	if _, err := r.Check(b, "b"); !errors.Is(err, ErrUnknown) || ReasonOf(err) != "unhealthy" {
		t.Fatalf("HEAD of unhealthy agent: %v, want 410 unhealthy", err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.agents["b"].Status; got != StatusUnhealthy {
		t.Fatalf("stored status of b after flush: %q", got)
	}
	// A new registry over the same store has both agents, with b unhealthy.
	r2 := newRegistry(t, st, c)
	views := r2.List(Filter{})
	if len(views) != 2 || views[0].Status != StatusHealthy || views[1].Status != StatusUnhealthy || views[0].Owner != "a@n1" {
		t.Fatalf("after restart: %+v", views)
	}
	// b comes back with a POST.
	if _, err := heartbeat(t, r2, b, `{"agent_id":"b"}`); err != nil {
		t.Fatal(err)
	}
	if v := r2.List(Filter{Status: StatusHealthy}); len(v) != 2 {
		t.Fatalf("healthy after comeback: %d", len(v))
	}
}

func TestEvictionAndRotation(t *testing.T) {
	ctx := context.Background()
	r, st, _ := newTestRegistry(t)
	a1, a2, m := peer(t, "acme-a", "acme"), peer(t, "acme-b", "acme"), peer(t, "opus@ct111", "")
	for _, p := range []*trust.Peer{a1, a2, m} {
		id, _ := meshauth.AgentID(p)
		if _, err := heartbeat(t, r, p, fmt.Sprintf(`{"agent_id":%q}`, id)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := r.Rotate(ctx, "acme")
	if err != nil || n != 2 {
		t.Fatalf("rotate acme: %d, %v", n, err)
	}
	if res, err := r.Check(a1, "acme-a"); err != nil || !res.Rotate {
		t.Fatalf("HEAD after rotate: %+v %v, want rotate (202)", res, err)
	}
	if res, err := heartbeat(t, r, a1, `{"agent_id":"acme-a"}`); err != nil || !res.Rotate {
		t.Fatalf("POST with the old cert after rotate: %+v %v, want rotate", res, err)
	}
	// That POST acknowledged the request, as in MCP Mesh: HEAD is 200
	// again and the next POST does not ask again.
	if res, err := r.Check(a1, "acme-a"); err != nil || res.Rotate {
		t.Fatalf("HEAD after the POST that acknowledged the rotation: %+v %v, want 200", res, err)
	}
	if res, err := heartbeat(t, r, a1, `{"agent_id":"acme-a"}`); err != nil || res.Rotate {
		t.Fatalf("second POST with the old cert: %+v %v, want no rotate", res, err)
	}
	if recs, _ := st.Agents(ctx); !rotateCleared(recs, "acme-a") {
		t.Fatal("the acknowledgement of the rotation is not in the store")
	}
	// acme-b comes back with a fresh certificate: no rotate, done too.
	if res, err := heartbeat(t, r, peer(t, "acme-b", "acme"), `{"agent_id":"acme-b"}`); err != nil || res.Rotate {
		t.Fatalf("POST with a fresh cert after rotate: %+v %v, want no rotate", res, err)
	}
	fresh := peer(t, "acme-a", "acme")
	if res, err := heartbeat(t, r, fresh, `{"agent_id":"acme-a"}`); err != nil || res.Rotate {
		t.Fatalf("POST with a fresh cert: %+v %v, want rotation done", res, err)
	}
	if res, _ := r.Check(fresh, "acme-a"); res.Rotate {
		t.Fatal("HEAD still asks to rotate after re-registration with a fresh cert")
	}
	ev, err := r.EvictEntity(ctx, "acme", "entity revoked")
	if err != nil || len(ev) != 2 {
		t.Fatalf("evict acme: %v %v", ev, err)
	}
	if _, err := r.Check(a2, "acme-b"); !errors.Is(err, ErrEvicted) {
		t.Fatalf("HEAD of evicted agent: %v", err)
	}
	if st.agents["acme-b"].Status != StatusEvicted {
		t.Fatal("eviction not written to the store")
	}
	ev, err = r.evictSerial(ctx, m.Serial, "revoked")
	if err != nil || len(ev) != 1 || ev[0].AgentID != "opus" {
		t.Fatalf("evict by serial: %v %v", ev, err)
	}
	if v := r.List(Filter{Status: StatusHealthy}); len(v) != 0 {
		t.Fatalf("healthy agents after evictions: %+v", v)
	}
}

func TestTopologyAndResolution(t *testing.T) {
	r, _, _ := newTestRegistry(t)
	w := peer(t, "weather@n1", "")
	body := `{"agent_id":"weather","tools":[{"function_name":"forecast","capability":"weather","dependencies":[{"capability":"geocode","tags":["maps"]},{"capability":"notify"}]}]}`
	res, err := heartbeat(t, r, w, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Resolved["forecast"]; len(got) != 2 || got[0].Status != "unresolved" || got[0].AgentID != "" {
		t.Fatalf("resolution with no providers: %+v", got)
	}
	if res, _ := r.Check(w, "weather"); res.Rotate {
		t.Fatal("HEAD right after POST asks for a re-POST")
	}
	g := peer(t, "geo@n2", "")
	if _, err := heartbeat(t, r, g, `{"agent_id":"geo","http_host":"10.0.0.2","http_port":9102,"tools":[{"function_name":"geocode","capability":"geocode","tags":["maps","osm"]}]}`); err != nil {
		t.Fatal(err)
	}
	if res, _ := r.Check(w, "weather"); !res.Rotate {
		t.Fatal("HEAD after a provider joined: want 202 (topology changed)")
	}
	res, err = heartbeat(t, r, w, body)
	if err != nil {
		t.Fatal(err)
	}
	want := meshapi.Resolution{AgentID: "geo", Capability: "geocode", Endpoint: "https://10.0.0.2:9102", FunctionName: "geocode", Status: "available"}
	if got := res.Resolved["forecast"]; got[0] != want || got[1].Status != "unresolved" {
		t.Fatalf("resolution: %+v", got)
	}
	if res, _ := r.Check(w, "weather"); res.Rotate {
		t.Fatal("HEAD after re-POST still 202")
	}
	if v := r.List(Filter{Capabilities: []string{"geocode"}}); len(v) != 1 || v[0].ID != "geo" || v[0].DependenciesResolved != 0 {
		t.Fatalf("capability filter: %+v", v)
	}
}

func TestParseRegistration(t *testing.T) {
	for _, bad := range []string{
		`{`, `{}`, `{"agent_id":"Opus"}`, `{"agent_id":"a_b"}`, `{"agent_id":"../x"}`,
		`{"agent_id":"a","http_port":70000}`, `{"agent_id":"a","agent_type":"robot"}`,
		`{"agent_id":"a","tools":[{"capability":"c"}]}`,
		fmt.Sprintf(`{"agent_id":"a","name":%q}`, string(make([]byte, 64))),
	} {
		if _, _, err := ParseRegistration([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRegistration(%.40s): %v, want ErrInvalid", bad, err)
		}
	}
	_, payload, err := ParseRegistration([]byte("{ \"agent_id\" : \"a\",\n \"x\": [1, 2] }"))
	if err != nil || string(payload) != `{"agent_id":"a","x":[1,2]}` {
		t.Fatalf("compacted payload %q, %v", payload, err)
	}
}

func TestConcurrentHeartbeats(t *testing.T) {
	r, st, _ := newTestRegistry(t)
	var wg sync.WaitGroup
	peers := make([]*trust.Peer, 16)
	for i := range peers {
		peers[i] = peer(t, fmt.Sprintf("a%d@n1", i), "")
	}
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				p := peers[i%len(peers)]
				reg, payload, _ := ParseRegistration([]byte(fmt.Sprintf(`{"agent_id":%q}`, p.Identity.Name)))
				if _, err := r.Heartbeat(context.Background(), p, reg, payload); err != nil {
					t.Error(err)
					return
				}
				r.Check(p, p.Identity.Name)
				if i%50 == 0 {
					r.Sweep()
					r.List(Filter{})
				}
			}
		}()
	}
	wg.Wait()
	if r.Len() != len(peers) || st.writeCount() != len(peers) {
		t.Fatalf("%d agents, %d writes; want %d each (one first claim per agent)", r.Len(), st.writeCount(), len(peers))
	}
}

func TestHeartbeatBodyFastPathAndVisibleChanges(t *testing.T) {
	ctx := context.Background()
	r, st, _ := newTestRegistry(t)
	w, g := peer(t, "weather@n1", ""), peer(t, "geo@n2", "")
	if _, err := r.heartbeatBody(ctx, g, []byte(`{"agent_id":"geo","tools":[{"function_name":"geocode","capability":"geocode"}]}`)); err != nil {
		t.Fatal(err)
	}
	body := func(ts, desc string) []byte {
		return []byte(fmt.Sprintf(`{"agent_id":"weather","timestamp":%q,"description":%q,"tools":[{"function_name":"f","capability":"weather","dependencies":[{"capability":"geocode"}]}]}`, ts, desc))
	}
	res, err := r.heartbeatBody(ctx, w, body("2026-01-01T00:00:00Z", "v1"))
	if err != nil || !res.Created || res.Resolved["f"][0].AgentID != "geo" {
		t.Fatalf("first: %+v %v", res, err)
	}
	// weather's arrival moved the topology, but geo depends on nothing:
	// its POST would answer what it received, so it is not asked again.
	if res, _ := r.Check(g, "geo"); res.Rotate {
		t.Fatal("geo, which depends on nothing, is asked (202) to POST after weather registered")
	}
	writes := st.writeCount()
	// The same body again is answered from memory, with the cached resolution.
	if res, err := r.heartbeatBody(ctx, w, body("2026-01-01T00:00:00Z", "v1")); err != nil || res.Resolved["f"][0].AgentID != "geo" {
		t.Fatalf("repeat: %+v %v", res, err)
	}
	// Only the timestamp moves: still nothing written.
	if _, err := r.heartbeatBody(ctx, w, body("2026-01-01T00:00:05Z", "v1")); err != nil {
		t.Fatal(err)
	}
	if st.writeCount() != writes {
		t.Fatalf("a timestamp-only change wrote to the store (%d -> %d)", writes, st.writeCount())
	}
	if res, _ := r.Check(g, "geo"); res.Rotate {
		t.Fatal("geo's HEAD says 202 after weather only re-sent its heartbeat")
	}
	// A description change is written, but other agents need not re-POST.
	if _, err := r.heartbeatBody(ctx, w, body("2026-01-01T00:00:10Z", "v2")); err != nil {
		t.Fatal(err)
	}
	if st.writeCount() != writes+1 {
		t.Fatalf("a description change: %d writes, want %d", st.writeCount(), writes+1)
	}
	if res, _ := r.Check(g, "geo"); res.Rotate {
		t.Fatal("geo's HEAD says 202 after a change no dependent can see")
	}
	if res, _ := r.Check(w, "weather"); res.Rotate {
		t.Fatal("weather's HEAD says 202 after its own change no dependent can see")
	}
	if v := r.List(Filter{}); v[1].Description != "v2" {
		t.Fatalf("description not updated: %+v", v[1])
	}
	// A changed endpoint is a topology change, seen by geo's dependents
	// (weather), not by geo, which depends on nothing.
	if _, err := r.heartbeatBody(ctx, g, []byte(`{"agent_id":"geo","http_port":9100,"tools":[{"function_name":"geocode","capability":"geocode"}]}`)); err != nil {
		t.Fatal(err)
	}
	if res, _ := r.Check(w, "weather"); !res.Rotate {
		t.Fatal("weather's HEAD says 200 after its provider geo moved its endpoint")
	}
	if res, _ := r.Check(w, "weather"); !res.Rotate {
		t.Fatal("weather's second HEAD says 200 before it POSTed the change's answer away")
	}
	if res, err := r.heartbeatBody(ctx, w, body("2026-01-01T00:00:15Z", "v2")); err != nil || res.Resolved["f"][0].Endpoint != "https://:9100" {
		t.Fatalf("weather's POST after its provider moved: %+v %v", res, err)
	}
	if res, _ := r.Check(w, "weather"); res.Rotate {
		t.Fatal("weather's HEAD says 202 after its POST received the new endpoint")
	}
	// Another certificate for the same agent id never takes the fast path.
	if _, err := r.heartbeatBody(ctx, peer(t, "weather@n2", ""), body("2026-01-01T00:00:09Z", "v2")); !errors.Is(err, ErrForbidden) {
		t.Fatalf("another node's certificate: %v", err)
	}
}

// rotateCleared reports whether the stored record of id has no rotation
// pending.
func rotateCleared(recs []store.Agent, id string) bool {
	for _, a := range recs {
		if a.ID == id {
			return a.RotateFrom.IsZero()
		}
	}
	return false
}

// TestCensus: the census counts the agents by status, entity and trust
// source, each once.
func TestCensus(t *testing.T) {
	r, _, c := newTestRegistry(t)
	for _, p := range []*trust.Peer{peer(t, "opus@ct111", ""), peer(t, "gpt@ct111", ""), peer(t, "acme-x", "acme"), peerFrom(t, "mcp-y", "", "filestore")} {
		if _, err := heartbeat(t, r, p, fmt.Sprintf(`{"agent_id":%q}`, strings.SplitN(p.Name(), "@", 2)[0])); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(30 * time.Second)
	if _, err := heartbeat(t, r, peer(t, "opus@ct111", ""), `{"agent_id":"opus"}`); err != nil {
		t.Fatal(err)
	}
	r.Sweep()
	got := map[string]int{}
	r.Census(func(status, entity, source string, n int) {
		k := status + " " + entity + " " + source
		if _, dup := got[k]; dup {
			t.Errorf("census reported %q twice", k)
		}
		got[k] = n
	})
	want := map[string]int{"healthy  localca": 1, "unhealthy  localca": 1, "unhealthy acme entities": 1, "unhealthy  filestore": 1}
	if !maps.Equal(got, want) {
		t.Errorf("census %v, want %v", got, want)
	}
}
