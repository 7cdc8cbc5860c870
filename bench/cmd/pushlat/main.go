// Command pushlat measures meshd's revocation push: how long from an
// operator's revoke returning until every one of -subs subscribers of
// GET /revocations/watch holds the revoked serial, and how large one
// pushed event is.
//
// It runs meshd in-process (server.New and Start over a fresh mesh CA and
// SQLite store in a temporary directory, TLS strict, 127.0.0.1 only) and
// subscribes -subs trust/watch Watchers, each on its own HTTP/1.1
// connection over TLS, each feeding its own trust.RevocationSet: the code
// services run. Then, -revocations times:
//
//	t_call := now
//	POST /admin/revoke on the admin unix socket
//	t0 := now (the revoke call returned)
//	t1[i] := the moment subscriber i's RevocationSet holds the serial
//	         (its OnChange hook, so no polling adds to the figure)
//
// and reports p50/p99/max of t1-t0 over all subscribers and revocations,
// and of t1-t_call, since meshd publishes before it answers and a fast
// subscriber can hold the serial before the call has returned (t1-t0 < 0).
//
// Baseline, in the same run: the same revocations pushed to a single
// subscriber before the others connect. One more raw subscriber reads
// the stream through a byte-counting connection and reports one event's
// SSE frame ("id: ...\nevent: revocation\ndata: ...\n\n") and what it cost
// on the wire (chunked encoding and TLS record included).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlite"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/watch"
)

// target is the bound on p99 of t1-t0.
const target = time.Second

// pushTimeout bounds the wait for every subscriber to hold one serial.
const pushTimeout = 10 * time.Second

type options struct {
	subs, revocations int
	jsonOut           bool
	cpuProfile        string
}

func main() {
	var o options
	flag.IntVar(&o.subs, "subs", 1000, "concurrent /revocations/watch subscribers")
	flag.IntVar(&o.revocations, "revocations", 5, "revocations to time")
	flag.BoolVar(&o.jsonOut, "json", false, "print one JSON line")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed revocations to this file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "pushlat:", err)
		os.Exit(1)
	}
}

