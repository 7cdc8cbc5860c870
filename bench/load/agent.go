package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// requestTimeout bounds one request of an agent.
const requestTimeout = 10 * time.Second

// agent is one simulated MCP Mesh agent: its own certificate and its own
// kept-alive TLS connection to one meshd, on which it speaks HTTP/1.1
// directly with requests built once, so that the generator spends as
// little of the shared machine's CPU as it can.
type agent struct {
	// id is the agent_id the agent claims; its certificate is
	// <id>@bench, issued by the mesh CA, which alone vouches for it
	// (meshd's localca binding is exact: the CN's agent part).
	id      string
	serial  string // its certificate's, lowercase hex, as the watch stream names it
	replica int
	addr    string
	tls     *tls.Config
	conn    net.Conn
	br      *bufio.Reader
	head    []byte // HEAD /heartbeat/{id}
	changes int    // how many times its tools changed
	// provides is the shared capability the agent offers ("" for
	// none), needs the ones its get_forecast tool depends on: the
	// dependencies a mesh's agents declare on a few of them.
	provides string
	needs    []string
	// deps is the dependencies_resolved of its last POST answer, and
	// body the buffer answers are read into.
	deps, body []byte

	// revoked is set by the revoker before it calls revoke: from then on
	// a refusal of this agent is expected. wake carries the time the
	// revocation was acknowledged.
	revoked atomic.Bool
	wake    chan time.Time

	// Owned by the agent's goroutine until run returns.
	headLat, postLat []time.Duration
	evicted          time.Duration // ack to refusal; valid when refusedSeen
	refusedSeen      bool
}

func newAgent(id, serial string, replica int, addr string, cfg *tls.Config, provides string, needs []string) *agent {
	return &agent{id: id, serial: serial, replica: replica, addr: addr, tls: cfg, wake: make(chan time.Time, 1),
		head:     fmt.Appendf(nil, "HEAD %s/%s HTTP/1.1\r\nHost: localhost\r\n\r\n", meshapi.PathHeartbeat, id),
		provides: provides, needs: needs}
}

// sharedCapability is the name of shared capability i.
func sharedCapability(i int) string { return fmt.Sprintf("shared%03d", i) }

// roles returns what agent i of a fleet offers and needs under cfg: one
// agent in 1/cfg.Providers offers a shared capability, in turn; every
// agent depends on one or two of them (by its index, so a run's
// dependencies are the same every time). None with cfg.Providers
// negative.
func roles(i int, cfg Config) (provides string, needs []string) {
	if cfg.Providers < 0 {
		return "", nil
	}
	stride := max(1, int(math.Round(1/cfg.Providers)))
	n := cfg.Capabilities
	if i%stride == 0 {
		provides = sharedCapability(i / stride % n)
	}
	needs = []string{sharedCapability(i * 7 % n)}
	if second := sharedCapability((i*13 + 5) % n); i%2 == 1 && second != needs[0] {
		needs = append(needs, second)
	}
	return provides, needs
}

// registration is the agent's MCP Mesh heartbeat body; version changes
// its tools (a new tool version and description), as an agent
// redeployed or reconfigured sends.
func (a *agent) registration() []byte {
	v := fmt.Sprintf("1.0.%d", a.changes)
	tool := func(fn, capability string, tags ...string) map[string]any {
		return map[string]any{"function_name": fn, "capability": capability, "version": v, "tags": tags,
			"description": fmt.Sprintf("%s of %s, revision %d", capability, a.id, a.changes),
			"inputSchema": map[string]any{"type": "object", "properties": map[string]any{"location": map[string]any{"type": "string"}}}}
	}
	forecast := tool("get_forecast", "weather_forecast", "weather", "forecast")
	if len(a.needs) > 0 {
		deps := make([]any, len(a.needs))
		for i, c := range a.needs {
			deps[i] = map[string]any{"capability": c}
		}
		forecast["dependencies"] = deps
	}
	tools := []any{forecast, tool("current_conditions", "weather_current", "weather")}
	if a.provides != "" {
		tools = append(tools, tool("serve_"+a.provides, a.provides))
	}
	body, _ := json.Marshal(map[string]any{
		"agent_id": a.id, "agent_type": "mcp_agent", "name": a.id, "version": v, "runtime": "python",
		"http_host": "127.0.0.1", "http_port": 9000, "namespace": "default", "tools": tools,
	})
	return fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", meshapi.PathHeartbeat, len(body), body)
}

