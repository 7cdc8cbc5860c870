package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/agent"
	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/meshapi"
)

// running is an Agent whose Run runs on its own goroutine.
type running struct {
	*agent.Agent
	regs   chan agent.Registered
	done   chan error
	cancel context.CancelFunc
}

// start runs an agent of src against url. clk nil means the system clock;
// edit changes the configuration first. When the test ends the agent is
// stopped, and its log is checked for key material.
func start(t *testing.T, url string, src credentials.Source, clk credentials.Clock, edit func(*agent.Config)) *running {
	t.Helper()
	logs := &logtest.Buffer{}
	r := &running{regs: make(chan agent.Registered, 100), done: make(chan error, 1)}
	cfg := agent.Config{
		RegistryURL: url, AgentID: "opus", Source: src, Clock: clk,
		Registration: meshapi.Registration{HTTPHost: "127.0.0.1", HTTPPort: 9443},
		OnRegister:   func(a agent.Registered) { r.regs <- a },
		Logger:       slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if edit != nil {
		edit(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Agent = a
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(wait):
			t.Error("Run did not return after its context ended")
		}
		if s := logs.String(); strings.Contains(s, "PRIVATE KEY") || strings.Contains(s, "BEGIN") {
			t.Errorf("the agent logged key or certificate material:\n%s", s)
		}
	})
	return r
}

// registered returns the next registration meshd accepted.
func (r *running) registered(t *testing.T) agent.Registered {
	t.Helper()
	select {
	case a := <-r.regs:
		return a
	case err := <-r.done:
		t.Fatalf("Run returned before registering: %v", err)
	case <-time.After(wait):
		t.Fatal("no registration")
	}
	return agent.Registered{}
}

// stopped waits for Run to return, letting every wait of clk pass.
func (r *running) stopped(t *testing.T, clk *fakeClock) error {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case err := <-r.done:
			r.done <- err // for the cleanup
			return err
		case d := <-clk.Waits():
			clk.Advance(d)
		case <-deadline:
			t.Fatal("Run did not return")
			return nil
		}
	}
}

func serialOf(c *credentials.Credentials) string { return c.Certificate.Leaf.SerialNumber.Text(16) }

// TestHeartbeatKeepsAgentHealthy: one POST, then HEADs that keep the agent
// healthy well past meshd's heartbeat timeout.
func TestHeartbeatKeepsAgentHealthy(t *testing.T) {
	m := newPKI(t).startMeshd(300 * time.Millisecond)
	r := start(t, m.url, holder(t, m.agent("opus", "ct111")), nil, func(c *agent.Config) { c.HeadInterval = 20 * time.Millisecond })
	first := r.registered(t)
	if first.Rotate || first.Leaf.Subject.CommonName != "opus@ct111" {
		t.Fatalf("first registration: %+v", first)
	}
	select {
	case <-r.Ready():
	default:
		t.Fatal("Ready is not closed after the first registration")
	}
	eventually.True(t, "the agent to stay healthy for five heartbeat timeouts", func() bool {
		a, ok := m.agents()["opus"]
		if !ok || a.Status != "healthy" {
			t.Fatalf("meshd lists the agent as %+v (listed: %v)", a, ok)
		}
		if a.Owner != "opus@ct111" || a.Endpoint != "https://127.0.0.1:9443" {
			t.Fatalf("meshd lists %+v", a)
		}
		return a.LastSeen.Sub(a.CreatedAt) > 1500*time.Millisecond
	})
	if n := len(r.regs); n != 0 {
		t.Fatalf("%d more POSTs after the first; the heartbeats should be HEADs", n)
	}
}

