// Command revlat measures meshd's revocation-to-refusal latency: how long
// from an operator revoking an agent's certificate until that agent, which
// holds an open keep-alive mTLS connection, observes that it is refused.
//
// It runs meshd in-process (server.New and Start over a fresh mesh CA in a
// temporary directory, as meshd --dev sets it up), registers -agents agents,
// each on its own connection, and then, one agent at a time:
//
//	t0 := now
//	revoke the agent's certificate
//	t1 := the moment the agent observes refusal
//
// Three paths are measured, each with its own agents:
//
//   - admin/read: POST /admin/revoke on meshd's admin unix socket while
//     the agent is blocked reading its idle connection; t1 is when the read
//     fails (meshd closed the connection).
//   - admin/request: the same revocation while the agent sends heartbeats
//     back to back on its connection; t1 is the first 403 with reason
//     "revoked" or the connection closing, whichever comes first.
//   - offline/read: the revocation is written to the CA's store through a
//     second store handle (ca.Open + Revoke, as `meshctl ca revoke` does
//     without --data-dir), and meshd notices it on its revocation poll.
//
// Baselines from the same run: the round trip of a no-op admin request
// (GET /health on the socket), of an unchanged heartbeat on an agent's open
// connection, and of one durable store write (an audit entry: one group
// commit with fsync).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/database"
)

// refusalTimeout bounds the wait for one agent's refusal.
const refusalTimeout = 5 * time.Second

// target is the bound on p99 revocation-to-refusal latency.
const target = 250 * time.Millisecond

type options struct {
	agents      int
	payloadFile string
	jsonOut     bool
	keep        bool
	poll        time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.agents, "agents", 100, "agents per path")
	flag.StringVar(&o.payloadFile, "payload", "bench/mcpmesh/heartbeat.json", "heartbeat JSON (agent_id is replaced)")
	flag.BoolVar(&o.jsonOut, "json", false, "print one JSON line")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	flag.DurationVar(&o.poll, "poll", 0, "meshd's revocation poll interval (0: meshd's default, 100ms)")
	flag.Parse()
	benchmesh.Main("revlat", 4*time.Minute, func(ctx context.Context) error { return run(ctx, o) })
}

// Path is the outcome of one revocation path.
type Path struct {
	// Refused is t0 to the agent observing refusal.
	Refused benchmesh.Stats `json:"refused"`
	// Revoked is t0 to the revocation call returning: the admin API's
	// answer, or the offline Revoke's commit.
	Revoked benchmesh.Stats `json:"revoked"`
	// NotEvicted counts revoked agents the registry does not show as
	// evicted once the path is done.
	NotEvicted []string `json:"not_evicted,omitempty"`
}