// dial opens the agent's connection with a full handshake.
func (a *agent) dial() error {
	d := &net.Dialer{Timeout: requestTimeout}
	c, err := tls.DialWithDialer(d, "tcp", a.addr, a.tls)
	if err != nil {
		return err
	}
	if a.conn != nil {
		a.conn.Close()
	}
	a.conn, a.br = c, bufio.NewReaderSize(c, 1024)
	return nil
}

func (a *agent) close() {
	if a.conn != nil {
		a.conn.Close()
	}
}

// answer is one response: its status and meshd's X-Reason, or the
// transport error; body is the agent's buffer, valid until its next
// request.
type answer struct {
	status int
	reason string
	body   []byte
	err    error
	// changed is set on a POST answer whose dependencies_resolved is
	// not the one the agent received before.
	changed bool
}

// do sends req and reads meshd's answer on the agent's connection.
func (a *agent) do(req []byte, method string) answer {
	a.conn.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := a.conn.Write(req); err != nil {
		return answer{err: err}
	}
	resp, err := http.ReadResponse(a.br, &http.Request{Method: method})
	if err != nil {
		return answer{err: err}
	}
	buf := bytes.NewBuffer(a.body[:0])
	_, err = buf.ReadFrom(resp.Body)
	a.body = buf.Bytes()
	resp.Body.Close()
	if err == nil && resp.Close {
		// meshd closes the connection after this answer: the next request
		// finds it closed; say so now.
		err = errClosedByServer
	}
	return answer{status: resp.StatusCode, reason: resp.Header.Get("X-Reason"), body: a.body, err: err}
}

// received records the dependencies_resolved of a POST answer, and
// reports whether it differs from the one the agent received before.
func (a *agent) received(body []byte) bool {
	deps := body
	if i := bytes.Index(deps, []byte(`"dependencies_resolved":`)); i >= 0 {
		deps = deps[i:]
	}
	if i := bytes.Index(deps, []byte(`,"llm_tools"`)); i >= 0 {
		deps = deps[:i]
	}
	changed := !bytes.Equal(deps, a.deps)
	a.deps = append(a.deps[:0], deps...)
	return changed
}

var errClosedByServer = errors.New("meshd closed the connection after answering")

// register is the agent's POST /heartbeat.
func (a *agent) register() answer {
	ans := a.do(a.registration(), http.MethodPost)
	if ans.err == nil && ans.status == http.StatusOK {
		ans.changed = a.received(ans.body)
	}
	return ans
}

// refusal names an answer that is not success, "" for success: meshd's
// X-Reason (or the status) for an answer, "conn:closed" for a
// connection meshd closed, "conn:timeout" or "conn:error" otherwise.
func (ans answer) refusal(method string) string {
	switch {
	case ans.err == nil && (ans.status == http.StatusOK || method == http.MethodHead && ans.status == http.StatusAccepted):
		return ""
	case ans.err == nil:
		if ans.reason != "" {
			return fmt.Sprintf("%d %s", ans.status, ans.reason)
		}
		return fmt.Sprint(ans.status)
	case errors.Is(ans.err, io.EOF), errors.Is(ans.err, io.ErrUnexpectedEOF), errors.Is(ans.err, syscall.ECONNRESET),
		errors.Is(ans.err, net.ErrClosed), errors.Is(ans.err, syscall.EPIPE), errors.Is(ans.err, errClosedByServer):
		return "conn:closed"
	case errors.Is(ans.err, os.ErrDeadlineExceeded):
		return "conn:timeout"
	default:
		return "conn:error"
	}
}

