package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
)

// linkStore is a replica's store (it has Wake, as PostgreSQL's has) whose
// change feed the test can cut off, as a network partition would: every
// read of it fails while cut.
type linkStore struct {
	server.Store
	wake chan struct{}
	cut  atomic.Bool
}

func (l *linkStore) Wake() <-chan struct{} { return l.wake }

func (l *linkStore) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	if l.cut.Load() {
		return nil, fmt.Errorf("%w: the test cut the replica's link", store.ErrUnavailable)
	}
	return l.Store.Events(ctx, after, limit)
}

// TestE2EStalenessGate: a replica whose change feed cannot read the store
// keeps answering the heartbeats of agents it knows (POST unchanged,
// HEAD) and GET /agents within its staleness bound, refuses at once what
// must be written (a registration, issuance, enrollment) with 503
// store_unreachable, and past the bound refuses those too with 503
// replica_stale, Retry-After and a message naming the bound; /health
// says degraded. Once the feed reads the store again it serves again.
// meshd's clock is moved past the bound, not waited for; the gate's
// verdict follows at its next tick.
func TestE2EStalenessGate(t *testing.T) {
	link := &linkStore{wake: make(chan struct{})}
	var skew atomic.Int64 // added to meshd's clock
	const bound = 30 * time.Second
	e := newEnv(t, envOptions{mode: server.TLSStrict,
		store: func(st server.Store) server.Store { link.Store = st; return link },
		configure: func(c *meshd.Config) {
			c.StalenessBound = bound
			c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		}})
	opusCert, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	watchCert, _ := agentCert(t, e.ca.auth, "watch", "ct111")
	if _, err := e.ca.auth.Sign(context.Background(), ca.NodeRequest("ct111"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	nodeCert, err := tls.LoadX509KeyPair(e.ca.cfg.IssuedCertPath("ct111.mesh"), e.ca.cfg.IssuedKeyPath("ct111.mesh"))
	if err != nil {
		t.Fatal(err)
	}
	opus, watch, node := e.client(&opusCert), e.client(&watchCert), e.client(&nodeCert)
	hb := heartbeat("opus", 9000)
	if r := e.do(opus, "POST", "/heartbeat", hb); r.code != http.StatusOK {
		t.Fatalf("opus registers: %s", r)
	}
	if got := e.metrics()["meshd_change_feed_staleness_bound_seconds"]; got != bound.Seconds() {
		t.Errorf("meshd_change_feed_staleness_bound_seconds = %v, want %v", got, bound.Seconds())
	}

	link.cut.Store(true)
	health := func() map[string]any { return e.do(opus, "GET", "/health", nil).json(t) }
	eventually.NoError(t, "/health reports the store unreachable", func() error {
		if h := health(); h["status"] != "degraded" || !strings.Contains(fmt.Sprint(h["degraded"]), server.ReasonStoreUnreachable) {
			return fmt.Errorf("/health: %v", h)
		}
		return nil
	})
	// Within the bound: what this replica knows is served from memory.
	if r := e.do(opus, "POST", "/heartbeat", hb); r.code != http.StatusOK {
		t.Errorf("opus's unchanged heartbeat within the bound: %s, want 200", r)
	}
	if r := e.do(opus, "HEAD", "/heartbeat/opus", nil); r.code != http.StatusOK {
		t.Errorf("opus's HEAD within the bound: %s, want 200", r)
	}
	if r := e.do(opus, "GET", "/agents", nil); r.code != http.StatusOK {
		t.Errorf("GET /agents within the bound: %s, want 200", r)
	}
	// What must be written is refused at once, and nothing is written.
	for _, c := range []struct {
		name   string
		client *http.Client
		method string
		path   string
		body   any
	}{
		{"a new agent's registration", watch, "POST", "/heartbeat", heartbeat("watch", 9001)},
		{"a changed registration", opus, "POST", "/heartbeat", heartbeat("opus", 9002)},
		{"issuance", node, "POST", "/agent-cert", map[string]string{"agent_id": "new", "csr": "x"}},
		{"enrollment", e.freshClient(nil), "POST", "/enroll", map[string]string{"node_id": "ct9", "csr": "x"}},
		{"a deletion", opus, "DELETE", "/agents/opus", nil},
	} {
		r := e.do(c.client, c.method, c.path, c.body)
		if r.code != http.StatusServiceUnavailable || r.reason() != server.ReasonStoreUnreachable || r.header.Get("Retry-After") == "" {
			t.Errorf("%s with the store unreachable: %s (Retry-After %q), want 503 %s", c.name, r, r.header.Get("Retry-After"), server.ReasonStoreUnreachable)
		}
	}
	if n := e.certCount("new@ct111"); n != 0 {
		t.Errorf("the refused issuance recorded %d certificates", n)
	}

	// Past the bound: nothing that depends on revocation state is served.
	skew.Store(int64(bound + time.Second))
	eventually.NoError(t, "opus's HEAD refused past the bound", func() error {
		if r := e.do(opus, "HEAD", "/heartbeat/opus", nil); r.code != http.StatusServiceUnavailable {
			return fmt.Errorf("%s", r)
		}
		return nil
	})
	for _, c := range []struct {
		method, path string
		body         any
	}{{"POST", "/heartbeat", hb}, {"HEAD", "/heartbeat/opus", nil}, {"GET", "/agents", nil}, {"GET", "/revocations/watch", nil}, {"POST", "/agent-cert", map[string]string{}}} {
		r := e.do(opus, c.method, c.path, c.body)
		if r.code != http.StatusServiceUnavailable || r.reason() != server.ReasonReplicaStale || r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s past the bound: %s (Retry-After %q), want 503 %s", c.method, c.path, r, r.header.Get("Retry-After"), server.ReasonReplicaStale)
		}
		if c.method == "POST" && !strings.Contains(string(r.body), "--staleness-bound "+bound.String()) {
			t.Errorf("%s %s past the bound says %s; want it to name the bound", c.method, c.path, r.body)
		}
	}
	if h := health(); h["status"] != "degraded" || !strings.Contains(fmt.Sprint(h["degraded"]), server.ReasonReplicaStale) {
		t.Errorf("/health past the bound: %v, want degraded, %s", h, server.ReasonReplicaStale)
	}
	if got := e.metrics()["meshd_change_feed_staleness_seconds"]; got <= bound.Seconds() {
		t.Errorf("meshd_change_feed_staleness_seconds = %v past the bound, want above %v", got, bound.Seconds())
	}

	// The link returns: the next read makes the replica current again.
	link.cut.Store(false)
	eventually.NoError(t, "opus's HEAD once the store is read again", func() error {
		if r := e.do(opus, "HEAD", "/heartbeat/opus", nil); r.code != http.StatusOK {
			return fmt.Errorf("%s", r)
		}
		return nil
	})
	if h := health(); h["status"] != "healthy" {
		t.Errorf("/health once current: %v", h)
	}
	if r := e.do(watch, "POST", "/heartbeat", heartbeat("watch", 9001)); r.code != http.StatusOK {
		t.Errorf("a new agent's registration once current: %s", r)
	}
}

// TestE2ESQLiteNeverStale: one meshd on SQLite has no staleness gate: its
// clock far past any bound, it serves as before.
func TestE2ESQLiteNeverStale(t *testing.T) {
	var skew atomic.Int64
	e := newEnv(t, envOptions{mode: server.TLSStrict, configure: func(c *meshd.Config) {
		c.StalenessBound = time.Second
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	}})
	opusCert, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	opus := e.client(&opusCert)
	if r := e.do(opus, "POST", "/heartbeat", heartbeat("opus", 9000)); r.code != http.StatusOK {
		t.Fatalf("opus registers: %s", r)
	}
	skew.Store(int64(time.Hour))
	if r := e.do(opus, "HEAD", "/heartbeat/opus", nil); r.code != http.StatusOK {
		t.Errorf("HEAD on SQLite with the clock an hour on: %s, want 200", r)
	}
	if h := e.do(opus, "GET", "/health", nil).json(t); h["status"] != "healthy" {
		t.Errorf("/health on SQLite: %v", h)
	}
}

// BenchmarkHeartbeatGate: HEAD /heartbeat/{id} over one keep-alive mTLS
// connection, on a meshd without the staleness gate (SQLite, one
// process) and on one with it (a replica's store), in one run: the gate's
// one atomic load against the whole request.
func BenchmarkHeartbeatGate(b *testing.B) {
	for _, c := range []struct {
		name    string
		replica bool
	}{{"ungated", false}, {"gated", true}, {"ungated-again", false}, {"gated-again", true}} {
		b.Run(c.name, func(b *testing.B) {
			o := envOptions{mode: server.TLSStrict}
			if c.replica {
				o.store = func(st server.Store) server.Store { return &linkStore{Store: st, wake: make(chan struct{})} }
			}
			e := newEnv(b, o)
			cert, _ := agentCert(b, e.ca.auth, "opus", "ct111")
			cl := e.client(&cert)
			if r := e.do(cl, "POST", "/heartbeat", heartbeat("opus", 9000)); r.code != http.StatusOK {
				b.Fatalf("register: %s", r)
			}
			u := e.baseURL() + "/heartbeat/opus"
			b.ResetTimer()
			for b.Loop() {
				resp, err := cl.Head(u)
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("HEAD: %v %v", resp, err)
				}
				resp.Body.Close()
			}
		})
	}
}
