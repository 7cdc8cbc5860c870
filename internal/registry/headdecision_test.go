package registry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// TestHeadDecisionUnderChurn: HEADs and POSTs of dependents race
// registrations, endpoint moves and deletions of providers (and of
// agents nobody depends on). A dependent whose providers never change,
// and an agent without dependencies, is never asked (202) to POST; once
// the churn stops, a dependent whose provider changed since its last
// POST answer is told (202), its POST answers the provider as it is now,
// and its next HEAD says 200; one whose last answer is still right hears
// 200 at once. Run it with -race.
func TestHeadDecisionUnderChurn(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRegistry(t)
	const providers, churn = 4, 150
	dep := func(id, capability string) []byte {
		return fmt.Appendf(nil, `{"agent_id":%q,"tools":[{"function_name":"f","capability":"use-%s","dependencies":[{"capability":%q}]}]}`, id, id, capability)
	}
	offer := func(id, capability string, port int) []byte {
		return fmt.Appendf(nil, `{"agent_id":%q,"http_host":"10.0.0.1","http_port":%d,"tools":[{"function_name":"g","capability":%q}]}`, id, port, capability)
	}
	register := func(p *trust.Peer, body []byte) Result {
		t.Helper()
		res, err := r.heartbeatBody(ctx, p, body)
		if err != nil {
			t.Fatalf("heartbeat %s: %v", body, err)
		}
		return res
	}
	// beta's one provider never changes.
	register(peer(t, "pb@n9", ""), offer("pb", "beta", 9500))

	type agent struct {
		id   string
		peer *trust.Peer
		body []byte
		// last is the resolution of f that the agent's last POST answer
		// carried; told counts its 202s.
		last  []meshapi.Resolution
		told  int
		posts int
	}
	newAgent := func(id, needs string) *agent {
		a := &agent{id: id, peer: peer(t, id+"@n1", "")}
		a.body = []byte(fmt.Sprintf(`{"agent_id":%q}`, id))
		if needs != "" {
			a.body = dep(id, needs)
		}
		a.last = register(a.peer, a.body).Resolved["f"]
		return a
	}
	var alphaDeps, steady []*agent
	for i := range 6 {
		alphaDeps = append(alphaDeps, newAgent(fmt.Sprintf("da%d", i), "alpha"))
	}
	for i := range 3 {
		steady = append(steady, newAgent(fmt.Sprintf("db%d", i), "beta"), newAgent(fmt.Sprintf("dn%d", i), ""))
	}

	// Each churner owns one alpha provider and one noise agent, and
	// leaves them in a state it records.
	type provider struct {
		id         string
		peer       *trust.Peer
		registered bool
		port       int
	}
	alpha := make([]*provider, providers)
	noise := make([]*provider, providers)
	for i := range providers {
		alpha[i] = &provider{id: fmt.Sprintf("pa%d", i), peer: peer(t, fmt.Sprintf("pa%d@n2", i), "")}
		noise[i] = &provider{id: fmt.Sprintf("pn%d", i), peer: peer(t, fmt.Sprintf("pn%d@n3", i), "")}
	}
	var (
		wg, churners sync.WaitGroup
		stop         = make(chan struct{})
		errs         = make(chan error, 64)
	)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	move := func(p *provider, capability string, rng *rand.Rand) {
		if p.registered && rng.IntN(3) == 0 {
			if err := r.Delete(ctx, p.peer, p.id); err != nil {
				fail(fmt.Errorf("delete %s: %w", p.id, err))
			}
			p.registered = false
			return
		}
		p.port = 9000 + rng.IntN(8)
		if _, err := r.heartbeatBody(ctx, p.peer, offer(p.id, capability, p.port)); err != nil {
			fail(fmt.Errorf("register %s: %w", p.id, err))
		}
		p.registered = true
	}
	for i := range providers {
		churners.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for range churn {
				move(alpha[i], "alpha", rng)
				move(noise[i], "noise", rng)
			}
		})
	}
	// The agents heartbeat as MCP Mesh's do (HEAD, and POST on a 202)
	// until the churn is over; a reader lists meanwhile.
	beat := func(a *agent) {
		res, err := r.Check(a.peer, a.id)
		if err != nil {
			fail(fmt.Errorf("HEAD %s: %w", a.id, err))
			return
		}
		if !res.Rotate {
			return
		}
		a.told++
		post, err := r.heartbeatBody(ctx, a.peer, a.body)
		if err != nil {
			fail(fmt.Errorf("POST %s: %w", a.id, err))
			return
		}
		a.posts++
		a.last = post.Resolved["f"]
	}
	repeat := func(op func()) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					op()
				}
			}
		})
	}
	for _, a := range slices.Concat(alphaDeps, steady) {
		repeat(func() { beat(a) })
	}
	repeat(func() { r.List(Filter{}) })
	churners.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	for _, a := range steady {
		if a.told != 0 {
			t.Errorf("%s, whose POST answer never changes, was asked (202) to POST %d times", a.id, a.told)
		}
	}
	// alpha's provider now: the registered one with the lowest id (same
	// tags and version), or none.
	want := []meshapi.Resolution{{Capability: "alpha", Status: "unresolved"}}
	for _, p := range alpha {
		if p.registered {
			want = []meshapi.Resolution{{AgentID: p.id, Capability: "alpha", Endpoint: fmt.Sprintf("https://10.0.0.1:%d", p.port), FunctionName: "g", Status: "available"}}
			break
		}
	}
	told := 0
	for _, a := range alphaDeps {
		told += a.told
		stale := !slices.Equal(a.last, want)
		res, err := r.Check(a.peer, a.id)
		if err != nil {
			t.Fatalf("HEAD %s: %v", a.id, err)
		}
		if res.Rotate != stale {
			t.Errorf("%s received %+v, alpha is %+v now: HEAD asks it to POST: %v, want %v", a.id, a.last, want, res.Rotate, stale)
		}
		if !res.Rotate {
			continue
		}
		post := register(a.peer, a.body)
		if got := post.Resolved["f"]; !slices.Equal(got, want) {
			t.Errorf("%s's POST after its 202 answers %+v, want %+v", a.id, got, want)
		}
		if res, err := r.Check(a.peer, a.id); err != nil || res.Rotate {
			t.Errorf("%s's HEAD after its POST: 202 %v, %v; want 200", a.id, res.Rotate, err)
		}
	}
	if told == 0 {
		t.Error("no dependent of alpha was told (202) while its providers churned")
	}
}
