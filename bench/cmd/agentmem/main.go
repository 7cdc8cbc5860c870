// Command agentmem measures meshd's memory per registered agent.
//
// It registers -agents agents (100,000 by default) with the benchmark
// heartbeat payload, agent_id varied, and reports the growth of the Go
// heap (HeapInuse and HeapAlloc after a full GC) and of the process RSS,
// divided by the number of agents. The registry's first heartbeat for an
// agent is durable, so the agents go through a real SQLite store in a
// temporary directory; SQLite's own memory is outside the Go heap and
// shows only in RSS.
//
// Two paths:
//
//   - registry (default): registry.Heartbeat with synthetic verified peers
//     (leaf CN <id>@bench, a 64-hex fingerprint and a 32-hex serial, as the
//     mesh CA issues), as internal/registry's tests build them; issuing
//     100,000 certificates is not what is measured.
//   - http: an in-process meshd with TLS off, the agents registered by
//     POST /heartbeat over keep-alive connections. With TLS off agents have
//     no owner or certificate, so their records are a little smaller.
//
// The baseline, in the same process: a plain map from agent id to the
// compacted payload bytes, the least any registry that keeps payloads in
// memory must hold. The ratio registry/baseline is the overhead of
// meshd's records and indexes over the payload itself.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/trust"
)

type options struct {
	agents, workers int
	payloadFile     string
	path            string
	jsonOut         bool
	memProfile      string
}

func main() {
	var o options
	flag.IntVar(&o.agents, "agents", 100_000, "agents to register")
	flag.IntVar(&o.workers, "workers", 256, "concurrent registrations (the store commits them in groups)")
	flag.StringVar(&o.payloadFile, "payload", "bench/mcpmesh/heartbeat.json", "heartbeat JSON; agent_id is varied")
	flag.StringVar(&o.path, "path", "registry", "registry (registry.Heartbeat) or http (POST /heartbeat to meshd, TLS off)")
	flag.BoolVar(&o.jsonOut, "json", false, "print one JSON line")
	flag.StringVar(&o.memProfile, "memprofile", "", "write a heap profile here once the agents are registered")
	flag.Parse()
	benchmesh.Main("agentmem", 4*time.Minute, func(ctx context.Context) error { return run(ctx, o) })
}

// Mem is a memory reading.
type Mem struct {
	HeapInuse, HeapAlloc, RSS uint64
}

// PerAgent is a memory growth divided by the number of agents, in bytes.
type PerAgent struct {
	HeapInuse float64 `json:"heap_inuse"`
	HeapAlloc float64 `json:"heap_alloc"`
	RSS       float64 `json:"rss"`
}

// Report is agentmem's output.
type Report struct {
	Path         string   `json:"path"`
	Agents       int      `json:"agents"`
	PayloadBytes int      `json:"payload_bytes"`
	Baseline     PerAgent `json:"baseline_map_of_payloads"`
	Meshd        PerAgent `json:"meshd"`
	// Ratio is Meshd.HeapInuse / Baseline.HeapInuse.
	Ratio   float64 `json:"ratio_heap_inuse"`
	Seconds float64 `json:"register_seconds"`
}

