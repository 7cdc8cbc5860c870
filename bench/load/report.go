package load

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
)

// Latency summarises latencies in milliseconds (nearest rank).
type Latency = benchmesh.Stats

// Process is one meshd's resources: with no agents, and at steady state
// (the median of the readings in the second half of the load).
type Process struct {
	Pid  int   `json:"pid"`
	RSS0 int64 `json:"rss_no_agents"`
	FDs0 int   `json:"fds_no_agents"`
	RSS  int64 `json:"rss_steady"`
	FDs  int   `json:"fds_steady"`
	// Live is the agents live on this meshd at the steady reading;
	// PerAgent is (RSS - RSS0) / Live, in bytes: record and connection.
	Live     int     `json:"live_agents"`
	PerAgent float64 `json:"bytes_per_live_agent"`
	// Runtime0 and Runtime are the Go runtime's memory classes with no
	// agents and at the steady reading, from meshd's metrics listener.
	Runtime0 runtimeMemory `json:"runtime_no_agents"`
	Runtime  runtimeMemory `json:"runtime_steady"`
}

// Eviction is revocation to eviction on one replica, from the revoke
// call's acknowledgement: until the replica's watch stream carried the
// revocation, and until the revoked agents connected to it were refused
// on their own connections.
type Eviction struct {
	Watch Latency `json:"watch_stream"`
	Agent Latency `json:"agent_refused"`
}

// Throughput is successful requests per second over the load's whole
// seconds.
type Throughput struct {
	Min  int64   `json:"min"`
	Mean float64 `json:"mean"`
	Max  int64   `json:"max"`
}

// Result is what a run measured; meshload writes it as JSON.
type Result struct {
	Agents      int     `json:"agents"`
	Replicas    int     `json:"replicas"`
	Database    string  `json:"database"`
	Duration    string  `json:"duration"`
	Interval    string  `json:"interval"`
	ChangeRate  float64 `json:"change_rate"`
	RevokeEvery string  `json:"revoke_every"`
	// Providers and Capabilities are the run's dependencies (Config).
	Providers    float64 `json:"providers"`
	Capabilities int     `json:"capabilities"`
	Setup        struct {
		IssueSeconds   float64 `json:"issue_s"`
		ConnectSeconds float64 `json:"connect_register_s"`
	} `json:"setup"`
	Throughput Throughput `json:"requests_per_second"`
	Head       Latency    `json:"head"`
	Post       Latency    `json:"post"`
	// HeadOK counts HEADs answered 200, Reregistered those answered
	// 202, which the agent followed with a POST, and Needless those
	// POSTs whose dependencies_resolved was the one the agent had
	// already; Redials the connections agents opened again after a
	// failure.
	HeadOK       int64 `json:"head_200"`
	Reregistered int64 `json:"reregistered"`
	Needless     int64 `json:"reregistered_unchanged"`
	Redials      int64 `json:"redials"`
	// Unexpected counts refusals of agents not revoked, by method and
	// reason (the target is none); Expected those of revoked agents.
	Unexpected map[string]int64 `json:"unexpected_refusals"`
	Expected   map[string]int64 `json:"expected_refusals"`
	// Revocations counts the acknowledged revocations; RevokeCall how
	// long the admin API took to acknowledge them.
	Revocations int        `json:"revocations"`
	RevokeCall  Latency    `json:"revoke_call"`
	Evictions   []Eviction `json:"eviction"`
	// NotEvicted names revoked agents that meshd still served, or still
	// listed as not evicted, after the load.
	NotEvicted  []string  `json:"not_evicted,omitempty"`
	WatchErrors []string  `json:"watch_errors,omitempty"`
	Meshd       []Process `json:"meshd"`
}

func (res *Result) summarize(r *runState, agents []*agent, revs []revocation, samples [][]sample, elapsed time.Duration) {
	var head, post []time.Duration
	for _, a := range agents {
		head = append(head, a.headLat...)
		post = append(post, a.postLat...)
	}
	res.Head, res.Post = benchmesh.Summarize(head, 0), benchmesh.Summarize(post, 0)
	whole := min(int(elapsed/time.Second), len(r.perSecond))
	if whole > 0 {
		res.Throughput.Min = r.perSecond[0].Load()
		var total int64
		for i := range whole {
			n := r.perSecond[i].Load()
			total += n
			res.Throughput.Min, res.Throughput.Max = min(res.Throughput.Min, n), max(res.Throughput.Max, n)
		}
		res.Throughput.Mean = float64(total) / float64(whole)
	}
	res.Reregistered, res.Redials = r.reregistered.Load(), r.redials.Load()
	res.HeadOK, res.Needless = r.headOK.Load(), r.needless.Load()
	r.mu.Lock()
	res.Unexpected, res.Expected = r.refusals, r.expected
	r.mu.Unlock()

	res.Revocations = len(revs)
	var calls []time.Duration
	watchLat := make([][]time.Duration, len(res.Meshd))
	agentLat := make([][]time.Duration, len(res.Meshd))
	watchMissed := make([]int, len(res.Meshd))
	agentMissed := make([]int, len(res.Meshd))
	for _, rv := range revs {
		calls = append(calls, rv.call)
		a := rv.agent
		if a.refusedSeen {
			agentLat[a.replica] = append(agentLat[a.replica], a.evicted)
		} else {
			agentMissed[a.replica]++
			res.NotEvicted = append(res.NotEvicted, fmt.Sprintf("%s on meshd-%d: its connection still served %s after the revocation", a.id, a.replica, evictionTimeout))
		}
		seen := r.seen[a.serial]
		for i := range res.Meshd {
			if seen == nil || seen[i].IsZero() {
				watchMissed[i]++
				continue
			}
			watchLat[i] = append(watchLat[i], seen[i].Sub(rv.ack))
		}
	}
	res.RevokeCall = benchmesh.Summarize(calls, 0)
	for i := range res.Meshd {
		res.Evictions = append(res.Evictions, Eviction{Watch: benchmesh.Summarize(watchLat[i], watchMissed[i]), Agent: benchmesh.Summarize(agentLat[i], agentMissed[i])})
	}
	for i, s := range samples {
		var steady []sample
		for _, x := range s {
			if x.at >= elapsed/2 {
				steady = append(steady, x)
			}
		}
		if len(steady) == 0 {
			continue
		}
		slices.SortFunc(steady, func(a, b sample) int { return int(a.u.RSS - b.u.RSS) })
		m := steady[len(steady)/2]
		p := &res.Meshd[i]
		p.RSS, p.FDs, p.Live, p.Runtime = m.u.RSS, m.u.FDs, m.live, m.rt
		if m.live > 0 {
			p.PerAgent = float64(p.RSS-p.RSS0) / float64(m.live)
		}
	}
}