// TestReregistersAfterSilence: meshd marks a silent agent unhealthy, its
// next HEAD gets 410, and it registers again.
func TestReregistersAfterSilence(t *testing.T) {
	m := newPKI(t).startMeshd(300 * time.Millisecond)
	clk := newFakeClock()
	r := start(t, m.url, holder(t, m.agent("opus", "ct111")), clk, nil)
	r.registered(t)
	if d := clk.NextWait(t, wait); d != 5*time.Second {
		t.Fatalf("the agent waits %s, want the default interval 5s", d)
	}
	eventually.True(t, "meshd to mark the silent agent unhealthy", func() bool { return m.agents()["opus"].Status == "unhealthy" })
	clk.Advance(5 * time.Second) // HEAD: 410, then POST
	r.registered(t)
	if s := m.agents()["opus"].Status; s != "healthy" {
		t.Fatalf("after registering again the agent is %q", s)
	}
	if d := clk.NextWait(t, wait); d != 5*time.Second {
		t.Fatalf("after registering again the agent waits %s, want 5s", d)
	}
}

// TestPostsAfterTopologyChange: another agent's arrival makes meshd answer
// the HEAD with 202, and the POST that follows resolves the dependency.
func TestPostsAfterTopologyChange(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	clk := newFakeClock()
	forecast := meshapi.Registration{Tools: []meshapi.Tool{{
		FunctionName: "get_forecast", Capability: "forecast",
		Dependencies: []meshapi.Dependency{{Capability: "geocode"}},
	}}}
	r := start(t, m.url, holder(t, m.agent("opus", "ct111")), clk, func(c *agent.Config) { c.Registration = forecast })
	if got := r.registered(t).Dependencies["get_forecast"]; len(got) != 1 || got[0].Status != "unresolved" {
		t.Fatalf("before the provider registers: %+v", got)
	}
	clk.NextWait(t, wait)

	geo := start(t, m.url, holder(t, m.agent("geo", "ct112")), newFakeClock(), func(c *agent.Config) {
		c.AgentID = "geo"
		c.Registration = meshapi.Registration{HTTPHost: "127.0.0.1", HTTPPort: 9102, Tools: []meshapi.Tool{{FunctionName: "geocode", Capability: "geocode"}}}
	})
	geo.registered(t)

	clk.Advance(5 * time.Second) // HEAD: 202, then POST
	got := r.registered(t).Dependencies["get_forecast"]
	want := meshapi.Resolution{AgentID: "geo", Capability: "geocode", Endpoint: "https://127.0.0.1:9102", FunctionName: "geocode", Status: "available"}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("after the provider registered: %+v, want %+v", got, want)
	}
	if d := r.Dependencies()["get_forecast"]; len(d) != 1 || d[0] != want {
		t.Fatalf("Dependencies() = %+v", d)
	}
}

// rotating is a Source that fetches new credentials when asked.
type rotating struct {
	*credentials.Holder
	rotate func() error
	asked  chan struct{}
}

func (s *rotating) Rotate(context.Context) error {
	s.asked <- struct{}{}
	return s.rotate()
}

// TestRotation: after `entity rotate`, the agent's POST is answered with
// rotate, the agent asks its Source for fresh credentials, and registers
// them; meshd then holds the new certificate and asks for nothing more.
func TestRotation(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	clk := newFakeClock()
	old := m.agent("opus", "ct111")
	var fresh *credentials.Credentials
	src := &rotating{Holder: holder(t, old), asked: make(chan struct{}, 10)}
	src.rotate = func() error {
		fresh = m.agent("opus", "ct111") // renewed, same key
		return src.Set(fresh)
	}
	r := start(t, m.url, src, clk, nil)
	if a := r.registered(t); a.Rotate {
		t.Fatal("the first registration asks for a rotation")
	}
	clk.NextWait(t, wait)
	m.rotate()
	clk.Advance(5 * time.Second) // HEAD: 202, then POST

	asked := r.registered(t)
	if !asked.Rotate || asked.Leaf.SerialNumber.Text(16) != serialOf(old) {
		t.Fatalf("after the rotation: rotate %v with serial %x, want rotate with the old serial %s", asked.Rotate, asked.Leaf.SerialNumber, serialOf(old))
	}
	select {
	case <-src.asked:
	case <-time.After(wait):
		t.Fatal("the agent did not ask its Source to rotate")
	}
	again := r.registered(t)
	if again.Rotate || again.Leaf.SerialNumber.Text(16) != serialOf(fresh) {
		t.Fatalf("with fresh credentials: rotate %v with serial %x, want no rotate with serial %s", again.Rotate, again.Leaf.SerialNumber, serialOf(fresh))
	}
	if got := m.storedSerial("opus"); got != serialOf(fresh) {
		t.Fatalf("meshd holds serial %s, want the fresh %s", got, serialOf(fresh))
	}
	clk.Step(t, wait) // HEAD: 200
	if d := clk.NextWait(t, wait); d != 5*time.Second {
		t.Fatalf("after the rotation the agent waits %s, want 5s", d)
	}
	if len(r.regs) != 0 || len(src.asked) != 0 {
		t.Fatalf("%d more registrations and %d more rotations after the fresh credentials", len(r.regs), len(src.asked))
	}
}

