// Command hbload is the heartbeat load generator: it drives POST /heartbeat
// (or HEAD /heartbeat/{id}) at an MCP Mesh-compatible registry over mTLS,
// one agent certificate per connection, and reports throughput, latency
// percentiles and errors. With -method raw it POSTs any body to any path
// instead (bench/renew.sh drives certificate renewal at meshd and step-ca
// with it), and any 2xx answer counts as success. With -requests DIR it
// sends each request of DIR once, shared among the connections, and stops
// when they are used up: one-time credentials such as join tokens; with
// -certs none its connections present no client certificate.
//
// It speaks HTTP/1.1 directly on the TLS connection with requests built
// once per connection, so that on a small shared machine the generator
// spends as little CPU as it can and the server under test gets the rest.
// Every response is checked: a POST must answer 200 with "status":"success"
// (MCP Mesh reports validation failures as 200 with "status":"error"), a
// HEAD 200 or 202.
//
// Each run is bounded by -d and, per connection, by -n.
//
//	hbload -url https://127.0.0.1:8000 -ca root.pem -certs agents/ \
//	       -payload bench/mcpmesh/heartbeat.json -c 32 -d 10s
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
)

// maxDuration bounds a run whose -d is 0: every load loop here ends.
const maxDuration = 2 * time.Minute

type options struct {
	url, caFile, certDir, payloadFile string
	conns, perConn                    int
	duration, timeout                 time.Duration
	newConn, jsonOut, varyTimestamp   bool
	method, label                     string
	path, body, requests              string
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "https://127.0.0.1:8000", "registry base URL (https)")
	flag.StringVar(&o.caFile, "ca", "", "PEM bundle that verifies the server's certificate (required)")
	flag.StringVar(&o.certDir, "certs", "", "directory of <agent-id>.crt and <agent-id>.key, one per connection (required); none: no client certificate")
	flag.StringVar(&o.payloadFile, "payload", "bench/mcpmesh/heartbeat.json", "heartbeat JSON; its agent_id is replaced per connection")
	flag.IntVar(&o.conns, "c", 32, "concurrent connections (at most the number of certificates)")
	flag.IntVar(&o.perConn, "n", 0, "requests per connection; 0 means until -d ends")
	flag.DurationVar(&o.duration, "d", 10*time.Second, "how long to run; 0 means until -n is reached (at most 2m)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "per-request timeout")
	flag.BoolVar(&o.newConn, "new-conn", false, "a fresh TLS connection (full mutual handshake, no resumption) per request")
	flag.StringVar(&o.method, "method", "post", "post (POST /heartbeat), head (HEAD /heartbeat/{id}) or raw (POST -body to -path)")
	flag.StringVar(&o.path, "path", "/renew", "raw: the path to POST to")
	flag.StringVar(&o.body, "body", "", "raw: the body to POST: a file, or a directory holding <id>.body for each <id>.crt (empty: no body)")
	flag.StringVar(&o.requests, "requests", "", "raw: a directory of one-time requests, <n>.body with optional <n>.headers (header lines), each sent once by whichever connection is free")
	flag.BoolVar(&o.varyTimestamp, "vary-timestamp", false, "POST: set the payload's timestamp to the current time in every request, as an agent stamping each heartbeat would")
	flag.BoolVar(&o.jsonOut, "json", false, "print one JSON line instead of text")
	flag.StringVar(&o.label, "label", "", "name of the target, echoed in the report")
	flag.Parse()
	err := run(o)
	if errors.Is(err, errFailures) {
		os.Exit(3)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hbload:", err)
		os.Exit(1)
	}
}

// methodRaw is -method raw: POST -body to -path, success on any 2xx.
const methodRaw = "RAW"

// errFailures reports a run in which some request failed; the report is
// printed all the same, and hbload exits 3.
var errFailures = errors.New("some requests failed")

// agent is one connection's identity and its prebuilt request.
type agent struct {
	id  string
	tls *tls.Config
	req []byte
	// With -vary-timestamp, the request is rebuilt each time from the
	// headers before Content-Length and the body around the timestamp.
	vary            bool
	head, pre, post []byte
}