// Stats summarises latencies in milliseconds.
type Stats struct {
	N      int     `json:"n"`
	Failed int     `json:"failed,omitempty"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

// Report is pushlat's output.
type Report struct {
	Subscribers int `json:"subscribers"`
	Revocations int `json:"revocations"`
	// FromReturn is t1-t0 over every subscriber and revocation.
	FromReturn Stats `json:"from_revoke_return"`
	// FromCall is t1-t_call.
	FromCall Stats `json:"from_revoke_call"`
	// PerRevocation is each revocation's p99 of t1-t0, in milliseconds.
	PerRevocation []float64 `json:"per_revocation_p99_ms"`
	// RevokeCall is how long the admin call took.
	RevokeCall Stats `json:"revoke_call"`
	// BaselineFromReturn and BaselineFromCall are FromReturn and FromCall
	// with one subscriber. With one, the event usually arrives before the
	// revoke call has returned, so the ratio is taken from the call.
	BaselineFromReturn Stats `json:"baseline_one_subscriber_from_revoke_return"`
	BaselineFromCall   Stats `json:"baseline_one_subscriber_from_revoke_call"`
	// FrameBytes is one event's SSE frame; WireBytes what the raw
	// subscriber read off the TCP connection for it.
	FrameBytes int    `json:"event_frame_bytes"`
	WireBytes  int    `json:"event_wire_bytes"`
	Frame      string `json:"event_frame"`
	// ConnectSeconds is how long the subscribers took to connect.
	ConnectSeconds float64 `json:"connect_seconds"`
	NoFile         uint64  `json:"rlimit_nofile"`
	Met            bool    `json:"target_met"`
}

func run(ctx context.Context, o options) error {
	nofile, err := raiseNoFile(uint64(2*o.subs + 512))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "pushlat-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := startMesh(ctx, dir)
	if err != nil {
		return err
	}
	defer m.close()

	// Serials to revoke: the baseline's, then the timed ones.
	serials := make([]string, 2*o.revocations)
	for i := range serials {
		is, err := m.authority.IssueAgent(ctx, fmt.Sprintf("victim%d", i), "bench")
		if err != nil {
			return err
		}
		serials[i] = is.Record.Serial
	}
	rep := Report{Subscribers: o.subs, Revocations: o.revocations, NoFile: nofile}

	raw, err := m.rawSubscribe(ctx)
	if err != nil {
		return err
	}
	defer raw.close()

	// Baseline: one Watcher, the same path.
	one, err := m.subscribe(ctx, 1)
	if err != nil {
		return err
	}
	baseReturn, baseCall, _, _, err := m.timeRevocations(ctx, one, serials[:o.revocations], raw)
	one.stop()
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	rep.BaselineFromReturn, rep.BaselineFromCall = stats(baseReturn, o.revocations-len(baseReturn)), stats(baseCall, 0)

	start := time.Now()
	subs, err := m.subscribe(ctx, o.subs)
	if err != nil {
		return err
	}
	defer subs.stop()
	rep.ConnectSeconds = time.Since(start).Seconds()
	// meshd's own count: every subscriber, plus the raw one.
	if n, err := m.watchers(ctx); err != nil || n != o.subs+1 {
		return fmt.Errorf("meshd counts %d open streams (%v), want %d", n, err, o.subs+1)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fromReturn, fromCall, calls, perRev, err := m.timeRevocations(ctx, subs, serials[o.revocations:], raw)
	if err != nil {
		return err
	}
	failed := o.subs*o.revocations - len(fromReturn)
	rep.FromReturn, rep.FromCall, rep.RevokeCall, rep.PerRevocation = stats(fromReturn, failed), stats(fromCall, failed), stats(calls, 0), perRev
	rep.Frame, rep.FrameBytes, rep.WireBytes = raw.frame, len(raw.frame), raw.wire
	rep.Met = failed == 0 && len(fromReturn) > 0 && rep.FromReturn.P99 < msOf(target)

	if o.jsonOut {
		return json.NewEncoder(os.Stdout).Encode(rep)
	}
	verdict := "met"
	if !rep.Met {
		verdict = "MISSED"
	}
	fmt.Printf("revocation push to %d subscribers (trust/watch Watchers, HTTP/1.1 over TLS, meshd in-process on 127.0.0.1, %d CPUs), %d revocations:\n",
		o.subs, runtime.GOMAXPROCS(0), o.revocations)
	s := rep.FromReturn
	fmt.Printf("  revoke returned -> set holds serial  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (n=%d failed=%d; target p99 < %v: %s)\n", s.P50, s.P99, s.Max, s.N, s.Failed, target, verdict)
	s = rep.FromCall
	fmt.Printf("  revoke called   -> set holds serial  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms\n", s.P50, s.P99, s.Max)
	fmt.Printf("  p99 per revocation (ms): %v\n", rep.PerRevocation)
	fmt.Printf("  revoke call: p50 %.2f ms  max %.2f ms\n", rep.RevokeCall.P50, rep.RevokeCall.Max)
	fmt.Printf("  baseline, 1 subscriber: from return p50 %.2f ms p99 %.2f ms; from call p50 %.2f ms p99 %.2f ms; from-call p99 ratio %d subscribers / 1: %.1fx\n",
		rep.BaselineFromReturn.P50, rep.BaselineFromReturn.P99, rep.BaselineFromCall.P50, rep.BaselineFromCall.P99, o.subs, ratio(rep.FromCall.P99, rep.BaselineFromCall.P99))
	fmt.Printf("  one pushed event: %d bytes of SSE frame, %d bytes on the wire (chunk framing + TLS record): %q\n", rep.FrameBytes, rep.WireBytes, rep.Frame)
	fmt.Printf("  %d subscribers connected in %.2f s; RLIMIT_NOFILE %d\n", o.subs, rep.ConnectSeconds, nofile)
	return nil
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// raiseNoFile lifts the soft RLIMIT_NOFILE to at least need (up to the
// hard limit; Go raises it to the hard limit at start already) and
// returns it.
func raiseNoFile(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < need && lim.Cur < lim.Max {
		lim.Cur = min(need, lim.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Cur, err)
		}
	}
	if lim.Cur < need {
		return lim.Cur, fmt.Errorf("RLIMIT_NOFILE is %d (hard %d), %d subscribers need about %d; raise it (ulimit -n) or pass fewer -subs", lim.Cur, lim.Max, need/2, need)
	}
	return lim.Cur, nil
}

func stats(d []time.Duration, failed int) Stats {
	if len(d) == 0 {
		return Stats{Failed: failed}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p int) float64 {
		i := (len(s)*p + 99) / 100
		return msOf(s[max(i-1, 0)])
	}
	return Stats{N: len(s), Failed: failed, P50: rank(50), P99: rank(99), Max: msOf(s[len(s)-1])}
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// mesh is an in-process meshd with its CA.
type mesh struct {
	st        *sqlite.Store
	authority *ca.CA
	srv       *server.Server
	cancel    context.CancelFunc
	roots     *x509.CertPool
	base      string
	admin     *http.Client
}

func startMesh(ctx context.Context, dir string) (*mesh, error) {
	cfg := ca.Config{RootDir: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "ca")}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	m := &mesh{}
	var err error
	if m.st, err = sqlite.Open(ctx, cfg.StorePath()); err != nil {
		return nil, err
	}
	if _, err := ca.Init(ctx, cfg, m.st); err != nil {
		return nil, err
	}
	if _, err := ca.IssueIntermediate(ctx, cfg, m.st); err != nil {
		return nil, err
	}
	if m.authority, err = ca.Open(ctx, cfg, m.st); err != nil {
		return nil, err
	}
	node, err := m.authority.IssueNode(ctx, "meshd", "localhost", "IP:127.0.0.1")
	if err != nil {
		return nil, err
	}
	cn := node.Cert.Subject.CommonName
	m.roots = x509.NewCertPool()
	m.roots.AddCert(m.authority.Root())
	sock := filepath.Join(dir, "admin.sock")
	m.srv, err = server.New(ctx, server.Config{
		Listen: "127.0.0.1:0", AdminSocket: sock, TLSMode: server.TLSStrict,
		CertFile: m.authority.Config().IssuedCertPath(cn), KeyFile: m.authority.Config().IssuedKeyPath(cn),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, m.st, m.authority)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	if err := m.srv.Start(sctx); err != nil {
		cancel()
		return nil, err
	}
	m.base = "https://" + m.srv.AgentAddr()
	m.admin = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return m, nil
}

func (m *mesh) close() {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m.srv.Shutdown(sctx)
	m.cancel()
	m.st.Close()
}

// revoke revokes serial through the admin API.
func (m *mesh) revoke(ctx context.Context, serial string) error {
	body, _ := json.Marshal(server.RevokeRequest{Target: serial, Reason: "keyCompromise"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://meshd/admin/revoke", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := m.admin.Do(req)
	if err != nil {
		return err
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin revoke: %s: %s", resp.Status, rb)
	}
	return nil
}

// watchers returns meshd's meshd_revocation_watchers gauge.
func (m *mesh) watchers(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://meshd/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := m.admin.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "meshd_revocation_watchers "); ok {
			var n int
			_, err := fmt.Sscan(v, &n)
			return n, err
		}
	}
	return 0, errors.New("no meshd_revocation_watchers in /metrics")
}

// subscribers are Watchers, each with its own RevocationSet and
// connection, and the moment each set took the serial being timed.
type subscribers struct {
	watchers []*watch.Watcher
	// target is the serial being timed; t1 holds, per subscriber, the
	// UnixNano at which its set held it (0: not yet).
	target  atomic.Pointer[string]
	t1      []atomic.Int64
	pending atomic.Int64
	all     chan struct{} // closed when pending reaches 0
	mu      sync.Mutex
	stop    func()
}

// subscribe connects n Watchers and waits until every one is connected.
func (m *mesh) subscribe(ctx context.Context, n int) (*subscribers, error) {
	s := &subscribers{t1: make([]atomic.Int64, n)}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	s.stop = func() { cancel(); wg.Wait() }
	for i := range n {
		set := &trust.RevocationSet{}
		set.OnChange(func() {
			target := s.target.Load()
			if target == nil || s.t1[i].Load() != 0 {
				return
			}
			if _, ok := set.Serial(*target); ok && s.t1[i].CompareAndSwap(0, time.Now().UnixNano()) {
				if s.pending.Add(-1) == 0 {
					s.mu.Lock()
					close(s.all)
					s.mu.Unlock()
				}
			}
		})
		// HTTP/1.1: a Transport with its own TLS config and no
		// ForceAttemptHTTP2 does not offer h2.
		w, err := watch.New(set, watch.Config{Server: m.base, Roots: m.roots,
			HTTPClient: &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: false}}})
		if err != nil {
			cancel()
			return nil, err
		}
		s.watchers = append(s.watchers, w)
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(wctx) }()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		up := 0
		for _, w := range s.watchers {
			if w.Connected() {
				up++
			}
		}
		if up == n {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("only %d of %d subscribers connected within 60 s", up, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// timeRevocations revokes each serial in turn and times its arrival in
// every subscriber's set.
func (m *mesh) timeRevocations(ctx context.Context, s *subscribers, serials []string, raw *rawSub) (fromReturn, fromCall, calls []time.Duration, perRev []float64, err error) {
	for _, serial := range serials {
		for i := range s.t1 {
			s.t1[i].Store(0)
		}
		s.pending.Store(int64(len(s.t1)))
		s.all = make(chan struct{})
		s.target.Store(&serial)
		tCall := time.Now()
		if err := m.revoke(ctx, serial); err != nil {
			return nil, nil, nil, nil, err
		}
		t0 := time.Now()
		calls = append(calls, t0.Sub(tCall))
		select {
		case <-s.all:
		case <-time.After(pushTimeout):
		case <-ctx.Done():
			return nil, nil, nil, nil, ctx.Err()
		}
		s.target.Store(nil)
		var these []time.Duration
		for i := range s.t1 {
			if ns := s.t1[i].Load(); ns != 0 {
				t1 := time.Unix(0, ns)
				these = append(these, t1.Sub(t0))
				fromCall = append(fromCall, t1.Sub(tCall))
			}
		}
		fromReturn = append(fromReturn, these...)
		perRev = append(perRev, stats(these, 0).P99)
		if err := raw.await(serial, pushTimeout); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	return fromReturn, fromCall, calls, perRev, nil
}

// rawSub reads the stream over a connection that counts the bytes it
// reads, to report one event's frame and its cost on the wire.
type rawSub struct {
	resp   *http.Response
	conn   *countingConn
	events chan rawEvent
	cancel context.CancelFunc
	// mark is the bytes read when the previous event ended.
	mark int64
	// Of the last event awaited:
	frame string
	wire  int
}

type rawEvent struct {
	frame string
	wire  int64 // bytes read off the connection when the frame ended
}

type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (m *mesh) rawSubscribe(ctx context.Context) (*rawSub, error) {
	ctx, cancel := context.WithCancel(ctx)
	r := &rawSub{events: make(chan rawEvent, 64), cancel: cancel}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: m.roots},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			r.conn = &countingConn{Conn: c}
			return r.conn, nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+"/revocations/watch", nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
		cancel()
		return nil, fmt.Errorf("raw subscriber: %s over %s", resp.Status, resp.Proto)
	}
	r.resp = resp
	go func() {
		br := bufio.NewReader(resp.Body)
		var frame strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				close(r.events)
				return
			}
			if strings.HasPrefix(line, ":") {
				continue // keep-alive comment
			}
			frame.WriteString(line)
			if line == "\n" {
				r.events <- rawEvent{frame: frame.String(), wire: r.conn.n.Load()}
				frame.Reset()
			}
		}
	}()
	return r, nil
}

// await reads events until the one of serial, and records its frame and
// the bytes read since the previous event.
func (r *rawSub) await(serial string, within time.Duration) error {
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				return errors.New("raw subscriber: the stream ended")
			}
			wire := ev.wire - r.mark
			r.mark = ev.wire
			if strings.Contains(ev.frame, `"serial":"`+serial+`"`) {
				r.frame, r.wire = ev.frame, int(wire)
				return nil
			}
		case <-timeout:
			return fmt.Errorf("raw subscriber: no event for %s within %s", serial, within)
		}
	}
}

func (r *rawSub) close() {
	r.cancel()
	if r.resp != nil {
		r.resp.Body.Close()
	}
}
