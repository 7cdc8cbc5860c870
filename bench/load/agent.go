package load

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

func newAgent(id, serial string, replica int, addr string, cfg *tls.Config) *agent {
	return &agent{id: id, serial: serial, replica: replica, addr: addr, tls: cfg, wake: make(chan time.Time, 1),
		head: fmt.Appendf(nil, "HEAD %s/%s HTTP/1.1\r\nHost: localhost\r\n\r\n", meshapi.PathHeartbeat, id)}
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
	body, _ := json.Marshal(map[string]any{
		"agent_id": a.id, "agent_type": "mcp_agent", "name": a.id, "version": v, "runtime": "python",
		"http_host": "127.0.0.1", "http_port": 9000, "namespace": "default",
		"tools": []any{tool("get_forecast", "weather_forecast", "weather", "forecast"), tool("current_conditions", "weather_current", "weather")},
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
// transport error.
type answer struct {
	status int
	reason string
	err    error
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
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.Close {
		// meshd closes the connection after this answer: the next request
		// finds it closed; say so now.
		err = errClosedByServer
	}
	return answer{status: resp.StatusCode, reason: resp.Header.Get("X-Reason"), err: err}
}

var errClosedByServer = errors.New("meshd closed the connection after answering")

// register is the agent's POST /heartbeat.
func (a *agent) register() answer {
	return a.do(a.registration(), http.MethodPost)
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
	if ans.status == http.StatusAccepted {
		r.reregistered.Add(1)
		a.post(r)
	}
}

func (a *agent) post(r *runState) {
	start := time.Now()
	ans := a.register()
	if why := ans.refusal(http.MethodPost); why != "" {
		a.refused(r, "POST", why)
		return
	}
	a.postLat = append(a.postLat, time.Since(start))
	r.count(start)
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
