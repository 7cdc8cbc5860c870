// Package load is the live-agent load harness of issue 24: N simulated
// MCP Mesh agents on loopback against a meshd process (or two replicas
// on one PostgreSQL), each agent with its own certificate from meshd's
// CA and its own kept-alive TLS connection, heartbeating as MCP Mesh's
// agents do (HEAD /heartbeat/{id} every interval with jitter, POST
// /heartbeat on a 202 and when its tools change) while an operator
// revokes one random live agent every second through meshd's admin
// socket.
//
// It reports requests per second, HEAD and POST latency (p50, p99,
// p999), refusals by reason (a revoked agent's apart from unexpected
// ones), meshd's RSS and open files with no agents and at steady state,
// memory per live agent, and revocation to eviction: from the revoke
// call's acknowledgement until each replica's /revocations/watch stream
// carries the revocation, and until the revoked agent's own connection
// is refused.
//
// meshd runs as a process built from cmd/meshd, so what /proc reads is
// meshd's alone; the agents' certificates are issued in process through
// the CA before meshd starts (ECDSA P-256 keys the harness generates),
// as `meshctl ca issue-agent` would, so /agent-cert's limits are not
// what is measured.
package load

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store/database"
)

// evictionTimeout bounds the wait for one revoked agent's eviction; past
// it the agent counts as not evicted.
const evictionTimeout = 10 * time.Second

// Config sizes a run. Zero values select the defaults.
type Config struct {
	// Meshd is the meshd binary to run (required).
	Meshd string
	// Agents is the number of live agents; default 1000.
	Agents int
	// Duration is how long the agents heartbeat after they registered;
	// default 60s.
	Duration time.Duration
	// Interval is each agent's heartbeat interval; default 5s, MCP
	// Mesh's.
	Interval time.Duration
	// RevokeEvery is how often a random live agent is revoked; default
	// 1s; negative: never.
	RevokeEvery time.Duration
	// ChangeRate is the share of cycles in which an agent's tools change
	// (a POST instead of a HEAD); default 0.01; negative: none.
	ChangeRate float64
	// Providers is the share of the agents that offer one of
	// Capabilities shared capabilities, which every agent depends on one
	// or two of (so a provider's change, revocation included, is news to
	// its dependents only); default 0.03; negative: no agent declares a
	// dependency.
	Providers float64
	// Capabilities is how many shared capabilities there are; default 20.
	Capabilities int
	// Database is "" for meshd's SQLite file, or a postgres:// URL (a
	// schema of its own) for Replicas replicas on it.
	Database string
	// Replicas is the number of meshd processes, 1 (default) or 2; two
	// need a postgres:// Database. Agents are split between them; the
	// revocations are made on the first.
	Replicas int
	// Parallel bounds the setup's concurrent issuances and handshakes;
	// default 32.
	Parallel int
	// Env is added to each meshd's environment (GOGC=50, GOMEMLIMIT,
	// GODEBUG), to compare runtime settings in one session.
	Env []string
	// Progress, when set, receives a line per phase and per 10 s of load.
	Progress io.Writer
}

func (c Config) withDefaults() (Config, error) {
	c.Agents = cmpOr(c.Agents, 1000)
	c.Duration = cmpOr(c.Duration, time.Minute)
	c.Interval = cmpOr(c.Interval, 5*time.Second)
	c.RevokeEvery = cmpOr(c.RevokeEvery, time.Second)
	c.ChangeRate = cmpOr(c.ChangeRate, 0.01)
	c.Providers = cmpOr(c.Providers, 0.03)
	c.Capabilities = cmpOr(c.Capabilities, 20)
	c.Replicas = cmpOr(c.Replicas, 1)
	c.Parallel = cmpOr(c.Parallel, 32)
	switch {
	case c.Meshd == "":
		return c, errors.New("load: no meshd binary (go build -o DIR/ ./cmd/meshd)")
	case c.Agents < 0 || c.Duration < 0 || c.Interval < 0 || c.Parallel < 0:
		return c, errors.New("load: agents, duration, interval and parallel must not be negative")
	case c.Replicas < 1 || c.Replicas > 2:
		return c, fmt.Errorf("load: %d replicas: want 1 or 2", c.Replicas)
	case c.Replicas == 2 && !database.IsPostgres(c.Database):
		return c, errors.New("load: two replicas need a postgres:// database")
	case c.ChangeRate > 1:
		return c, fmt.Errorf("load: change rate %v is more than every cycle", c.ChangeRate)
	case c.Providers > 1:
		return c, fmt.Errorf("load: a providers share of %v is more than the whole fleet", c.Providers)
	case c.Capabilities < 0:
		return c, errors.New("load: capabilities must not be negative")
	}
	return c, nil
}