// TestRegistersChangedCredentials: a change of the Source (a renewal, a
// cert-manager rotation) is registered at once, with no HEAD first.
func TestRegistersChangedCredentials(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	clk := newFakeClock()
	src := holder(t, m.agent("opus", "ct111"))
	r := start(t, m.url, src, clk, nil)
	r.registered(t)
	clk.NextWait(t, wait) // waiting for the next HEAD
	fresh := m.agent("opus", "ct111")
	if err := src.Set(fresh); err != nil {
		t.Fatal(err)
	}
	if a := r.registered(t); a.Leaf.SerialNumber.Text(16) != serialOf(fresh) {
		t.Fatalf("registered serial %x, want %s", a.Leaf.SerialNumber, serialOf(fresh))
	}
	if got := m.storedSerial("opus"); got != serialOf(fresh) {
		t.Fatalf("meshd holds serial %s, want %s", got, serialOf(fresh))
	}
}

// TestEviction: revoking the agent's certificate evicts it; Run stops with
// ErrEvicted and leaves the record (meshd's, marked evicted) alone.
func TestEviction(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	clk := newFakeClock()
	creds := m.agent("opus", "ct111")
	r := start(t, m.url, holder(t, creds), clk, nil)
	r.registered(t)
	clk.NextWait(t, wait)
	m.revoke(serialOf(creds))
	clk.Advance(5 * time.Second)
	err := r.stopped(t, clk)
	if !errors.Is(err, agent.ErrEvicted) {
		t.Fatalf("Run: %v, want ErrEvicted", err)
	}
	var ref *agent.Refusal
	if !errors.As(err, &ref) || ref.Status != 403 || ref.Reason != "revoked" || ref.Method != "POST" {
		t.Fatalf("Run: %#v, want a Refusal of POST with 403 revoked", ref)
	}
	if a := m.agents()["opus"]; a.Status != "evicted" {
		t.Fatalf("meshd lists the evicted agent as %+v", a)
	}
}

// TestShutdownDeregisters: when Run's context ends, the agent DELETEs its
// record and Run returns the context's error.
func TestShutdownDeregisters(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	clk := newFakeClock()
	r := start(t, m.url, holder(t, m.agent("opus", "ct111")), clk, nil)
	r.registered(t)
	if _, ok := m.agents()["opus"]; !ok {
		t.Fatal("meshd does not list the registered agent")
	}
	clk.NextWait(t, wait)
	r.cancel()
	if err := r.stopped(t, clk); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
	if a, ok := m.agents()["opus"]; ok {
		t.Fatalf("meshd still lists the agent after shutdown: %+v", a)
	}
}

// TestRejected: a certificate that may not speak for the agent id ends Run
// with ErrRejected, without retrying.
func TestRejected(t *testing.T) {
	m := newPKI(t).startMeshd(0)
	clk := newFakeClock()
	r := start(t, m.url, holder(t, m.agent("other", "ct111")), clk, nil)
	var err error
	select {
	case err = <-r.done:
		r.done <- err
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}
	var ref *agent.Refusal
	if !errors.Is(err, agent.ErrRejected) || !errors.As(err, &ref) || ref.Reason != "identity_mismatch" {
		t.Fatalf("Run: %v, want ErrRejected for identity_mismatch", err)
	}
	if n := len(clk.Waits()); n != 0 {
		t.Fatalf("the agent waited %d times before giving up", n)
	}
	if _, ok := m.agents()["opus"]; ok {
		t.Fatal("meshd lists the rejected agent")
	}
}
