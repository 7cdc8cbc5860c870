package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// handshakeListener accepts TLS connections and completes each handshake
// on a goroutine of its own, handing the http.Server only connections whose
// handshake is done.
//
// Why: net/http handshakes on the goroutine that then serves the
// connection for as long as it lives. The handshake's certificate
// verification and ECDH grow that goroutine's stack to 16–32 KiB, and a
// kept-alive agent connection sits idle in a read for minutes with that
// stack still held (the GC shrinks a stack one halving at a time, and
// only when it is mostly unused). A goroutine that exits gives its grown
// stack back, so every live agent keeps only the small stack of its
// serving goroutine.
//
// What an unauthenticated caller can cost is unchanged: one goroutine and
// one socket per pending handshake, as net/http spends, each bounded by
// timeout (the deadline net/http itself sets on a handshake). The checks
// are unchanged too: the handshake runs the same tls.Config
// (VerifyPeerCertificate included); meshauth's ConnContext registers the
// connection when the http.Server accepts it, and every request still
// verifies the caller against the current trust generation, so a
// revocation landing during a handshake is seen by the first request.
type handshakeListener struct {
	net.Listener // the *tls.Listener; Accept returns *tls.Conn not yet handshaken
	timeout      time.Duration
	log          *slog.Logger

	ready  chan net.Conn
	ctx    context.Context // cancelled by stop: ends every pending handshake
	cancel context.CancelFunc
	once   sync.Once
	accErr error // set before ctx is cancelled
}

// newHandshakeListener starts accepting from ln, a listener returning
// *tls.Conn.
func newHandshakeListener(ln net.Listener, timeout time.Duration, log *slog.Logger) *handshakeListener {
	l := &handshakeListener{Listener: ln, timeout: timeout, log: log, ready: make(chan net.Conn)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	go l.acceptLoop()
	return l
}

func (l *handshakeListener) acceptLoop() {
	var tempDelay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(tempDelay):
					continue
				case <-l.ctx.Done():
					return
				}
			}
			l.stop(err)
			return
		}
		tempDelay = 0
		go l.handshake(c)
	}
}

func (l *handshakeListener) handshake(c net.Conn) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		l.hand(c)
		return
	}
	if l.timeout > 0 {
		tc.SetDeadline(time.Now().Add(l.timeout))
	}
	if err := tc.HandshakeContext(l.ctx); err != nil {
		l.log.Debug("TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	// net/http sets its own deadlines per request from here on.
	tc.SetDeadline(time.Time{})
	l.hand(c)
}

// hand gives c to Accept, or closes it when the listener is closed first.
func (l *handshakeListener) hand(c net.Conn) {
	select {
	case l.ready <- c:
	case <-l.ctx.Done():
		c.Close()
	}
}

// Accept returns the next connection whose handshake completed.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.ctx.Done():
		return nil, l.accErr
	}
}

// Close stops accepting, closes the listener and every connection still
// handshaking or waiting for Accept.
func (l *handshakeListener) Close() error {
	err := l.Listener.Close()
	l.stop(net.ErrClosed)
	return err
}

func (l *handshakeListener) stop(err error) {
	l.once.Do(func() {
		l.accErr = err
		l.cancel()
	})
}