func cmpOr[T int | time.Duration | float64](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// runState is what the agents, the revoker and the watchers share during
// a run. Its mutex guards refusals, expected and seen; the counters are
// atomic.
type runState struct {
	cfg   Config
	start time.Time
	// perSecond counts the successful requests started in each second of
	// the load.
	perSecond                             []atomic.Int64
	reregistered, redials                 atomic.Int64
	headOK, needless                      atomic.Int64
	mu                                    sync.Mutex
	refusals, expected                    map[string]int64
	seen                                  map[string][]time.Time // serial -> when each replica's watch stream carried it
	revokeErrors, revocationsAcknowledged atomic.Int64
}

func (r *runState) count(at time.Time) {
	i := int(at.Sub(r.start) / time.Second)
	if i >= 0 && i < len(r.perSecond) {
		r.perSecond[i].Add(1)
	}
}

func (r *runState) refuse(expected bool, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if expected {
		r.expected[why]++
	} else {
		r.refusals[why]++
	}
}

// Run starts meshd (cfg.Replicas processes) over a fresh CA in dir, a
// directory the caller removes, issues and registers cfg.Agents agents,
// loads meshd for cfg.Duration and reports what it measured. Every
// process it starts listens on 127.0.0.1 and is stopped by its pid
// before Run returns.
func Run(ctx context.Context, dir string, cfg Config) (*Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	// Each agent holds one connection in this process and one in meshd's
	// (a process of its own, with the limit it inherits from this one),
	// plus the store's, the watch streams' and the runtime's.
	if err := raiseNoFile(uint64(cfg.Agents + 1024)); err != nil {
		return nil, err
	}
	res := &Result{Agents: cfg.Agents, Replicas: cfg.Replicas, Database: "sqlite", Interval: cfg.Interval.String(),
		Duration: cfg.Duration.String(), ChangeRate: cfg.ChangeRate, RevokeEvery: cfg.RevokeEvery.String(), Providers: cfg.Providers, Capabilities: cfg.Capabilities}
	if cfg.Database != "" {
		res.Database = "postgres"
	}
	progress := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "meshload: "+format+"\n", args...)
		}
	}

	// The mesh CA, meshd's certificate and the agents', before meshd
	// starts.
	t0 := time.Now()
	authority, st, serverCN, err := benchmesh.NewCA(ctx, dir, cfg.Database, 0)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(authority.Root())
	issue := func(id string) (tls.Certificate, string, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
		if err != nil {
			return tls.Certificate{}, "", err
		}
		is, err := authority.Sign(ctx, ca.AgentRequest(id, "bench"), ca.ForPublicKey(key.Public()))
		if err != nil {
			return tls.Certificate{}, "", fmt.Errorf("issue %s@bench: %w", id, err)
		}
		return tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: key, Leaf: is.Cert}, strings.ToLower(is.Record.Serial), nil
	}
	agents := make([]*agent, cfg.Agents)
	certs := make([]tls.Certificate, cfg.Agents)
	serials := make([]string, cfg.Agents)
	err = benchmesh.Each(ctx, cfg.Parallel, cfg.Agents, func(i int) (err error) {
		certs[i], serials[i], err = issue(fmt.Sprintf("load%05d", i))
		return err
	})
	watchCerts := make([]tls.Certificate, cfg.Replicas)
	for i := range watchCerts {
		if err == nil {
			watchCerts[i], _, err = issue(fmt.Sprintf("watch%d", i))
		}
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	res.Setup.IssueSeconds = time.Since(t0).Seconds()
	progress("issued %d agent certificates in %.1fs", cfg.Agents, res.Setup.IssueSeconds)

	// meshd: one process, or two replicas with a CA directory each (as
	// replicas run: each its own copy of the intermediate it signs with).
	caCfg := authority.Config()
	procs := make([]*process, 0, cfg.Replicas)
	defer func() {
		for _, p := range procs {
			if err := p.stop(); err != nil {
				progress("%v", err)
			}
		}
	}()
	for i := range cfg.Replicas {
		caDir, rootDir := caCfg.Dir, caCfg.RootDir
		if i > 0 {
			caDir, rootDir = filepath.Join(dir, fmt.Sprintf("ca-%d", i)), filepath.Join(dir, fmt.Sprintf("root-%d", i))
			if err := copyTree(caCfg.Dir, caDir); err != nil {
				return nil, err
			}
			if err := copyTree(caCfg.RootDir, rootDir); err != nil {
				return nil, err
			}
		}
		c := ca.Config{Dir: caDir}
		p, err := startMeshd(ctx, cfg.Meshd, fmt.Sprintf("meshd-%d", i), filepath.Join(dir, fmt.Sprintf("data-%d", i)),
			caDir, rootDir, c.IssuedCertPath(serverCN), c.IssuedKeyPath(serverCN), cfg.Database, cfg.Env)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	admin := benchmesh.AdminClient(procs[0].sock())
	defer admin.CloseIdleConnections()
	res.Meshd = make([]Process, len(procs))
	for i, p := range procs {
		res.Meshd[i].Pid = p.cmd.Process.Pid
		u, err := settledUsage(ctx, p.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		res.Meshd[i].RSS0, res.Meshd[i].FDs0 = u.RSS, u.FDs
		// The runtime's view of the same moment; a meshd too old to
		// serve it reads as zeros.
		res.Meshd[i].Runtime0, _ = readRuntime(ctx, p.metrics)
	}

	// Connect and register every agent, split across the replicas.
	t1 := time.Now()
	r := &runState{cfg: cfg, refusals: map[string]int64{}, expected: map[string]int64{}, seen: map[string][]time.Time{}}
	for i := range agents {
		rep := i % len(procs)
		tc := &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{certs[i]}}
		provides, needs := roles(i, cfg)
		agents[i] = newAgent(fmt.Sprintf("load%05d", i), serials[i], rep, procs[rep].addr, tc, provides, needs)
	}
	defer func() {
		for _, a := range agents {
			a.close()
		}
	}()
	if err := registerAll(ctx, agents, cfg); err != nil {
		return nil, err
	}
	res.Setup.ConnectSeconds = time.Since(t1).Seconds()
	progress("connected and registered %d agents in %.1fs", cfg.Agents, res.Setup.ConnectSeconds)

	// A watching client on every replica, as a mesh's services watch.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var watchers sync.WaitGroup
	watchErrs := make([]error, len(procs))
	for i, p := range procs {
		w, err := openWatch(wctx, p.addr, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{watchCerts[i]}})
		if err != nil {
			return nil, fmt.Errorf("watch meshd-%d: %w", i, err)
		}
		watchers.Go(func() { watchErrs[i] = w.run(wctx, i, len(procs), r) })
	}

	// The load.
	lctx, stopLoad := context.WithTimeout(ctx, cfg.Duration)
	defer stopLoad()
	r.start = time.Now()
	r.perSecond = make([]atomic.Int64, int(cfg.Duration/time.Second)+1)
	var wg sync.WaitGroup
	for i, a := range agents {
		// Phases spread over one interval, as a fleet's are.
		phase := time.Duration(int64(cfg.Interval) * int64(i) / int64(len(agents)))
		wg.Go(func() { a.run(lctx, r, phase) })
	}
	var revs []revocation
	var samples [][]sample
	var side sync.WaitGroup
	side.Go(func() { revs = revoke(lctx, admin, agents, cfg.RevokeEvery, r) })
	side.Go(func() { samples = sampleUsage(lctx, procs, agents, cfg, progress, r) })
	side.Wait()
	// Revoked agents still waiting for their eviction get up to
	// evictionTimeout; the others stop with the load's context.
	wg.Wait()
	elapsed := time.Since(r.start)

	// After the load: every revoked agent must be gone from the registry
	// of the replica it was on (and the revocation on every watch stream).
	for i := range procs {
		views, err := benchmesh.Agents(ctx, benchmesh.AdminClient(procs[i].sock()))
		if err != nil {
			return nil, fmt.Errorf("meshd-%d: %w", i, err)
		}
		status := make(map[string]string, len(views))
		for _, v := range views {
			status[v.ID] = v.Status
		}
		for _, rv := range revs {
			if a := rv.agent; a.replica == i {
				if s, ok := status[a.id]; ok && s != registry.StatusEvicted {
					res.NotEvicted = append(res.NotEvicted, fmt.Sprintf("%s on meshd-%d: registry status %q", a.id, i, s))
				}
			}
		}
	}
	stopWatch()
	watchers.Wait()
	for i, err := range watchErrs {
		if err != nil && !errors.Is(err, context.Canceled) {
			res.WatchErrors = append(res.WatchErrors, fmt.Sprintf("meshd-%d: %v", i, err))
		}
	}
	res.summarize(r, agents, revs, samples, elapsed)
	return res, nil
}

