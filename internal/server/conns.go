package server

import (
	"context"
	"net"
	"net/http"
	"sync"

	"github.com/meshtrust/meshtrust/trust"
)

// conn is one open agent-port connection and what is known of its peer.
type conn struct {
	net.Conn

	mu   sync.Mutex
	peer *trust.Peer
	err  error
	gen  uint64
	done bool
}

// connTracker knows every open agent-port connection, so that eviction can
// close the ones whose peer is no longer trusted.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]*conn
}

func newConnTracker() *connTracker { return &connTracker{conns: make(map[net.Conn]*conn)} }

type connKey struct{}

// connContext is http.Server.ConnContext: it registers the connection.
func (t *connTracker) connContext(ctx context.Context, c net.Conn) context.Context {
	cs := &conn{Conn: c}
	t.mu.Lock()
	t.conns[c] = cs
	t.mu.Unlock()
	return context.WithValue(ctx, connKey{}, cs)
}

// connState is http.Server.ConnState: it forgets closed connections.
func (t *connTracker) connState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed || s == http.StateHijacked {
		t.mu.Lock()
		delete(t.conns, c)
		t.mu.Unlock()
	}
}

func connFrom(ctx context.Context) *conn {
	cs, _ := ctx.Value(connKey{}).(*conn)
	return cs
}

// snapshot returns the open connections.
func (t *connTracker) snapshot() []*conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*conn, 0, len(t.conns))
	for _, cs := range t.conns {
		out = append(out, cs)
	}
	return out
}

// closeWhere closes every connection whose verified peer matches and
// returns how many it closed. match runs without the tracker's locks.
func (t *connTracker) closeWhere(match func(*trust.Peer) bool) int {
	n := 0
	for _, cs := range t.snapshot() {
		cs.mu.Lock()
		p, done := cs.peer, cs.done
		cs.mu.Unlock()
		if p == nil || done || !match(p) {
			continue
		}
		cs.kill()
		n++
	}
	return n
}

// kill closes the connection at the TCP level and marks it so that a
// request already past verification is refused too.
func (cs *conn) kill() {
	cs.mu.Lock()
	cs.done = true
	cs.mu.Unlock()
	rawConn(cs.Conn).Close()
}

// len returns the number of open connections.
func (t *connTracker) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}
