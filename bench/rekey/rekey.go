// Package rekey measures forced re-keying: a fleet of enrolled nodes,
// each with its agents, heartbeating to an in-process meshd over loopback
// TLS, re-keys after the intermediate that issued their certificates is
// tainted. It reports the time from the taint until the last node and
// agent held a certificate of the new intermediate, the p50 and p99 of
// each node's re-key time, the heartbeats refused meanwhile (the target
// is none), and whether the old intermediate then revokes without
// --force (the target is yes: meshd re-issues its own serving
// certificate, the fleet renewed the rest).
//
// The clients are simulated, but every request is meshd's real route:
// agent certificates from POST /agent-cert, registration and heartbeats
// (POST /heartbeat, then HEAD /heartbeat/{id}) each agent over its own
// kept-alive connection with its own certificate, and the re-key through
// POST /renew, the node's call carrying its agents (they piggyback on
// it). A node re-keys at the time meshd's Meshtrust-Renew-After header
// names on its agents' heartbeat answers, as the agent SDK and the
// Renewer do. Node certificates are signed by the CA in process (as
// `meshctl ca issue-node` does): /enroll's rate limits are not what is
// measured.
package rekey

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Config sizes a run. Zero values select the defaults.
type Config struct {
	// Nodes and Agents are the fleet: Nodes nodes of Agents agents each;
	// defaults 1000 and 4.
	Nodes, Agents int
	// Interval is each agent's heartbeat interval; default 1s.
	Interval time.Duration
	// TaintWindow is the CA's: meshd spreads the fleet's renewals over
	// it; default 10s.
	TaintWindow time.Duration
	// Timeout bounds the re-keying after the taint; default
	// TaintWindow + 60s. Past it the run fails, naming what is left.
	Timeout time.Duration
	// Parallel bounds the setup's concurrent requests; default 16.
	Parallel int
}

func (c Config) withDefaults() Config {
	if c.Nodes <= 0 {
		c.Nodes = 1000
	}
	if c.Agents <= 0 {
		c.Agents = 4
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.TaintWindow <= 0 {
		c.TaintWindow = 10 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = c.TaintWindow + time.Minute
	}
	if c.Parallel <= 0 {
		c.Parallel = 16
	}
	return c
}

// Result is what a run measured.
type Result struct {
	Nodes, Agents int
	// Setup is how long enrolling and registering the fleet took.
	Setup time.Duration
	// Last is the time from the taint until the last node and its
	// agents held certificates of the new intermediate; P50 and P99 are
	// of every node's such time.
	Last, P50, P99 time.Duration
	// Heartbeats counts the heartbeats sent from the taint until the
	// last re-key; Refused those meshd refused (any answer but 200, 202
	// and 410, or none at all); Reregistered the 202 and 410 answers,
	// which MCP Mesh's protocol answers with a POST.
	Heartbeats, Refused, Reregistered int64
	// Renewals counts the POST /renew calls, RenewFailed those that
	// failed (and were retried).
	Renewals, RenewFailed int64
	// Rekeyed counts the fleet's certificates (nodes' and agents') that
	// meshd's store holds, live, from the new intermediate afterwards.
	Rekeyed int
	// Revoked says whether revoking the old intermediate without
	// --force (ca.RevokeIntermediate, force false) was accepted once the
	// fleet and meshd's own serving certificate re-keyed; RevokeErr is
	// the refusal when it was not.
	Revoked   bool
	RevokeErr string
}

// String is the result as BENCHMARKS.md quotes it.
func (r Result) String() string {
	revoke := "accepted"
	if !r.Revoked {
		revoke = "refused: " + r.RevokeErr
	}
	return fmt.Sprintf("%d nodes x %d agents: setup %s; after the taint the last re-keyed at %s (p50 %s, p99 %s); %d certificates re-keyed; heartbeats %d, refused %d, re-registered %d; renewals %d (failed %d); revoke of the old intermediate without --force: %s",
		r.Nodes, r.Agents, r.Setup.Round(time.Millisecond), r.Last.Round(time.Millisecond), r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond),
		r.Rekeyed, r.Heartbeats, r.Refused, r.Reregistered, r.Renewals, r.RenewFailed, revoke)
}