func run(ctx context.Context, o options) error {
	raw, err := os.ReadFile(o.payloadFile)
	if err != nil {
		return err
	}
	tmpl, err := newTemplate(raw)
	if err != nil {
		return err
	}
	_, compact, err := registry.ParseRegistration(tmpl.body("weather-agent-1"))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "agentmem-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(dir, "meshtrust.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	rep := Report{Path: o.path, Agents: o.agents, PayloadBytes: len(compact)}

	// Baseline: the payloads alone, in a map.
	before := measure()
	base := make(map[string][]byte)
	var buf bytes.Buffer
	for i := 1; i <= o.agents; i++ {
		id := agentID(i)
		buf.Reset()
		if err := json.Compact(&buf, tmpl.body(id)); err != nil {
			return err
		}
		base[id] = bytes.Clone(buf.Bytes()) // exactly the payload's length
	}
	rep.Baseline = perAgent(before, measure(), o.agents)
	runtime.KeepAlive(base)
	base = nil

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	start := time.Now()
	switch o.path {
	case "registry":
		reg, err := registry.New(ctx, st, registry.Config{Logger: log, Timeout: time.Hour})
		if err != nil {
			return err
		}
		before = measure()
		start = time.Now()
		if err := registerDirect(ctx, reg, tmpl, o); err != nil {
			return err
		}
		rep.Seconds = time.Since(start).Seconds()
		after := measure()
		if reg.Len() != o.agents {
			return fmt.Errorf("registry holds %d agents, want %d", reg.Len(), o.agents)
		}
		rep.Meshd = perAgent(before, after, o.agents)
		if err := benchmesh.WriteHeapProfile(o.memProfile); err != nil {
			return err
		}
		runtime.KeepAlive(reg)
	case "http":
		srv, err := meshd.New(ctx, meshd.Config{Config: server.Config{Listen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", TLSMode: server.TLSOff, Logger: log}, Backends: []string{meshd.BackendEntities}, HeartbeatTimeout: time.Hour}, st, nil)
		if err != nil {
			return err
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if err := srv.Start(sctx); err != nil {
			return err
		}
		defer func() {
			c, done := context.WithTimeout(context.Background(), 10*time.Second)
			defer done()
			srv.Shutdown(c)
		}()
		before = measure()
		start = time.Now()
		if err := registerHTTP(ctx, srv.AgentAddr(), tmpl, o); err != nil {
			return err
		}
		rep.Seconds = time.Since(start).Seconds()
		after := measure()
		// meshd's own count, its meshd_agents gauge.
		if n, err := benchmesh.Gauge(ctx, http.DefaultClient, "http://"+srv.MetricsAddr()+"/metrics", "meshd_agents"); err != nil || n != o.agents {
			return fmt.Errorf("meshd holds %d agents (%v), want %d", n, err, o.agents)
		}
		rep.Meshd = perAgent(before, after, o.agents)
		if err := benchmesh.WriteHeapProfile(o.memProfile); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-path %q: want registry or http", o.path)
	}
	if rep.Baseline.HeapInuse > 0 {
		rep.Ratio = rep.Meshd.HeapInuse / rep.Baseline.HeapInuse
	}
	if o.jsonOut {
		return json.NewEncoder(os.Stdout).Encode(rep)
	}
	fmt.Printf("memory per agent at %d agents (%s path, payload %d B compacted, registered in %.1fs)\n", o.agents, o.path, rep.PayloadBytes, rep.Seconds)
	fmt.Printf("  meshd     heap_inuse %8.0f B  heap_alloc %8.0f B  rss %8.0f B\n", rep.Meshd.HeapInuse, rep.Meshd.HeapAlloc, rep.Meshd.RSS)
	fmt.Printf("  baseline  heap_inuse %8.0f B  heap_alloc %8.0f B  (map id -> compacted payload)\n", rep.Baseline.HeapInuse, rep.Baseline.HeapAlloc)
	fmt.Printf("  ratio meshd/baseline (heap_inuse) %.2f\n", rep.Ratio)
	return nil
}

// template is the payload with its agent_id cut out.
type template struct{ head, tail []byte }

func newTemplate(raw []byte) (template, error) {
	var doc struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || doc.AgentID == "" {
		return template{}, fmt.Errorf("payload has no agent_id: %v", err)
	}
	q, _ := json.Marshal(doc.AgentID)
	i := bytes.Index(raw, q)
	if i < 0 {
		return template{}, errors.New("payload: agent_id value not found")
	}
	return template{head: raw[:i], tail: raw[i+len(q):]}, nil
}

func (t template) body(id string) []byte {
	b := make([]byte, 0, len(t.head)+len(id)+2+len(t.tail))
	b = append(b, t.head...)
	b = strconv.AppendQuote(b, id)
	return append(b, t.tail...)
}

func agentID(i int) string { return "weather-agent-" + strconv.Itoa(i) }

func measure() Mem {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return Mem{HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc, RSS: rss()}
}

// rss reads the resident set size from /proc/self/status.
func rss() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func perAgent(before, after Mem, n int) PerAgent {
	d := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(n) }
	return PerAgent{HeapInuse: d(before.HeapInuse, after.HeapInuse), HeapAlloc: d(before.HeapAlloc, after.HeapAlloc), RSS: d(before.RSS, after.RSS)}
}

// peer is a verified agent certificate as a trust backend would return it;
// only what the registry reads is filled in.
func peer(i int, id string) (*trust.Peer, error) {
	ident, err := identity.NewAgent(id, "bench")
	if err != nil {
		return nil, err
	}
	serial := new(big.Int).Lsh(big.NewInt(int64(i)), 64)
	serial.Or(serial, big.NewInt(0x5eed))
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: ident.CommonName()}, SerialNumber: serial,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(90 * 24 * time.Hour)}
	sum := sha256.Sum256([]byte(id))
	return &trust.Peer{Leaf: leaf, Fingerprint: hex.EncodeToString(sum[:]), Serial: serial.Text(16), Backend: "localca", Identity: ident}, nil
}

// parallel runs fn(i) for i in 1..n on workers goroutines and returns the
// first error.
func parallel(n, workers int, fn func(w, i int) error) error {
	var (
		next     atomic.Int64
		firstErr error
		once     sync.Once
		wg       sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				if err := fn(w, i); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func registerDirect(ctx context.Context, reg *registry.Registry, tmpl template, o options) error {
	return parallel(o.agents, o.workers, func(_, i int) error {
		id := agentID(i)
		r, payload, err := registry.ParseRegistration(tmpl.body(id))
		if err != nil {
			return err
		}
		p, err := peer(i, id)
		if err != nil {
			return err
		}
		res, err := reg.Heartbeat(ctx, p, r, payload)
		if err != nil {
			return fmt.Errorf("heartbeat %s: %w", id, err)
		}
		if !res.Created {
			return fmt.Errorf("heartbeat %s: not a new registration", id)
		}
		return nil
	})
}

// registerHTTP posts one heartbeat per agent over keep-alive connections,
// one per worker.
func registerHTTP(ctx context.Context, addr string, tmpl template, o options) error {
	type conn struct {
		c  net.Conn
		br *bufio.Reader
	}
	conns := make([]*conn, o.workers)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.c.Close()
			}
		}
	}()
	return parallel(o.agents, o.workers, func(w, i int) error {
		c := conns[w]
		if c == nil {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			c = &conn{c: nc, br: bufio.NewReader(nc)}
			conns[w] = c
		}
		body := tmpl.body(agentID(i))
		c.c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(c.c, "POST /heartbeat HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, len(body), body); err != nil {
			return err
		}
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			return err
		}
		rb, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(rb, []byte(`"status":"success"`)) {
			return fmt.Errorf("POST /heartbeat %s: %s %s", agentID(i), resp.Status, rb)
		}
		return nil
	})
}