// run heartbeats every interval (jittered ±10 %, the first at phase)
// until ctx ends, or until meshd evicts the agent after its revocation.
func (a *agent) run(ctx context.Context, r *runState, phase time.Duration) {
	t := time.NewTimer(phase)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ack := <-a.wake:
			a.awaitEviction(ctx, r, ack)
			return
		case <-t.C:
		}
		a.heartbeat(r)
		jitter := time.Duration(rand.Int64N(int64(r.cfg.Interval)/5+1)) - r.cfg.Interval/10
		t.Reset(r.cfg.Interval + jitter)
	}
}

// heartbeat is one cycle of MCP Mesh's protocol: HEAD /heartbeat/{id},
// and POST /heartbeat when meshd answers 202 (it wants the full
// registration) or when the agent's tools changed (ChangeRate of the
// cycles).
func (a *agent) heartbeat(r *runState) {
	if a.conn == nil && !a.redial(r) {
		return
	}
	if rand.Float64() < r.cfg.ChangeRate {
		a.changes++
		a.post(r)
		return
	}
	start := time.Now()
	ans := a.do(a.head, http.MethodHead)
	if why := ans.refusal(http.MethodHead); why != "" {
		a.refused(r, "HEAD", why)
		return
	}
	a.headLat = append(a.headLat, time.Since(start))
	r.count(start)
	if ans.status != http.StatusAccepted {
		r.headOK.Add(1)
		return
	}
	r.reregistered.Add(1)
	if ans := a.post(r); ans.err == nil && ans.status == http.StatusOK && !ans.changed {
		// Asked to POST, and the answer told the agent nothing new.
		r.needless.Add(1)
	}
}

func (a *agent) post(r *runState) answer {
	start := time.Now()
	ans := a.register()
	if why := ans.refusal(http.MethodPost); why != "" {
		a.refused(r, "POST", why)
		return ans
	}
	a.postLat = append(a.postLat, time.Since(start))
	r.count(start)
	return ans
}

// refused counts a refusal, expected when the agent has been revoked,
// and drops a connection that failed: the next cycle dials again, as an
// agent would.
func (a *agent) refused(r *runState, method, why string) {
	r.refuse(a.revoked.Load(), method+" "+why)
	if strings.HasPrefix(why, "conn:") {
		a.close()
		a.conn = nil
	}
}

func (a *agent) redial(r *runState) bool {
	if err := a.dial(); err != nil {
		a.refused(r, "dial", "conn:error")
		return false
	}
	r.redials.Add(1)
	return true
}

// awaitEviction is the revoked agent finding out, the way an agent
// does: it sends HEAD on its open connection until meshd refuses it (a
// closed connection or a 403), at most every millisecond, for at most
// evictionTimeout after the revocation's acknowledgement at ack.
func (a *agent) awaitEviction(ctx context.Context, r *runState, ack time.Time) {
	for ctx.Err() == nil && time.Since(ack) < evictionTimeout {
		if a.conn == nil {
			// meshd closed it before: the first request after the ack
			// is a new handshake, which meshd must refuse.
			if err := a.dial(); err != nil {
				a.evictedAt(r, ack, "dial conn:closed")
				return
			}
		}
		ans := a.do(a.head, http.MethodHead)
		if why := ans.refusal(http.MethodHead); why != "" {
			a.evictedAt(r, ack, "HEAD "+why)
			a.close()
			return
		}
		time.Sleep(time.Millisecond) // meshd has not acted yet: ask again
	}
}

func (a *agent) evictedAt(r *runState, ack time.Time, why string) {
	a.evicted, a.refusedSeen = time.Since(ack), true
	r.refuse(true, why)
}