// agent is one simulated agent: its certificate and its own kept-alive
// connection to meshd.
type agent struct {
	id   string
	key  crypto.Signer
	cert atomic.Pointer[tls.Certificate]
	hc   *http.Client
	tr   *http.Transport
}

// node is one simulated node.
type node struct {
	id     string
	key    crypto.Signer
	cert   atomic.Pointer[tls.Certificate]
	agents []*agent
	// renewBy is the earliest Meshtrust-Renew-After its agents' answers
	// named (zero: none yet), or the retry after a failed renewal;
	// rekeyed when it re-keyed (zero: not yet); failures how many
	// renewals failed. Its goroutine alone uses them.
	renewBy, rekeyed time.Time
	failures         int
}

// counters are the run's shared counts.
type counters struct {
	heartbeats, refused, rereg, renewals, renewFailed atomic.Int64
}

// Run starts meshd in dir (a fresh directory the caller removes), enrolls
// the fleet, taints the intermediate that issued it and measures the
// re-keying; then, once meshd serves a certificate of the new
// intermediate, revokes the old one without force.
func Run(ctx context.Context, dir string, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	res := Result{Nodes: cfg.Nodes, Agents: cfg.Agents}
	m, err := benchmesh.Start(ctx, dir, benchmesh.Config{
		RevocationPoll: 50 * time.Millisecond, TaintWindow: cfg.TaintWindow,
		AgentCertBurst: 2 * (cfg.Agents + 1), MaxAgentsPerNode: cfg.Agents,
	})
	if err != nil {
		return res, err
	}
	defer m.Close()
	client := &enroll.Client{Server: "https://" + m.Addr(), Roots: m.Roots}
	old := hex.EncodeToString(m.CA.ActiveIntermediate().SubjectKeyId)

	start := time.Now()
	nodes := make([]*node, cfg.Nodes)
	if err := benchmesh.Each(ctx, cfg.Parallel, len(nodes), func(i int) error {
		n, err := enrollNode(ctx, m, client, fmt.Sprintf("n%04d", i), cfg.Agents)
		nodes[i] = n
		return err
	}); err != nil {
		return res, fmt.Errorf("enroll the fleet: %w", err)
	}
	defer func() {
		for _, n := range nodes {
			for _, a := range n.agents {
				a.tr.CloseIdleConnections()
			}
		}
	}()
	base := "https://" + m.Addr()
	if err := benchmesh.Each(ctx, cfg.Parallel, len(nodes), func(i int) error {
		for _, a := range nodes[i].agents {
			if err := register(ctx, base, a); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return res, fmt.Errorf("register the agents: %w", err)
	}
	res.Setup = time.Since(start)

	// Prepare and activate the new intermediate; meshd follows the
	// ca.rotated events before the taint.
	caCfg := m.CA.Config()
	if _, err := ca.PrepareIntermediate(ctx, caCfg, m.Store); err != nil {
		return res, err
	}
	next, err := ca.ActivateIntermediate(ctx, caCfg, m.Store)
	if err != nil {
		return res, err
	}
	if err := until(ctx, 30*time.Second, func() bool { return bytes.Equal(m.CA.ActiveIntermediate().SubjectKeyId, next.SubjectKeyId) }); err != nil {
		return res, fmt.Errorf("meshd did not activate the new intermediate: %w", err)
	}

	var cnt counters
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{}, len(nodes))
	tainted := time.Now()
	if _, err := ca.TaintIntermediate(ctx, caCfg, m.Store, old); err != nil {
		return res, fmt.Errorf("taint %s: %w", old, err)
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			// Spread the nodes' heartbeats over the interval, as a fleet's are.
			phase := time.Duration(int64(cfg.Interval) * int64(i) / int64(len(nodes)))
			n.run(rctx, client, base, cfg.Interval, phase, &cnt, done)
		})
	}
	timeout := time.NewTimer(cfg.Timeout)
	defer timeout.Stop()
	for left := len(nodes); left > 0; left-- {
		select {
		case <-done:
		case <-timeout.C:
			stop()
			wg.Wait()
			return res, fmt.Errorf("%d of %d nodes had not re-keyed %s after the taint", left, len(nodes), cfg.Timeout)
		case <-ctx.Done():
			stop()
			wg.Wait()
			return res, ctx.Err()
		}
	}
	stop()
	wg.Wait()
	times := make([]time.Duration, len(nodes))
	for i, n := range nodes {
		times[i] = n.rekeyed.Sub(tainted)
	}
	slices.Sort(times)
	res.Last = times[len(times)-1]
	res.P50 = times[(len(times)-1)*50/100]
	res.P99 = times[(len(times)-1)*99/100]
	res.Heartbeats, res.Refused, res.Reregistered = cnt.heartbeats.Load(), cnt.refused.Load(), cnt.rereg.Load()
	res.Renewals, res.RenewFailed = cnt.renewals.Load(), cnt.renewFailed.Load()
	// meshd re-issues its own serving certificate at the taint (it is
	// the one leaf no client renews); the run ends once a handshake
	// shows it, then revokes the old intermediate without --force, as an
	// operator would once `meshctl ca status` shows none in use.
	var own *x509.Certificate
	if err := until(ctx, 30*time.Second, func() bool {
		own = served(m)
		return own != nil && bytes.Equal(own.AuthorityKeyId, next.SubjectKeyId)
	}); err != nil {
		return res, fmt.Errorf("meshd did not re-issue its serving certificate from the new intermediate: %w", err)
	}
	certs, err := m.Store.Certs(ctx)
	if err != nil {
		return res, err
	}
	newID := hex.EncodeToString(next.SubjectKeyId)
	now := time.Now()
	for _, c := range certs {
		if c.IssuerKeyID == newID && c.Kind != "intermediate" && c.CommonName != own.Subject.CommonName && now.Before(c.NotAfter) {
			res.Rekeyed++
		}
	}
	if _, err := ca.RevokeIntermediate(ctx, caCfg, m.Store, old, false); err != nil {
		res.RevokeErr = err.Error()
	} else {
		res.Revoked = true
	}
	return res, nil
}

