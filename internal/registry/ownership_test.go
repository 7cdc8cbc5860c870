package registry

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// TestFirstClaimIsAudited: the first claim of an agent id writes one audit
// entry naming its owner, entity and trust source, with the record; an
// unchanged heartbeat, a changed one, a HEAD and a refused claim write
// none.
func TestFirstClaimIsAudited(t *testing.T) {
	ctx := context.Background()
	r, st, c := newTestRegistry(t)
	opus := peer(t, "opus@ct111", "")
	body := []byte(`{"agent_id":"opus","http_port":9000}`)
	if _, err := r.heartbeatBody(ctx, opus, body); err != nil {
		t.Fatal(err)
	}
	want := []store.AuditEntry{{Time: c.Now(), Action: "agent.claim", Identity: "opus", Outcome: store.OutcomeOK,
		Detail: `owner "opus@ct111" (node ct111), the mesh's own CA, trust source "localca"`}}
	checkAudit(t, "after the first claim", st, want)

	for range 5 {
		c.Advance(time.Second)
		if _, err := r.heartbeatBody(ctx, opus, body); err != nil {
			t.Fatal(err)
		}
		if _, err := heartbeat(t, r, opus, string(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Check(opus, "opus"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.heartbeatBody(ctx, opus, []byte(`{"agent_id":"opus","http_port":9001}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.heartbeatBody(ctx, peer(t, "opus@ct112", ""), body); ReasonOf(err) != "owned_by_other" {
		t.Fatalf("another node's claim: %v", err)
	}
	checkAudit(t, "after unchanged, changed and refused heartbeats", st, want)

	c.Advance(time.Second)
	if _, err := r.heartbeatBody(ctx, peer(t, "acme-x", "acme"), []byte(`{"agent_id":"acme-x"}`)); err != nil {
		t.Fatal(err)
	}
	want = append(want, store.AuditEntry{Time: c.Now(), Action: "agent.claim", Identity: "acme-x", Outcome: store.OutcomeOK,
		Detail: `owner "acme-x", entity "acme", trust source "entities"`})
	checkAudit(t, "after a partner's first claim", st, want)
}

func checkAudit(t *testing.T, what string, st *memStore, want []store.AuditEntry) {
	t.Helper()
	got := st.auditLog()
	if len(got) != len(want) {
		t.Fatalf("%s: %d audit entries %+v, want %d %+v", what, len(got), got, len(want), want)
	}
	for i := range want {
		if got[i].Action != want[i].Action || got[i].Identity != want[i].Identity || got[i].Outcome != want[i].Outcome ||
			got[i].Detail != want[i].Detail || !got[i].Time.Equal(want[i].Time) {
			t.Errorf("%s: audit entry %d is %+v, want %+v", what, i, got[i], want[i])
		}
	}
}

// TestListShowsOwningNode: GET /agents names the node of the certificate
// that owns each agent, so an agent id claimed from the wrong node is seen.
func TestListShowsOwningNode(t *testing.T) {
	r, _, _ := newTestRegistry(t)
	for _, p := range []*trust.Peer{peer(t, "opus@ct666", ""), peer(t, "acme-x", "acme"), peer(t, "acme-y@ct200", "acme")} {
		id, _ := meshauth.AgentID(p)
		if _, err := heartbeat(t, r, p, `{"agent_id":"`+id+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := heartbeat(t, r, nil, `{"agent_id":"anon"}`); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"acme-x": "", "acme-y": "ct200", "anon": "", "opus": "ct666"}
	for _, v := range r.List(Filter{}) {
		v.CertificateExpiration = nil // the test certificates outlive JSON's years
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var fields map[string]any
		if err := json.Unmarshal(raw, &fields); err != nil {
			t.Fatal(err)
		}
		node, _ := fields["node"].(string)
		if node != want[v.ID] {
			t.Errorf("%s is listed with node %q, want %q: %s", v.ID, node, want[v.ID], raw)
		}
	}
}

// TestUnboundSourceBindsOnNextHeartbeat: a record stored before sources
// were kept is bound, with an audit entry, to the source of its owner's
// next heartbeat, and from then on refuses the others.
func TestUnboundSourceBindsOnNextHeartbeat(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	at := time.Unix(1_700_000_000, 0)
	st.agents["opus"] = store.Agent{ID: "opus", Owner: "opus@ct111", Payload: []byte(`{"agent_id":"opus"}`),
		CertFingerprint: "fp-old", Status: StatusHealthy, RegisteredAt: at, LastSeen: at, Version: 3}
	c := newClock()
	r := newRegistry(t, st, c)
	owner := peerFrom(t, "opus@ct111", "", "localca")
	if _, err := r.heartbeatBody(ctx, owner, []byte(`{"agent_id":"opus"}`)); err != nil {
		t.Fatalf("the owner's first heartbeat after the upgrade: %v", err)
	}
	if got := st.agents["opus"]; got.Source != "localca" || got.Owner != "opus@ct111" || !got.RegisteredAt.Equal(at) || got.Version != 4 {
		t.Fatalf("stored record after the heartbeat: %+v, want bound to localca, registered at %v, version 4", got, at)
	}
	checkAudit(t, "after binding the source", st, []store.AuditEntry{{Time: c.Now(), Action: "agent.claim", Identity: "opus", Outcome: store.OutcomeOK,
		Detail: `owner "opus@ct111" (node ct111), the mesh's own CA, trust source "localca" (bound to a record kept without a source)`}})
	if _, err := r.heartbeatBody(ctx, peerFrom(t, "opus@ct111", "", "filestore"), []byte(`{"agent_id":"opus"}`)); ReasonOf(err) != "owned_by_other_source" {
		t.Fatalf("another source after the binding: %v, want owned_by_other_source", err)
	}
	if _, err := r.heartbeatBody(ctx, owner, []byte(`{"agent_id":"opus"}`)); err != nil || len(st.auditLog()) != 1 {
		t.Fatalf("the owner's next heartbeat: %v, %d audit entries, want 1", err, len(st.auditLog()))
	}
}

// TestRelease: an operator frees an agent id claimed from the wrong node,
// audited with the owner it had, and the right node claims it.
func TestRelease(t *testing.T) {
	ctx := context.Background()
	r, st, c := newTestRegistry(t)
	squatter, rightful := peer(t, "opus@ct666", ""), peer(t, "opus@ct111", "")
	if _, err := heartbeat(t, r, squatter, `{"agent_id":"opus"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := heartbeat(t, r, rightful, `{"agent_id":"opus"}`); ReasonOf(err) != "owned_by_other" {
		t.Fatalf("the rightful node before the release: %v, want owned_by_other", err)
	}
	if err := r.Release(ctx, "opus", "operator (admin socket)"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := r.Release(ctx, "opus", "operator (admin socket)"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Release of an id no longer registered: %v, want ErrUnknown", err)
	}
	if _, err := heartbeat(t, r, rightful, `{"agent_id":"opus"}`); err != nil {
		t.Fatalf("the rightful node after the release: %v", err)
	}
	if v := r.List(Filter{}); len(v) != 1 || v[0].Owner != "opus@ct111" || v[0].Node != "ct111" {
		t.Fatalf("agents after the release: %+v", v)
	}
	claim := func(node string) store.AuditEntry {
		return store.AuditEntry{Time: c.Now(), Action: "agent.claim", Identity: "opus", Outcome: store.OutcomeOK,
			Detail: `owner "opus@` + node + `" (node ` + node + `), the mesh's own CA, trust source "localca"`}
	}
	checkAudit(t, "after the release", st, []store.AuditEntry{
		claim("ct666"),
		{Time: c.Now(), Action: "agent.release", Identity: "opus", Outcome: store.OutcomeOK,
			Detail: `by operator (admin socket); it was held by owner "opus@ct666" (node ct666), the mesh's own CA, trust source "localca"`},
		claim("ct111"),
	})
}

// TestClaimAcrossReplicas: two registries on one store (two meshd
// replicas) cannot grant one agent id to different owners. The second
// registry has not heard of the first's claim; the store's conditional
// claim refuses it, and it keeps no entry.
func TestClaimAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c := newClock()
	a, b := newRegistry(t, st, c), newRegistry(t, st, c)
	body := []byte(`{"agent_id":"opus","http_port":9000}`)
	if _, err := a.heartbeatBody(ctx, peer(t, "opus@ct111", ""), body); err != nil {
		t.Fatal(err)
	}
	_, err := b.heartbeatBody(ctx, peer(t, "opus@ct112", ""), body)
	if !errors.Is(err, ErrForbidden) || ReasonOf(err) != "owned_by_other" {
		t.Fatalf("a second owner's claim through another replica: %v, want owned_by_other", err)
	}
	if b.Len() != 0 {
		t.Errorf("the refusing replica holds %d agents, want none", b.Len())
	}
	got, _ := st.Agents(ctx)
	if len(got) != 1 || got[0].Owner != "opus@ct111" {
		t.Errorf("stored %+v, want the first owner's record alone", got)
	}
	if log := st.auditLog(); len(log) != 1 {
		t.Errorf("%d audit entries, want the one winning claim", len(log))
	}
}
