package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// watch is a client of one meshd's GET /revocations/watch, as a mesh
// service's trust/watch subscribes: it notes when each revocation's
// event arrives.
type watch struct {
	conn net.Conn
	body io.Reader
}

// openWatch subscribes over a connection of its own and returns once
// meshd answered 200: events from then on reach it.
func openWatch(ctx context.Context, addr string, cfg *tls.Config) (*watch, error) {
	d := &tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: requestTimeout}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n", meshapi.PathRevocationsWatch)
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodGet})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		c.Close()
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	c.SetReadDeadline(time.Time{})
	return &watch{conn: c, body: resp.Body}, nil
}

// run reads events until ctx ends or the stream does, and records in r
// when the revocation of each serial arrived on replica i of n.
func (w *watch) run(ctx context.Context, i, n int, r *runState) error {
	stop := context.AfterFunc(ctx, func() { w.conn.Close() })
	defer stop()
	defer w.conn.Close()
	sc := bufio.NewScanner(w.body)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		at := time.Now()
		var ev meshapi.RevocationEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.Serial == "" {
			continue // a taint or an entity's revocation: not the harness's
		}
		serial := strings.ToLower(ev.Serial)
		r.mu.Lock()
		seen := r.seen[serial]
		if seen == nil {
			seen = make([]time.Time, n)
			r.seen[serial] = seen
		}
		if seen[i].IsZero() {
			seen[i] = at
		}
		r.mu.Unlock()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}