// served is the serving certificate a new TLS handshake to meshd's agent
// port sees; nil when the handshake fails.
func served(m *benchmesh.Mesh) *x509.Certificate {
	conn, err := tls.Dial("tcp", m.Addr(), &tls.Config{RootCAs: m.Roots, ServerName: "localhost"})
	if err != nil {
		return nil
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// enrollNode signs node id's certificate in process and mints its agents'
// through POST /agent-cert.
func enrollNode(ctx context.Context, m *benchmesh.Mesh, client *enroll.Client, id string, agents int) (*node, error) {
	key, err := enroll.GenerateKey()
	if err != nil {
		return nil, err
	}
	is, err := m.CA.Sign(ctx, ca.NodeRequest(id), ca.ForPublicKey(key.Public()))
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", id, err)
	}
	n := &node{id: id, key: key}
	n.cert.Store(&tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: key, Leaf: is.Cert})
	for j := range agents {
		a := &agent{id: fmt.Sprintf("a%d-%s", j, id)}
		if a.key, err = enroll.GenerateKey(); err != nil {
			return nil, err
		}
		b, err := client.AgentCert(ctx, *n.cert.Load(), a.id, a.key)
		if err != nil {
			return nil, fmt.Errorf("agent %s@%s: %w", a.id, id, err)
		}
		c := b.TLSCertificate(a.key)
		a.cert.Store(&c)
		a.tr = &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: m.Roots, ServerName: "localhost",
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.cert.Load(), nil }},
			MaxIdleConnsPerHost: 1,
		}
		a.hc = &http.Client{Transport: a.tr, Timeout: 30 * time.Second}
		n.agents = append(n.agents, a)
	}
	return n, nil
}