// Report is the outcome of a run, as printed with -json.
type Report struct {
	Label      string         `json:"label,omitempty"`
	URL        string         `json:"url"`
	Mode       string         `json:"mode"`
	Method     string         `json:"method"`
	Vary       bool           `json:"vary_timestamp,omitempty"`
	Conns      int            `json:"conns"`
	Seconds    float64        `json:"seconds"`
	OK         int            `json:"ok"`
	Errors     int            `json:"errors"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	Statuses   map[string]int `json:"statuses"`
	RPS        float64        `json:"rps"`
	P50ms      float64        `json:"p50_ms"`
	P99ms      float64        `json:"p99_ms"`
	MaxMs      float64        `json:"max_ms"`
	// ClientCPUus is the CPU time (user and system) this load generator
	// spent per successful request: on a machine it shares with the
	// server, what the server's throughput also pays for.
	ClientCPUus float64 `json:"client_cpu_us"`
}

func run(o options) error {
	if o.caFile == "" || o.certDir == "" {
		return errors.New("-ca and -certs are required")
	}
	if o.conns < 1 {
		return errors.New("-c must be at least 1")
	}
	if o.duration <= 0 && o.perConn <= 0 {
		return errors.New("give -d, -n or both: every run is bounded")
	}
	if o.duration <= 0 || o.duration > maxDuration {
		o.duration = maxDuration
	}
	o.method = strings.ToUpper(o.method)
	if o.method != http.MethodPost && o.method != http.MethodHead && o.method != methodRaw {
		return fmt.Errorf("-method %q: want post, head or raw", o.method)
	}
	if o.method == methodRaw && !strings.HasPrefix(o.path, "/") {
		return fmt.Errorf("-path %q: want an absolute path", o.path)
	}
	u, err := url.Parse(o.url)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("-url %q: want https://host:port", o.url)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	agents, err := loadAgents(o, u)
	if err != nil {
		return err
	}
	var once *oneTime
	if o.requests != "" {
		if o.method != methodRaw {
			return errors.New("-requests needs -method raw")
		}
		if once, err = loadRequests(o.requests, o.path, u.Host); err != nil {
			return err
		}
	}

	results := make([]workerResult, len(agents))
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	start := time.Now()
	deadline := start.Add(o.duration)
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := worker{agent: a, addr: addr, method: o.method, timeout: o.timeout, newConn: o.newConn, once: once}
			results[i] = w.run(o.perConn, deadline)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	rep := summarize(o, results, elapsed)
	if rep.OK > 0 {
		rep.ClientCPUus = float64((cpuTime() - cpu0).Microseconds()) / float64(rep.OK)
	}
	for _, r := range results {
		if r.firstErr != "" {
			fmt.Fprintf(os.Stderr, "hbload: %s: first error: %s\n", r.id, r.firstErr)
			break
		}
	}
	if o.jsonOut {
		if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
			return err
		}
		return failures(rep)
	}
	fmt.Printf("%s %s %s conns=%d time=%.2fs ok=%d errors=%d rps=%.1f p50=%.3fms p99=%.3fms max=%.3fms client-cpu-us=%.0f statuses=%v",
		label(rep), rep.Mode, rep.Method, rep.Conns, rep.Seconds, rep.OK, rep.Errors, rep.RPS, rep.P50ms, rep.P99ms, rep.MaxMs, rep.ClientCPUus, rep.Statuses)
	if len(rep.ErrorKinds) > 0 {
		fmt.Printf(" error_kinds=%v", rep.ErrorKinds)
	}
	fmt.Println()
	return failures(rep)
}

// cpuTime returns the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func failures(rep Report) error {
	if rep.Errors > 0 || rep.OK == 0 {
		return errFailures
	}
	return nil
}

func label(r Report) string {
	if r.Label != "" {
		return r.Label
	}
	return r.URL
}

// loadAgents reads the first o.conns certificate/key pairs (by file name)
// and builds each one's TLS configuration and request.
func loadAgents(o options, u *url.URL) ([]agent, error) {
	caPEM, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", o.caFile)
	}
	if o.certDir == "none" {
		out := make([]agent, o.conns)
		for i := range out {
			out[i] = agent{id: fmt.Sprintf("conn-%d", i), tls: clientTLS(roots, u, nil)}
		}
		return out, nil
	}
	crts, err := filepath.Glob(filepath.Join(o.certDir, "*.crt"))
	if err != nil {
		return nil, err
	}
	slices.SortFunc(crts, naturalLess)
	if len(crts) < o.conns {
		return nil, fmt.Errorf("-c %d needs %d certificates; %s has %d *.crt", o.conns, o.conns, o.certDir, len(crts))
	}
	var payload map[string]any
	if o.method == http.MethodPost {
		raw, err := os.ReadFile(o.payloadFile)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(raw, &payload); err != nil {
			return nil, fmt.Errorf("%s: %w", o.payloadFile, err)
		}
	}
	out := make([]agent, 0, o.conns)
	for _, crt := range crts[:o.conns] {
		id := strings.TrimSuffix(filepath.Base(crt), ".crt")
		cert, err := tls.LoadX509KeyPair(crt, strings.TrimSuffix(crt, ".crt")+".key")
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", id, err)
		}
		cfg := clientTLS(roots, u, []tls.Certificate{cert})
		var b bytes.Buffer
		switch o.method {
		case http.MethodPost:
			payload["agent_id"] = id
			const mark = "@@hbload-timestamp@@"
			if o.varyTimestamp {
				payload["timestamp"] = mark
			}
			body, err := json.Marshal(payload)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, "POST /heartbeat HTTP/1.1\r\nHost: %s\r\nUser-Agent: hbload\r\nContent-Type: application/json\r\n", u.Host)
			if o.newConn {
				b.WriteString("Connection: close\r\n")
			}
			if o.varyTimestamp {
				pre, post, _ := bytes.Cut(body, []byte(mark))
				out = append(out, agent{id: id, tls: cfg, vary: true, head: b.Bytes(), pre: pre, post: post})
				continue
			}
			fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
			b.Write(body)
		case methodRaw:
			body, err := rawBody(o.body, id)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: hbload\r\nContent-Type: application/json\r\n", o.path, u.Host)
			if o.newConn {
				b.WriteString("Connection: close\r\n")
			}
			fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
			b.Write(body)
		case http.MethodHead:
			fmt.Fprintf(&b, "HEAD /heartbeat/%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: hbload\r\n", url.PathEscape(id), u.Host)
			if o.newConn {
				b.WriteString("Connection: close\r\n")
			}
			b.WriteString("\r\n")
		}
		out = append(out, agent{id: id, tls: cfg, req: b.Bytes()})
	}
	return out, nil
}

// clientTLS is a connection's TLS configuration, presenting certs.
func clientTLS(roots *x509.CertPool, u *url.URL, certs []tls.Certificate) *tls.Config {
	return &tls.Config{
		RootCAs:      roots,
		Certificates: certs,
		ServerName:   u.Hostname(),
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
		// No session cache: with -new-conn every handshake is a full
		// mutual one.
		SessionTicketsDisabled: true,
	}
}

// oneTime is -requests: requests each sent once, by whichever connection
// takes it first.
type oneTime struct {
	reqs [][]byte
	next atomic.Int64
}

// take returns the next unsent request, or nil once all are sent.
func (o *oneTime) take() []byte {
	if i := o.next.Add(1) - 1; i < int64(len(o.reqs)) {
		return o.reqs[i]
	}
	return nil
}

// loadRequests builds a POST to path for every <n>.body in dir, with the
// header lines of <n>.headers when there is one.
func loadRequests(dir, path, host string) (*oneTime, error) {
	bodies, err := filepath.Glob(filepath.Join(dir, "*.body"))
	if err != nil {
		return nil, err
	}
	if len(bodies) == 0 {
		return nil, fmt.Errorf("-requests %s holds no *.body", dir)
	}
	slices.SortFunc(bodies, naturalLess)
	once := &oneTime{reqs: make([][]byte, 0, len(bodies))}
	for _, f := range bodies {
		body, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		headers, err := os.ReadFile(strings.TrimSuffix(f, ".body") + ".headers")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: hbload\r\nContent-Type: application/json\r\n", path, host)
		for line := range strings.Lines(string(headers)) {
			if line = strings.TrimSpace(line); line != "" {
				b.WriteString(line + "\r\n")
			}
		}
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
		b.Write(body)
		once.reqs = append(once.reqs, b.Bytes())
	}
	return once, nil
}

// rawBody returns -method raw's body for connection id: the file at path,
// or <id>.body in the directory at path, or nothing when path is empty.
func rawBody(path, id string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		path = filepath.Join(path, id+".body")
	}
	return os.ReadFile(path)
}

// naturalLess orders agent-9 before agent-10.
func naturalLess(a, b string) int {
	for a != "" && b != "" {
		da, db := leadingDigits(a), leadingDigits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func leadingDigits(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// worker is one connection's request loop.
type worker struct {
	agent
	addr    string
	method  string
	timeout time.Duration
	newConn bool

	conn net.Conn
	br   *bufio.Reader
	body bytes.Buffer
	// once, with -requests, hands out the requests to send.
	once *oneTime
}

type workerResult struct {
	id        string
	ok        int
	latencies []time.Duration
	statuses  map[int]int
	errs      map[string]int
	firstErr  string
}

func (w *worker) run(n int, deadline time.Time) workerResult {
	res := workerResult{id: w.id, statuses: map[int]int{}, errs: map[string]int{}}
	if n > 0 {
		res.latencies = make([]time.Duration, 0, n)
	} else {
		res.latencies = make([]time.Duration, 0, 1<<14)
	}
	fail := func(kind string, err error) {
		res.errs[kind]++
		if res.firstErr == "" {
			res.firstErr = kind + ": " + err.Error()
		}
	}
	probe := &http.Request{Method: w.method}
	if w.method == methodRaw {
		probe.Method = http.MethodPost
	}
	for i := 0; (n == 0 || i < n) && time.Now().Before(deadline); i++ {
		t0 := time.Now()
		if w.conn == nil {
			if err := w.dial(t0); err != nil {
				fail("dial", err)
				// A refused dial returns at once; do not spin on it.
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		w.conn.SetDeadline(t0.Add(w.timeout))
		req := w.req
		if w.once != nil {
			if req = w.once.take(); req == nil {
				break
			}
		}
		if w.vary {
			req = w.stamped(req[:0], t0)
			w.req = req
		}
		if _, err := w.conn.Write(req); err != nil {
			fail("write", err)
			w.close()
			continue
		}
		resp, err := http.ReadResponse(w.br, probe)
		if err != nil {
			fail("read", err)
			w.close()
			continue
		}
		w.body.Reset()
		_, err = w.body.ReadFrom(resp.Body)
		resp.Body.Close()
		lat := time.Since(t0)
		if err != nil {
			fail("read_body", err)
			w.close()
			continue
		}
		res.statuses[resp.StatusCode]++
		switch {
		case w.method == methodRaw && (resp.StatusCode < 200 || resp.StatusCode > 299):
			fail(fmt.Sprintf("status_%d", resp.StatusCode), fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(w.body.Bytes())))
		case w.method == methodRaw:
			res.ok++
			res.latencies = append(res.latencies, lat)
		case w.method == http.MethodPost && resp.StatusCode != http.StatusOK,
			w.method == http.MethodHead && resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted:
			fail(fmt.Sprintf("status_%d", resp.StatusCode), fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(w.body.Bytes())))
		case w.method == http.MethodPost && !bytes.Contains(w.body.Bytes(), []byte(`"status":"success"`)):
			fail("not_success", fmt.Errorf("200 without \"status\":\"success\": %s", bytes.TrimSpace(w.body.Bytes())))
		default:
			res.ok++
			res.latencies = append(res.latencies, lat)
		}
		if w.newConn || resp.Close {
			w.close()
		}
	}
	w.close()
	return res
}

// stamped appends the request with timestamp t to buf.
func (w *worker) stamped(buf []byte, t time.Time) []byte {
	ts := t.UTC().Format(time.RFC3339Nano)
	buf = append(buf, w.head...)
	buf = fmt.Appendf(buf, "Content-Length: %d\r\n\r\n", len(w.pre)+len(ts)+len(w.post))
	buf = append(buf, w.pre...)
	buf = append(buf, ts...)
	return append(buf, w.post...)
}

// dial opens a TLS connection and completes the handshake, so that the
// handshake is counted in the latency of the request that needed it.
func (w *worker) dial(t0 time.Time) error {
	d := net.Dialer{Timeout: w.timeout}
	raw, err := d.Dial("tcp", w.addr)
	if err != nil {
		return err
	}
	if tc, ok := raw.(*net.TCPConn); ok && w.newConn {
		// Closing with RST leaves no TIME_WAIT behind, so thousands of
		// connections a second do not run out of local ports.
		tc.SetLinger(0)
	}
	c := tls.Client(raw, w.tls)
	c.SetDeadline(t0.Add(w.timeout))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return err
	}
	w.conn = c
	if w.br == nil {
		w.br = bufio.NewReaderSize(c, 8<<10)
	} else {
		w.br.Reset(c)
	}
	return nil
}

func (w *worker) close() {
	if w.conn != nil {
		if w.newConn {
			// The response is read in full; skip close_notify and reset.
			w.conn.(*tls.Conn).NetConn().Close()
		} else {
			w.conn.Close()
		}
		w.conn = nil
	}
}

func summarize(o options, results []workerResult, elapsed time.Duration) Report {
	rep := Report{Label: o.label, URL: o.url, Mode: "keepalive", Method: o.method, Vary: o.varyTimestamp, Conns: len(results),
		Seconds: elapsed.Seconds(), ErrorKinds: map[string]int{}, Statuses: map[string]int{}}
	if o.newConn {
		rep.Mode = "newconn"
	}
	var all []time.Duration
	for _, r := range results {
		rep.OK += r.ok
		all = append(all, r.latencies...)
		for k, v := range r.errs {
			rep.ErrorKinds[k] += v
			rep.Errors += v
		}
		for k, v := range r.statuses {
			rep.Statuses[fmt.Sprint(k)] += v
		}
	}
	if len(rep.ErrorKinds) == 0 {
		rep.ErrorKinds = nil
	}
	rep.RPS = float64(rep.OK) / elapsed.Seconds()
	lat := benchmesh.Summarize(all, 0)
	rep.P50ms, rep.P99ms, rep.MaxMs = lat.P50, lat.P99, lat.Max
	return rep
}
