package meshauth

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"

	"github.com/meshtrust/meshtrust/trust"
)

// conn is one open connection and what is known of its caller.
//
// Lock order: connTracker.mu, then conn.mu; neither is held while a
// certificate is verified or a connection is closed.
type conn struct {
	raw net.Conn

	mu     sync.Mutex
	gen    uint64 // trust generation caller/err were verified at
	caller *Caller
	err    error
	// token and tokenCaller cache the last session token seen on the
	// connection and the caller it verified to, at gen.
	token       string
	tokenCaller *Caller
	tokenErr    *refusal
	done        bool
}

// connTracker knows every open connection, so that a revocation can close
// the ones whose caller is no longer trusted.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]*conn
}

func newConnTracker() *connTracker { return &connTracker{conns: make(map[net.Conn]*conn)} }

type connKey struct{}

// ConnContext is an http.Server's ConnContext: it registers the
// connection, so that its caller is verified once per trust generation
// rather than per request, and so that CloseWhere can close it. Set
// ConnState too.
func (a *Auth) ConnContext(ctx context.Context, c net.Conn) context.Context {
	cs := &conn{raw: c}
	a.conns.mu.Lock()
	a.conns.conns[c] = cs
	a.conns.mu.Unlock()
	return context.WithValue(ctx, connKey{}, cs)
}

// ConnState is an http.Server's ConnState: it forgets closed connections.
func (a *Auth) ConnState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed || s == http.StateHijacked {
		a.conns.mu.Lock()
		delete(a.conns.conns, c)
		a.conns.mu.Unlock()
	}
}

// Serve sets srv's ConnContext and ConnState to a's, keeping srv's own
// hooks (run after a's).
func (a *Auth) Serve(srv *http.Server) {
	prevCtx, prevState := srv.ConnContext, srv.ConnState
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		ctx = a.ConnContext(ctx, c)
		if prevCtx != nil {
			ctx = prevCtx(ctx, c)
		}
		return ctx
	}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		a.ConnState(c, s)
		if prevState != nil {
			prevState(c, s)
		}
	}
}

func connFrom(ctx context.Context) *conn {
	cs, _ := ctx.Value(connKey{}).(*conn)
	return cs
}

// CloseWhere closes every open connection whose verified caller matches,
// marking it so that a request already past verification on it is refused
// too, and returns how many it closed. match runs without any lock held.
func (a *Auth) CloseWhere(match func(*Caller) bool) int {
	a.conns.mu.Lock()
	all := make([]*conn, 0, len(a.conns.conns))
	for _, cs := range a.conns.conns {
		all = append(all, cs)
	}
	a.conns.mu.Unlock()
	n := 0
	for _, cs := range all {
		cs.mu.Lock()
		c, done := cs.caller, cs.done
		cs.mu.Unlock()
		if c == nil || done || !match(c) {
			continue
		}
		cs.kill()
		n++
	}
	return n
}

// CloseUntrusted verifies the certificate of every open TLS connection
// again, verified before or not, closes those the chain refuses now and
// returns their certificates' fingerprints: after a change of trust
// anchors, no connection keeps what the new anchors would not grant.
func (a *Auth) CloseUntrusted(ctx context.Context) []string {
	a.conns.mu.Lock()
	all := make([]*conn, 0, len(a.conns.conns))
	for _, cs := range a.conns.conns {
		all = append(all, cs)
	}
	a.conns.mu.Unlock()
	var closed []string
	for _, cs := range all {
		tc, ok := cs.raw.(*tls.Conn)
		if !ok {
			continue
		}
		certs := tc.ConnectionState().PeerCertificates
		if len(certs) == 0 {
			continue
		}
		if _, err := a.cfg.Chain.Verify(ctx, certs); err != nil {
			cs.kill()
			closed = append(closed, trust.Fingerprint(certs[0]))
		}
	}
	return closed
}

// kill closes the connection at the TCP level (closing a TLS connection
// would wait on a close_notify the peer may never read) and marks it.
func (cs *conn) kill() {
	cs.mu.Lock()
	cs.done = true
	cs.mu.Unlock()
	raw := cs.raw
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	raw.Close()
}