// register is the agent's first heartbeat, the full POST.
func register(ctx context.Context, base string, a *agent) error {
	body, err := json.Marshal(map[string]any{"agent_id": a.id, "name": a.id, "version": "1.0.0", "http_host": "127.0.0.1", "http_port": 9000})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+meshapi.PathHeartbeat, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("register %s: %s: %s", a.id, resp.Status, bytes.TrimSpace(data))
	}
	return nil
}

// run heartbeats the node's agents every interval until ctx ends, and
// re-keys the node with its agents once the time meshd named has come;
// it sends on done once, when it has re-keyed.
func (n *node) run(ctx context.Context, client *enroll.Client, base string, interval, phase time.Duration, cnt *counters, done chan<- struct{}) {
	wait := phase
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = interval
		for _, a := range n.agents {
			n.heartbeat(ctx, base, a, cnt)
		}
		if !n.rekeyed.IsZero() || n.renewBy.IsZero() || time.Now().Before(n.renewBy) {
			continue
		}
		if err := n.rekey(ctx, client, cnt); err != nil {
			if ctx.Err() == nil {
				cnt.renewFailed.Add(1)
				// As the Renewer: back off, the upper half random.
				n.failures++
				n.renewBy = time.Now().Add(retry.Backoff(n.failures, 2*time.Second, 30*time.Second, rand.Int64N))
			}
			continue
		}
		n.rekeyed = time.Now()
		done <- struct{}{}
	}
}

// heartbeat is one HEAD /heartbeat/{id} of a (a POST when meshd asks for
// one), counted, and the Meshtrust-Renew-After it carries noted.
func (n *node) heartbeat(ctx context.Context, base string, a *agent, cnt *counters) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, base+"/heartbeat/"+a.id, nil)
	if err != nil {
		return
	}
	resp, err := a.hc.Do(req)
	if ctx.Err() != nil {
		return // the run ended, not the heartbeat
	}
	cnt.heartbeats.Add(1)
	if err != nil {
		cnt.refused.Add(1)
		return
	}
	resp.Body.Close()
	if v := resp.Header.Get(meshapi.HeaderRenewAfter); v != "" {
		if at := enroll.ParseRenewAfter(v, a.cert.Load().Leaf); !at.IsZero() && n.failures == 0 && (n.renewBy.IsZero() || at.Before(n.renewBy)) {
			n.renewBy = at
		}
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusAccepted, http.StatusGone:
		cnt.rereg.Add(1)
		if err := register(ctx, base, a); err != nil && ctx.Err() == nil {
			cnt.refused.Add(1)
		}
	default:
		cnt.refused.Add(1)
	}
}

// rekey renews the node's certificate and its agents' in one POST /renew
// with the same keys, and has each agent present its new certificate on
// a new connection.
func (n *node) rekey(ctx context.Context, client *enroll.Client, cnt *counters) error {
	keys := make([]enroll.AgentKey, len(n.agents))
	for i, a := range n.agents {
		keys[i] = enroll.AgentKey{ID: a.id, Key: a.key}
	}
	cnt.renewals.Add(1)
	res, err := client.Renew(ctx, *n.cert.Load(), n.key, keys)
	if err != nil {
		return err
	}
	if len(res.Agents) != len(n.agents) {
		return errors.New("meshd renewed fewer agents than asked")
	}
	nc := res.Node.TLSCertificate(n.key)
	n.cert.Store(&nc)
	for _, a := range n.agents {
		c := res.Agents[a.id].TLSCertificate(a.key)
		a.cert.Store(&c)
		a.tr.CloseIdleConnections()
	}
	return nil
}

// until polls cond every 10ms until it holds, for at most limit.
func until(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}