// Clean reports whether the run met the outcomes the CI smoke asserts:
// no unexpected refusal, every revoked agent evicted (its connection
// refused and the revocation on every replica's watch stream), no watch
// stream lost.
func (res *Result) Clean() error {
	var problems []string
	if n := sum(res.Unexpected); n > 0 {
		problems = append(problems, fmt.Sprintf("%d unexpected refusals: %v", n, res.Unexpected))
	}
	if len(res.NotEvicted) > 0 {
		problems = append(problems, fmt.Sprintf("%d revoked agents not evicted: %v", len(res.NotEvicted), res.NotEvicted))
	}
	for i, e := range res.Evictions {
		if e.Watch.Failed > 0 {
			problems = append(problems, fmt.Sprintf("meshd-%d's watch stream missed %d revocations", i, e.Watch.Failed))
		}
	}
	if len(res.WatchErrors) > 0 {
		problems = append(problems, fmt.Sprintf("watch streams ended: %v", res.WatchErrors))
	}
	if len(problems) > 0 {
		return fmt.Errorf("load: %s", strings.Join(problems, "; "))
	}
	return nil
}

// Table is the result as a Markdown table for BENCHMARKS.md.
func (res *Result) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %d agents, %d meshd on %s, %s, HEAD every %s ±10%%, %.0f%% POST, a revocation every %s, %.0f%% providers of %d capabilities | |\n|---|---|\n",
		res.Agents, res.Replicas, res.Database, res.Duration, res.Interval, 100*res.ChangeRate, res.RevokeEvery, 100*max(0, res.Providers), res.Capabilities)
	row := func(k, format string, args ...any) { fmt.Fprintf(&b, "| %s | %s |\n", k, fmt.Sprintf(format, args...)) }
	row("setup", "issue %.1f s, connect and register %.1f s", res.Setup.IssueSeconds, res.Setup.ConnectSeconds)
	row("requests/s", "mean %.0f (min %d, max %d)", res.Throughput.Mean, res.Throughput.Min, res.Throughput.Max)
	row("HEAD /heartbeat/{id}", "%s", res.Head)
	row("HEAD answers", "200: %d, 202: %d (%.1f%%), of which the POST told nothing new: %d", res.HeadOK, res.Reregistered,
		100*float64(res.Reregistered)/float64(max(1, res.HeadOK+res.Reregistered)), res.Needless)
	row("POST /heartbeat", "%s; %d after a 202", res.Post, res.Reregistered)
	row("unexpected refusals", "%d %s", sum(res.Unexpected), reasons(res.Unexpected))
	row("revoked agents' refusals", "%d %s", sum(res.Expected), reasons(res.Expected))
	row("revocations", "%d acknowledged, call %s", res.Revocations, res.RevokeCall)
	for i, e := range res.Evictions {
		row(fmt.Sprintf("meshd-%d: revocation to watch event", i), "%s; missed %d", e.Watch, e.Watch.Failed)
		row(fmt.Sprintf("meshd-%d: revocation to agent refused", i), "%s; not evicted %d", e.Agent, e.Agent.Failed)
	}
	for i, p := range res.Meshd {
		row(fmt.Sprintf("meshd-%d RSS", i), "%.1f MiB with no agents, %.1f MiB with %d live", mib(p.RSS0), mib(p.RSS), p.Live)
		row(fmt.Sprintf("meshd-%d open files", i), "%d with no agents, %d with %d live", p.FDs0, p.FDs, p.Live)
		row(fmt.Sprintf("meshd-%d memory per live agent", i), "%.1f KiB (target ≤ 48 KiB)", p.PerAgent/1024)
		if rt, rt0 := p.Runtime, p.Runtime0; rt.Total > 0 && p.Live > 0 {
			per := func(v, v0 int64) float64 { return float64(v-v0) / float64(p.Live) / 1024 }
			row(fmt.Sprintf("meshd-%d runtime per live agent", i), "heap objects %.1f KiB, stacks %.1f KiB, free heap kept %.1f KiB, released %.1f KiB; heap goal %.1f MiB, GOGC %.0f, %d goroutines, new stacks %d KiB",
				per(rt.HeapObjects, rt0.HeapObjects), per(rt.Stacks, rt0.Stacks), per(rt.HeapFree, rt0.HeapFree), per(rt.HeapReleased, rt0.HeapReleased),
				mib(rt.HeapGoal), rt.GOGC, rt.Goroutines, rt.StackStart>>10)
		}
	}
	if len(res.NotEvicted) > 0 {
		row("NOT EVICTED", "%s", strings.Join(res.NotEvicted, "; "))
	}
	return b.String()
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func reasons(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
