package server_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
)

// clientFrom returns an agent-port client without a certificate whose
// connections leave from the loopback address local (127.0.0.2, say):
// another source to meshd than 127.0.0.1.
func (e *env) clientFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(nil), DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// agentAuditRows counts the audit entries about agent ids after seq.
func (e *env) agentAuditRows(after int64) int {
	e.t.Helper()
	n := 0
	for _, a := range e.audit() {
		if a.Seq > after && strings.HasPrefix(a.Action, "agent.") {
			n++
		}
	}
	return n
}

// TestHostileCertlessBounded: in TLS mode auto, what callers without a
// certificate can make meshd hold is bounded. A create-and-delete loop
// from one address costs at most two audit rows per new id the rate
// allows; one address registers at most its number of agents, all
// addresses together the total; a large payload is refused with 413 and
// a large body is not even read; agents silent past the expiry are
// deleted from memory and the store; and an agent with a certificate is
// served throughout. Every refusal is counted by reason.
func TestHostileCertlessBounded(t *testing.T) {
	clock := &fakeClock{}
	e := newEnv(t, envOptions{mode: server.TLSAuto, configure: func(c *meshd.Config) {
		c.Now = clock.Now
		c.Certless = server.CertlessLimits{MaxAgents: 6, MaxAgentsPerSource: 4, MaxPayload: 4096,
			Expiry: time.Minute, NewInterval: time.Hour, NewGlobalInterval: time.Second}
	}})
	anon := e.client(nil)

	// A create-and-delete loop: the rate of new ids (a burst of 4 per
	// address, then one an hour) bounds the audit rows it writes.
	seq := e.auditSeq()
	created, rated := 0, 0
	for i := range 30 {
		id := fmt.Sprint("churn-", i)
		r := e.do(anon, "POST", "/heartbeat", heartbeat(id, 9000))
		switch {
		case r.code == http.StatusOK:
			created++
			if d := e.do(anon, "DELETE", "/agents/"+id, nil); d.code != http.StatusNoContent {
				t.Fatalf("certless DELETE of %s: %s", id, d)
			}
		case r.code == http.StatusTooManyRequests && r.reason() == "certless_rate" && r.header.Get("Retry-After") != "":
			rated++
		default:
			t.Fatalf("certless POST /heartbeat %s in the churn loop: %s", id, r)
		}
	}
	if created != 4 || rated != 26 {
		t.Errorf("churn loop: %d created, %d refused by the rate; want 4 and 26", created, rated)
	}
	if n := e.agentAuditRows(seq); n > 2*created {
		t.Errorf("30 create-and-delete cycles wrote %d agent audit rows, want at most %d", n, 2*created)
	}

	// A refilled rate: one address registers at most 4 agents.
	clock.advance(5 * time.Hour)
	for i := range 10 {
		id := fmt.Sprint("flood-", i)
		r := e.do(anon, "POST", "/heartbeat", heartbeat(id, 9000))
		if i < 4 && r.code != http.StatusOK {
			t.Fatalf("certless agent %d of 4: %s", i+1, r)
		}
		if i >= 4 && (r.code != http.StatusTooManyRequests || r.reason() != "certless_source_agents") {
			t.Errorf("certless agent %d from one address: %s, want 429 certless_source_agents", i+1, r)
		}
	}
	// Another address: two more, then the total of 6 refuses.
	other := e.clientFrom("127.0.0.2")
	for i := range 3 {
		id := fmt.Sprint("other-", i)
		r := e.do(other, "POST", "/heartbeat", heartbeat(id, 9000))
		if i < 2 && r.code != http.StatusOK {
			t.Fatalf("certless agent %d from 127.0.0.2: %s", i+1, r)
		}
		if i == 2 && (r.code != http.StatusTooManyRequests || r.reason() != "certless_agents") {
			t.Errorf("a 7th certless agent in all: %s, want 429 certless_agents", r)
		}
	}

	// Large payloads: refused with 413, a body past twice the bound
	// unread, and nothing registered.
	big := heartbeat("flood-0", 9000)
	big["description"] = strings.Repeat("x", 6000)
	if r := e.do(anon, "POST", "/heartbeat", big); r.code != http.StatusRequestEntityTooLarge || r.reason() != "certless_payload" {
		t.Errorf("a 6 kB certless payload: %s, want 413 certless_payload", r)
	}
	huge := heartbeat("huge", 9000)
	huge["description"] = strings.Repeat("x", 100<<10)
	if r := e.do(e.freshClient(nil), "POST", "/heartbeat", huge); r.code != http.StatusRequestEntityTooLarge || r.reason() != "certless_payload" {
		t.Errorf("a 100 KiB certless body: %s, want 413 certless_payload", r)
	}

	// A certificate's agent is served while the certless bounds are full.
	c := e.registeredAgent("a1", "n1", 9100)
	if got := len(e.agents(c, "").Agents); got != 7 {
		t.Errorf("GET /agents lists %d agents, want 6 certless and a1", got)
	}
	m := e.metrics()
	for k, want := range map[string]float64{
		"meshd_unauthenticated_agents":                                          6,
		`meshd_unauthenticated_refusals_total{reason="certless_rate"}`:          26,
		`meshd_unauthenticated_refusals_total{reason="certless_source_agents"}`: 6,
		`meshd_unauthenticated_refusals_total{reason="certless_agents"}`:        1,
		`meshd_unauthenticated_refusals_total{reason="certless_payload"}`:       2,
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if m["meshd_unauthenticated_agent_bytes"] <= 0 {
		t.Errorf("meshd_unauthenticated_agent_bytes = %v", m["meshd_unauthenticated_agent_bytes"])
	}

	// Silent past the expiry, the certless agents are deleted from memory
	// and the store; a1 (a certificate's) is kept, and heartbeats.
	seq = e.auditSeq()
	clock.advance(2 * time.Minute)
	if r := e.do(c, "POST", "/heartbeat", heartbeat("a1", 9100)); r.code != http.StatusOK {
		t.Fatalf("a1's heartbeat: %s", r)
	}
	eventually.True(t, "the certless agents expire", func() bool { return e.metrics()["meshd_agents"] == 1 })
	l := e.agents(c, "")
	if ids := l.ids(); len(ids) != 1 || ids[0] != "a1" {
		t.Fatalf("agents after the certless expiry: %v, want a1 alone", ids)
	}
	stored, err := e.ca.st.Agents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || stored[0].ID != "a1" {
		t.Errorf("the store holds %d agents after the expiry, want a1 alone", len(stored))
	}
	if got := len(e.audited(seq, "agent.expire", store.OutcomeOK, "without a certificate")); got != 6 {
		t.Errorf("%d agent.expire audit entries, want 6", got)
	}
	if got := e.metrics()["meshd_unauthenticated_agents"]; got != 0 {
		t.Errorf("meshd_unauthenticated_agents = %v after the expiry", got)
	}
	// Room again: an address registers anew (its rate refilled).
	clock.advance(5 * time.Hour)
	if r := e.do(anon, "POST", "/heartbeat", heartbeat("flood-0", 9000)); r.code != http.StatusOK {
		t.Errorf("a certless agent once the others expired: %s", r)
	}
}