// Report is revlat's output.
type Report struct {
	Agents int `json:"agents"`
	// Paths are revocation-to-refusal latencies by path.
	Paths map[string]Path `json:"paths"`
	// Baselines, measured in the same run.
	AdminNoop  benchmesh.Stats `json:"baseline_admin_noop"`
	Heartbeat  benchmesh.Stats `json:"baseline_heartbeat"`
	StoreWrite benchmesh.Stats `json:"baseline_store_write"`
	PollMs     float64         `json:"poll_ms"`
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "revlat-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "revlat: keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	payload, err := os.ReadFile(o.payloadFile)
	if err != nil {
		return err
	}
	m, err := startMesh(ctx, dir, o)
	if err != nil {
		return err
	}
	defer m.close()

	rep := Report{Agents: o.agents, Paths: map[string]Path{}, PollMs: float64(m.poll.Microseconds()) / 1000}
	paths := []struct {
		name    string
		revoke  func(context.Context, *agentConn) (time.Duration, error)
		observe func(*agentConn) <-chan time.Time
	}{
		{"admin/read", m.revokeAdmin, (*agentConn).awaitClose},
		{"admin/request", m.revokeAdmin, (*agentConn).hammer},
		{"offline/read", m.revokeOffline, (*agentConn).awaitClose},
	}
	for pi, p := range paths {
		agents, err := m.connectAgents(ctx, fmt.Sprintf("rev%d-agent", pi+1), o.agents, payload)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		if pi == 0 {
			// Baselines, on the first set of agents before any revocation.
			if rep.Heartbeat, err = m.heartbeatBaseline(agents); err != nil {
				return err
			}
			if rep.AdminNoop, err = m.adminBaseline(ctx); err != nil {
				return err
			}
			if rep.StoreWrite, err = m.storeBaseline(ctx); err != nil {
				return err
			}
		}
		var lats, revoked []time.Duration
		failed := 0
		for _, a := range agents {
			if strings.HasPrefix(p.name, "offline/") {
				// A random phase against meshd's poll ticker; without it
				// the loop locks onto the ticker and measures one phase.
				time.Sleep(rand.N(m.poll))
			}
			seen := p.observe(a)
			t0 := time.Now()
			took, err := p.revoke(ctx, a)
			if err != nil {
				return fmt.Errorf("%s: revoke %s: %w", p.name, a.id, err)
			}
			revoked = append(revoked, took)
			select {
			case t1 := <-seen:
				lats = append(lats, t1.Sub(t0))
			case <-time.After(refusalTimeout):
				failed++
			}
			a.close()
		}
		res := Path{Refused: benchmesh.Summarize(lats, failed), Revoked: benchmesh.Summarize(revoked, 0)}
		if res.NotEvicted, err = m.notEvicted(ctx, agents); err != nil {
			return err
		}
		rep.Paths[p.name] = res
	}

	if o.jsonOut {
		return json.NewEncoder(os.Stdout).Encode(rep)
	}
	fmt.Printf("revocation-to-refusal over %d agents per path (meshd in-process, poll %v)\n", o.agents, m.poll)
	for _, p := range paths {
		r := rep.Paths[p.name]
		s := r.Refused
		verdict := "met"
		if s.Failed > 0 || s.N == 0 || s.P99 >= benchmesh.Millis(target) {
			verdict = "MISSED"
		}
		fmt.Printf("  %-14s refused p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (n=%d failed=%d; target p99 < %v: %s); revocation call returned p50 %.2f ms p99 %.2f ms\n",
			p.name, s.P50, s.P99, s.Max, s.N, s.Failed, target, verdict, r.Revoked.P50, r.Revoked.P99)
		if len(r.NotEvicted) > 0 {
			fmt.Printf("  %-14s WARNING: %d revoked agent(s) not evicted afterwards: %v\n", p.name, len(r.NotEvicted), r.NotEvicted)
		}
	}
	fmt.Printf("baselines: admin no-op p50 %.3f ms, heartbeat p50 %.3f ms, durable store write p50 %.3f ms (p99 %.3f)\n",
		rep.AdminNoop.P50, rep.Heartbeat.P50, rep.StoreWrite.P50, rep.StoreWrite.P99)
	return nil
}

// mesh is an in-process meshd, plus a second handle on its CA's store for
// the offline path.
type mesh struct {
	*benchmesh.Mesh
	poll time.Duration

	offlineStore store.Store
	offlineCA    *ca.CA
}

func startMesh(ctx context.Context, dir string, o options) (*mesh, error) {
	m := &mesh{poll: o.poll}
	if m.poll == 0 {
		m.poll = 100 * time.Millisecond
	}
	var err error
	if m.Mesh, err = benchmesh.Start(ctx, dir, benchmesh.Config{RevocationPoll: m.poll}); err != nil {
		return nil, err
	}
	// The offline path: another handle on the same store file, as a
	// separate meshctl process would open it.
	cfg := m.CA.Config()
	if m.offlineStore, err = database.Open(ctx, cfg.Dir, "", database.Options{}); err == nil {
		m.offlineCA, err = ca.Open(ctx, cfg, m.offlineStore)
	}
	if err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

func (m *mesh) close() {
	m.Mesh.Close()
	if m.offlineStore != nil {
		m.offlineStore.Close()
	}
}

// agentConn is a registered agent and its open connection.
type agentConn struct {
	id, serial string
	conn       *tls.Conn
	br         *bufio.Reader
	req        []byte
}

// connectAgents issues n agent certificates on node "bench", opens one
// connection per agent and registers each with one POST /heartbeat.
func (m *mesh) connectAgents(ctx context.Context, prefix string, n int, payload []byte) ([]*agentConn, error) {
	var doc map[string]any
	if err := json.Unmarshal(payload, &doc); err != nil {
		return nil, err
	}
	out := make([]*agentConn, 0, n)
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		is, err := m.CA.Sign(ctx, ca.AgentRequest(id, "bench"), ca.WithGeneratedKey())
		if err != nil {
			return nil, err
		}
		cn := is.Cert.Subject.CommonName
		cert, err := tls.LoadX509KeyPair(m.CA.Config().IssuedCertPath(cn), m.CA.Config().IssuedKeyPath(cn))
		if err != nil {
			return nil, err
		}
		c, err := tls.Dial("tcp", m.Addr(), &tls.Config{RootCAs: m.Roots, Certificates: []tls.Certificate{cert},
			ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}})
		if err != nil {
			return nil, err
		}
		doc["agent_id"] = id
		body, err := json.Marshal(doc)
		if err != nil {
			return nil, err
		}
		req := fmt.Appendf(nil, "POST /heartbeat HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", m.Addr(), len(body), body)
		a := &agentConn{id: id, serial: is.Record.Serial, conn: c, br: bufio.NewReader(c), req: req}
		code, rbody, err := a.roundTrip()
		if err != nil {
			return nil, fmt.Errorf("register %s: %w", id, err)
		}
		if code != http.StatusOK || !bytes.Contains(rbody, []byte(`"status":"success"`)) {
			return nil, fmt.Errorf("register %s: %d %s", id, code, rbody)
		}
		out = append(out, a)
	}
	return out, nil
}