// settledUsage reads pid's usage three times, 300 ms apart, once meshd
// has started, and returns the median: a meshd with no agents.
func settledUsage(ctx context.Context, pid int) (usage, error) {
	var us []usage
	for range 3 {
		select {
		case <-ctx.Done():
			return usage{}, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		u, err := readUsage(pid)
		if err != nil {
			return usage{}, err
		}
		us = append(us, u)
	}
	slices.SortFunc(us, func(a, b usage) int { return int(a.RSS - b.RSS) })
	return us[1], nil
}

// revocation is one revoke call of the run.
type revocation struct {
	agent *agent
	// call is how long the admin API took to acknowledge it; ack when it
	// did.
	call time.Duration
	ack  time.Time
}

// revoke revokes one random live agent every interval through the admin
// API until ctx ends, as an operator's `meshctl ca revoke <serial>`
// does, and wakes the agent to find out it was evicted.
func revoke(ctx context.Context, admin *http.Client, agents []*agent, every time.Duration, r *runState) []revocation {
	if every < 0 {
		return nil
	}
	left := slices.Clone(agents)
	var out []revocation
	t := time.NewTicker(every)
	defer t.Stop()
	for len(left) > 0 {
		select {
		case <-ctx.Done():
			return out
		case <-t.C:
		}
		i := rand.IntN(len(left))
		a := left[i]
		left[i] = left[len(left)-1]
		left = left[:len(left)-1]
		a.revoked.Store(true) // its refusals are expected from now on
		start := time.Now()
		if err := benchmesh.Revoke(ctx, admin, a.serial); err != nil {
			if ctx.Err() != nil {
				return out
			}
			r.revokeErrors.Add(1)
			r.refuse(false, "admin revoke: "+err.Error())
			continue
		}
		ack := time.Now()
		r.revocationsAcknowledged.Add(1)
		a.wake <- ack
		out = append(out, revocation{agent: a, call: ack.Sub(start), ack: ack})
	}
	return out
}

// sample is one reading of a meshd's usage during the load, with the
// agents live on it then, and its runtime's memory classes.
type sample struct {
	at   time.Duration
	u    usage
	rt   runtimeMemory
	live int
}

// sampleUsage reads every meshd's usage each second until ctx ends, and
// prints progress every 10 s.
func sampleUsage(ctx context.Context, procs []*process, agents []*agent, cfg Config, progress func(string, ...any), r *runState) [][]sample {
	out := make([][]sample, len(procs))
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return out
		case <-t.C:
		}
		live := make([]int, len(procs))
		for _, a := range agents {
			if !a.revoked.Load() {
				live[a.replica]++
			}
		}
		for i, p := range procs {
			u, err := readUsage(p.cmd.Process.Pid)
			if err != nil {
				continue // meshd gone: the run reports it when it stops
			}
			// Zeros when meshd does not serve them (an older binary).
			rt, _ := readRuntime(ctx, p.metrics)
			out[i] = append(out[i], sample{at: time.Since(r.start), u: u, rt: rt, live: live[i]})
		}
		if n%10 == 0 {
			last := out[0][len(out[0])-1]
			r.mu.Lock()
			unexpected := sum(r.refusals)
			r.mu.Unlock()
			progress("%3ds: meshd-0 RSS %d MiB, %d fds, %d live; %d revoked; %d unexpected refusals",
				n, last.u.RSS>>20, last.u.FDs, last.live, r.revocationsAcknowledged.Load(), unexpected)
		}
	}
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// registerAll connects and registers the agents, setupBatch at a time.
// At fleet size registering takes longer than meshd's heartbeat timeout
// (20 s by default): the first agents would then be silent past it
// before the load starts, and marked unhealthy, which a real agent,
// heartbeating from its registration on, never is. So between batches
// every agent registered more than an interval ago sends its HEAD, as
// it would; a refusal of either is an error of the run.
func registerAll(ctx context.Context, agents []*agent, cfg Config) error {
	const setupBatch = 500
	contact := make([]time.Time, len(agents))
	for lo := 0; lo < len(agents); lo += setupBatch {
		hi := min(lo+setupBatch, len(agents))
		if err := benchmesh.Each(ctx, cfg.Parallel, hi-lo, func(j int) error {
			a := agents[lo+j]
			if err := a.dial(); err != nil {
				return fmt.Errorf("connect %s: %w", a.id, err)
			}
			if why := a.register().refusal(http.MethodPost); why != "" {
				return fmt.Errorf("register %s on meshd-%d: %s", a.id, a.replica, why)
			}
			contact[lo+j] = time.Now()
			return nil
		}); err != nil {
			return err
		}
		due := time.Now().Add(-cfg.Interval)
		var silent []int
		for i := range hi {
			if contact[i].Before(due) {
				silent = append(silent, i)
			}
		}
		if err := benchmesh.Each(ctx, cfg.Parallel, len(silent), func(j int) error {
			a := agents[silent[j]]
			if why := a.do(a.head, http.MethodHead).refusal(http.MethodHead); why != "" {
				return fmt.Errorf("heartbeat %s on meshd-%d while the others register: %s", a.id, a.replica, why)
			}
			contact[silent[j]] = time.Now()
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}
