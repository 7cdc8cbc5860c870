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
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/internal/ca"
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
	benchmesh.Main("pushlat", 2*time.Minute, func(ctx context.Context) error { return run(ctx, o) })
}

// Report is pushlat's output.
type Report struct {
	Subscribers int `json:"subscribers"`
	Revocations int `json:"revocations"`
	// FromReturn is t1-t0 over every subscriber and revocation.
	FromReturn benchmesh.Stats `json:"from_revoke_return"`
	// FromCall is t1-t_call.
	FromCall benchmesh.Stats `json:"from_revoke_call"`
	// PerRevocation is each revocation's p99 of t1-t0, in milliseconds.
	PerRevocation []float64 `json:"per_revocation_p99_ms"`
	// RevokeCall is how long the admin call took.
	RevokeCall benchmesh.Stats `json:"revoke_call"`
	// BaselineFromReturn and BaselineFromCall are FromReturn and FromCall
	// with one subscriber. With one, the event usually arrives before the
	// revoke call has returned, so the ratio is taken from the call.
	BaselineFromReturn benchmesh.Stats `json:"baseline_one_subscriber_from_revoke_return"`
	BaselineFromCall   benchmesh.Stats `json:"baseline_one_subscriber_from_revoke_call"`
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
	bm, err := benchmesh.Start(ctx, dir, benchmesh.Config{MaxWatchStreams: o.subs + 16})
	if err != nil {
		return err
	}
	defer bm.Close()
	m := &mesh{Mesh: bm, base: "https://" + bm.Addr()}
	// meshd serves the stream (strict mode) to verified callers only.
	if m.cert, err = bm.ClientCert(ctx, "subscriber"); err != nil {
		return err
	}

	// Serials to revoke: the baseline's, then the timed ones.
	serials := make([]string, 2*o.revocations)
	for i := range serials {
		is, err := m.CA.Sign(ctx, ca.AgentRequest(fmt.Sprintf("victim%d", i), "bench"), ca.WithGeneratedKey())
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
	rep.BaselineFromReturn, rep.BaselineFromCall = benchmesh.Summarize(baseReturn, o.revocations-len(baseReturn)), benchmesh.Summarize(baseCall, 0)

	start := time.Now()
	subs, err := m.subscribe(ctx, o.subs)
	if err != nil {
		return err
	}
	defer subs.stop()
	rep.ConnectSeconds = time.Since(start).Seconds()
	// meshd's own count: every subscriber, plus the raw one.
	if n, err := benchmesh.Gauge(ctx, m.Admin, "http://meshd/metrics", "meshd_revocation_watchers"); err != nil || n != o.subs+1 {
		return fmt.Errorf("meshd counts %d open streams (%v), want %d", n, err, o.subs+1)
	}
	stopProfile, err := benchmesh.StartCPUProfile(o.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	fromReturn, fromCall, calls, perRev, err := m.timeRevocations(ctx, subs, serials[o.revocations:], raw)
	if err != nil {
		return err
	}
	failed := o.subs*o.revocations - len(fromReturn)
	rep.FromReturn, rep.FromCall, rep.RevokeCall, rep.PerRevocation = benchmesh.Summarize(fromReturn, failed), benchmesh.Summarize(fromCall, failed), benchmesh.Summarize(calls, 0), perRev
	rep.Frame, rep.FrameBytes, rep.WireBytes = raw.frame, len(raw.frame), raw.wire
	rep.Met = failed == 0 && len(fromReturn) > 0 && rep.FromReturn.P99 < benchmesh.Millis(target)

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

// mesh is an in-process meshd and the URL of its agent port.
type mesh struct {
	*benchmesh.Mesh
	base string
	// cert is the subscribers' client certificate.
	cert tls.Certificate
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
			if _, ok := set.Serial("", *target); ok && s.t1[i].CompareAndSwap(0, time.Now().UnixNano()) {
				if s.pending.Add(-1) == 0 {
					s.mu.Lock()
					close(s.all)
					s.mu.Unlock()
				}
			}
		})
		// HTTP/1.1: a Transport with its own TLS config and no
		// ForceAttemptHTTP2 does not offer h2.
		w, err := watch.New(set, watch.Config{Server: m.base, Roots: m.Roots,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &m.cert, nil },
			HTTPClient:           &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: false}}})
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
		if err := m.Revoke(ctx, serial); err != nil {
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
		perRev = append(perRev, benchmesh.Summarize(these, 0).P99)
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
		TLSClientConfig: &tls.Config{RootCAs: m.Roots, Certificates: []tls.Certificate{m.cert}},
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