func (a *agentConn) roundTrip() (int, []byte, error) {
	a.conn.SetDeadline(time.Now().Add(refusalTimeout))
	defer a.conn.SetDeadline(time.Time{})
	if _, err := a.conn.Write(a.req); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(a.br, nil)
	if err != nil {
		return 0, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, body, err
}

// awaitClose blocks reading the idle connection; meshd sends nothing on
// it unless it closes it, so the read ending is the refusal.
func (a *agentConn) awaitClose() <-chan time.Time {
	seen := make(chan time.Time, 1)
	a.conn.SetReadDeadline(time.Now().Add(refusalTimeout + time.Second))
	go func() {
		var buf [1]byte
		_, err := a.br.Read(buf[:])
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			seen <- time.Now()
		}
	}()
	return seen
}

// hammer sends heartbeats back to back until one is refused as revoked or
// the connection is closed.
func (a *agentConn) hammer() <-chan time.Time {
	seen := make(chan time.Time, 1)
	go func() {
		stop := time.Now().Add(refusalTimeout + time.Second)
		for time.Now().Before(stop) {
			code, body, err := a.roundTrip()
			if err != nil || (code == http.StatusForbidden && bytes.Contains(body, []byte(`"reason":"revoked"`))) {
				seen <- time.Now()
				return
			}
		}
	}()
	return seen
}

func (a *agentConn) close() { a.conn.NetConn().Close() }

// notEvicted returns the agents the registry does not show as evicted,
// after letting requests still in flight finish.
func (m *mesh) notEvicted(ctx context.Context, agents []*agentConn) ([]string, error) {
	time.Sleep(300 * time.Millisecond)
	views, err := m.Agents(ctx)
	if err != nil {
		return nil, err
	}
	status := map[string]string{}
	for _, v := range views {
		status[v.ID] = v.Status
	}
	var out []string
	for _, a := range agents {
		if s := status[a.id]; s != registry.StatusEvicted {
			out = append(out, a.id+"="+s)
		}
	}
	return out, nil
}

// revokeAdmin revokes a's certificate through meshd's admin API and
// returns how long the API took to answer.
func (m *mesh) revokeAdmin(ctx context.Context, a *agentConn) (time.Duration, error) {
	t0 := time.Now()
	err := m.Revoke(ctx, a.serial)
	return time.Since(t0), err
}

// revokeOffline revokes a's certificate in the store only, through a
// second CA handle; meshd learns of it by polling.
func (m *mesh) revokeOffline(ctx context.Context, a *agentConn) (time.Duration, error) {
	t0 := time.Now()
	_, err := m.offlineCA.Revoke(ctx, a.serial, 1) // keyCompromise
	return time.Since(t0), err
}

const baselineRounds = 200

func (m *mesh) heartbeatBaseline(agents []*agentConn) (benchmesh.Stats, error) {
	var d []time.Duration
	for i := range baselineRounds {
		a := agents[i%len(agents)]
		t0 := time.Now()
		code, _, err := a.roundTrip()
		if err != nil || code != http.StatusOK {
			return benchmesh.Stats{}, fmt.Errorf("baseline heartbeat: %d %v", code, err)
		}
		d = append(d, time.Since(t0))
	}
	return benchmesh.Summarize(d, 0), nil
}

func (m *mesh) adminBaseline(ctx context.Context) (benchmesh.Stats, error) {
	var d []time.Duration
	for range baselineRounds {
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://meshd/health", nil)
		resp, err := m.Admin.Do(req)
		if err != nil {
			return benchmesh.Stats{}, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d = append(d, time.Since(t0))
	}
	return benchmesh.Summarize(d, 0), nil
}

func (m *mesh) storeBaseline(ctx context.Context) (benchmesh.Stats, error) {
	var d []time.Duration
	for range baselineRounds / 4 {
		t0 := time.Now()
		if err := m.Store.Append(ctx, store.AuditEntry{Time: time.Now(), Action: "bench.noop", Outcome: store.OutcomeOK}); err != nil {
			return benchmesh.Stats{}, err
		}
		d = append(d, time.Since(t0))
	}
	return benchmesh.Summarize(d, 0), nil
}
