// Package watch keeps a trust.RevocationSet up to date with meshd's
// revocation feed, so that a service refuses a revoked peer within moments
// of `meshctl ca revoke`.
//
// A Watcher follows GET /revocations/watch, a server-sent event stream,
// and resumes after the last event it applied (Last-Event-ID) whenever it
// reconnects, so no revocation is missed across a restart of meshd. While
// the stream is down it polls GET /crl instead, and trusts a CRL only once
// its signature verifies against the mesh CA. Revocations are only ever
// added: an authentic but stale CRL cannot take one back.
//
// A service plugs the set into its tls.Config with VerifyConnection (or
// VerifyPeerCertificate); lookups are O(1).
package watch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"

	"github.com/meshtrust/meshtrust/internal/retry"
)

// Clock tells the time and waits (Now, and After returning a channel that
// receives once d has passed); tests move it instead of sleeping. It is the
// one clock interface of the mesh's clients, shared with credentials.
type Clock = retry.Clock

// Config configures a Watcher. Server and Roots are required; the zero
// value of every other field is a sensible default.
type Config struct {
	// Server is meshd's agent port, https://host:port.
	Server string
	// Roots verifies meshd's TLS certificate and anchors the CRLs: a CRL
	// counts only if its issuer chains to one of them. Usually the mesh
	// root (ca.crt of an enrolled node).
	Roots *x509.CertPool
	// Intermediates are CA certificates that may have signed CRLs, in
	// addition to those meshd's GET /bundle lists (each must still chain
	// to Roots).
	Intermediates []*x509.Certificate
	// GetClientCertificate, if set, presents a client certificate to
	// meshd; its PKI routes need none.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// HTTPClient, if not nil, supplies transport settings (proxy, dialer)
	// when its Transport is an *http.Transport; TLS is always set by the
	// Watcher. Its Timeout is not used: the stream is long-lived.
	HTTPClient *http.Client
	// LastEventID is the sequence number of the last event already
	// applied, for a watcher that keeps it across restarts; 0 replays the
	// whole feed.
	LastEventID int64
	// CRLInterval is how often GET /crl is polled while the stream is
	// down; 0 means 30 s.
	CRLInterval time.Duration
	// MinBackoff and MaxBackoff bound the exponential delay between
	// reconnections; 0 means 1 s and 1 min.
	MinBackoff, MaxBackoff time.Duration
	// IdleTimeout is how long a stream may stay silent before it is taken
	// for dead; meshd comments every 15 s. 0 means 45 s.
	IdleTimeout time.Duration
	// Entity names the partner entity whose CA issued a verified chain,
	// for the tls.Config hooks; nil checks serials only. See AnchorEntity.
	Entity EntityFunc
	// Clock is the Watcher's time; nil means the system clock.
	Clock Clock
	// Rand returns a uniform random int64 in [0, n); nil means
	// math/rand/v2's Int64N.
	Rand func(n int64) int64
	// Logger receives connection changes and refused CRLs; nil discards.
	Logger *slog.Logger
	// OnTaint, if set, is called with each ca.tainted event of the
	// stream (meshapi.EventCATainted): meshd's intermediate IssuerKeyID
	// was tainted, and every certificate it issued is to be renewed now.
	// It runs on the Watcher's goroutine and must return quickly. The
	// event says nothing about revocation: the set is left as it is.
	OnTaint func(meshapi.TaintEvent)
}

// Watcher feeds a RevocationSet from meshd. Run it in a goroutine.
type Watcher struct {
	set  *trust.RevocationSet
	cfg  Config
	base string
	log  *slog.Logger
	tr   *http.Transport

	lastID    atomic.Int64
	connected atomic.Bool

	mu    sync.Mutex
	inter []*x509.Certificate // verified CA certificates that may sign CRLs
}

// New returns a Watcher that adds meshd's revocations to set.
func New(set *trust.RevocationSet, cfg Config) (*Watcher, error) {
	if set == nil {
		return nil, errors.New("watch: nil revocation set")
	}
	u, err := url.Parse(cfg.Server)
	if err != nil || u.Host == "" || u.Scheme != "https" {
		return nil, fmt.Errorf("watch: meshd URL %q: want https://host:port", cfg.Server)
	}
	if cfg.Roots == nil {
		return nil, errors.New("watch: no Roots: give the mesh root (ca.crt) that meshd's certificate and CRLs must chain to")
	}
	if cfg.CRLInterval <= 0 {
		cfg.CRLInterval = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 45 * time.Second
	}
	retry.Defaults(&cfg.Clock, &cfg.Rand)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var tr *http.Transport
	if cfg.HTTPClient != nil {
		switch t := cfg.HTTPClient.Transport.(type) {
		case nil:
		case *http.Transport:
			tr = t.Clone()
		default:
			return nil, fmt.Errorf("watch: HTTPClient.Transport is a %T; the Watcher needs an *http.Transport (or none) so that it can set TLS itself", t)
		}
	}
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.Roots, GetClientCertificate: cfg.GetClientCertificate}
	tr.ResponseHeaderTimeout = 30 * time.Second
	w := &Watcher{set: set, cfg: cfg, base: strings.TrimSuffix(u.String(), "/"), log: log, tr: tr}
	w.lastID.Store(cfg.LastEventID)
	return w, nil
}

// LastEventID returns the sequence number of the last event applied.
func (w *Watcher) LastEventID() int64 { return w.lastID.Load() }

// Connected reports whether the event stream is up.
func (w *Watcher) Connected() bool { return w.connected.Load() }

// Run follows the revocation feed until ctx ends, and returns ctx's
// error. When the stream fails it reconnects with capped exponential
// backoff, polling the CRL every CRLInterval until it is back.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.tr.CloseIdleConnections()
	var nextCRL time.Time // zero: poll as soon as the stream is down
	attempt := 0
	for {
		up, err := w.stream(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if up {
			attempt = 0
		}
		attempt++
		delay := w.backoff(attempt)
		w.log.Warn("revocation stream down; polling the CRL until it is back", "server", w.base, "err", err, "retry_in", delay, "last_event_id", w.LastEventID())
		retryAt := w.cfg.Clock.Now().Add(delay)
		for {
			now := w.cfg.Clock.Now()
			if !now.Before(nextCRL) {
				if n, err := w.PollCRL(ctx); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					w.log.Warn("CRL poll failed", "server", w.base, "err", err)
				} else if n > 0 {
					w.log.Info("revocations from the CRL", "new", n)
				}
				nextCRL = now.Add(w.cfg.CRLInterval)
			}
			if !now.Before(retryAt) {
				break
			}
			wait := retryAt.Sub(now)
			if d := nextCRL.Sub(now); d < wait {
				wait = d
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-w.cfg.Clock.After(wait):
			}
		}
	}
}

// backoff returns the delay before reconnection number attempt: doubling
// from MinBackoff up to MaxBackoff, its upper half drawn at random.
func (w *Watcher) backoff(attempt int) time.Duration {
	return retry.Backoff(attempt, w.cfg.MinBackoff, w.cfg.MaxBackoff, w.cfg.Rand)
}

// stream follows the event stream once, until it ends. up reports whether
// meshd accepted the subscription.
func (w *Watcher) stream(ctx context.Context) (up bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	after := strconv.FormatInt(w.LastEventID(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.base+meshapi.PathRevocationsWatch+"?after="+after, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	req.Header.Set("Last-Event-ID", after)
	resp, err := w.tr.RoundTrip(req)
	if err != nil {
		return false, fmt.Errorf("cannot reach meshd at %s: %w", w.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, answerError("GET /revocations/watch", resp)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return false, fmt.Errorf("GET /revocations/watch answered %q, not text/event-stream", ct)
	}
	w.connected.Store(true)
	defer w.connected.Store(false)
	w.log.Info("revocation stream up", "server", w.base, "after", after)

	activity := make(chan struct{}, 1)
	go w.watchdog(ctx, cancel, activity)
	rd := newSSEReader(resp.Body, func() {
		select {
		case activity <- struct{}{}:
		default:
		}
	})
	for {
		ev, err := rd.next()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				err = cause
			}
			if errors.Is(err, io.EOF) {
				err = errors.New("meshd closed the stream")
			}
			return true, err
		}
		w.apply(ev)
	}
}

var errIdle = errors.New("revocation stream idle for too long (no keep-alive from meshd)")

// watchdog ends the stream when it stays silent past IdleTimeout.
func (w *Watcher) watchdog(ctx context.Context, cancel context.CancelCauseFunc, activity <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-activity:
		case <-w.cfg.Clock.After(w.cfg.IdleTimeout):
			cancel(errIdle)
			return
		}
	}
}

// taint hands a ca.tainted event to OnTaint. It carries no id: the resume
// point stays where it is (meshd tells a new stream of every tainted
// intermediate anyway).
func (w *Watcher) taint(ev sseEvent) {
	var e meshapi.TaintEvent
	if err := json.Unmarshal([]byte(ev.Data), &e); err != nil || e.IssuerKeyID == "" {
		w.log.Warn("ca.tainted event not understood; skipped", "err", err)
		return
	}
	e.IssuerKeyID = strings.ToLower(e.IssuerKeyID)
	w.log.Info("intermediate tainted: its certificates are to be renewed", "issuer_key_id", e.IssuerKeyID)
	if w.cfg.OnTaint != nil {
		w.cfg.OnTaint(e)
	}
}

// revocationEvent is the data of an "event: revocation": meshapi's
// RevocationEvent, except that reason and time are read leniently (a
// CRLReason code as well as a name, a missing or unreadable time as now),
// so one odd field does not cost the whole revocation. The outer fields
// shadow the embedded ones of the same JSON name.
type revocationEvent struct {
	meshapi.RevocationEvent
	Reason json.RawMessage `json:"reason"`
	Time   json.RawMessage `json:"time"`
}

// apply adds one event's revocation to the set and moves the resume
// point past it. An event that cannot be applied is logged and passed
// over: waiting on it would stall every later revocation.
func (w *Watcher) apply(ev sseEvent) {
	if ev.Type == meshapi.EventCATainted {
		w.taint(ev)
		return
	}
	if ev.Type != meshapi.EventRevocation {
		return // keep-alives, and kinds of event this version does not know
	}
	var e revocationEvent
	if err := json.Unmarshal([]byte(ev.Data), &e); err != nil {
		w.log.Warn("revocation event not understood; skipped", "id", ev.ID, "err", err)
		w.advance(ev.ID, 0)
		return
	}
	r := trust.Revoked{IssuerKeyID: strings.ToLower(e.IssuerKeyID), Reason: reasonOf(e.Reason), At: timeOf(e.Time, w.cfg.Clock.Now())}
	switch {
	case e.Kind == "identity.revoked" || e.Kind == "identity.reinstated":
		if e.CommonName == "" {
			w.log.Warn("identity event without a common name; skipped", "id", ev.ID)
			break
		}
		r.Identity = e.CommonName
		if e.Kind == "identity.reinstated" {
			if w.set.RemoveIdentity(e.CommonName) {
				w.log.Info("identity reinstated", "identity", e.CommonName, "seq", e.Seq)
			}
		} else if w.set.AddIdentity(r) {
			w.log.Info("identity revoked", "identity", e.CommonName, "reason", r.Reason, "seq", e.Seq)
		}
	case e.Serial != "":
		serial, ok := trust.NormalizeSerial(e.Serial)
		if !ok {
			w.log.Warn("revocation event with a malformed serial; skipped", "id", ev.ID, "serial", e.Serial)
			break
		}
		r.Serial = serial
		if w.set.AddSerial(r) {
			w.log.Info("certificate revoked", "serial", serial, "common_name", e.CommonName, "reason", r.Reason, "seq", e.Seq)
		}
		if e.KeyHash != "" {
			w.set.AddKey(trust.Revoked{KeyHash: strings.ToLower(e.KeyHash), Reason: r.Reason, At: r.At})
		}
	case e.Entity != "":
		r.Entity = e.Entity
		if w.set.AddEntity(r) {
			w.log.Info("entity revoked", "entity", e.Entity, "reason", r.Reason, "seq", e.Seq)
		}
	default:
		w.log.Warn("revocation event names neither a serial nor an entity; skipped", "id", ev.ID)
	}
	w.advance(ev.ID, e.Seq)
}

// advance moves the resume point to the event's id (or its seq when the
// stream gave no id), never backwards.
func (w *Watcher) advance(id string, seq int64) {
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		seq = n
	}
	for {
		cur := w.lastID.Load()
		if seq <= cur || w.lastID.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// reasonOf reads a reason given as a name or as an RFC 5280 code.
func reasonOf(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n int
	if json.Unmarshal(raw, &n) == nil {
		return trust.CRLReasonName(n)
	}
	return ""
}

// timeOf reads an RFC 3339 time, or returns now.
func timeOf(raw json.RawMessage, now time.Time) time.Time {
	var t time.Time
	if json.Unmarshal(raw, &t) == nil && !t.IsZero() {
		return t
	}
	return now
}

// answerError describes an answer outside 2xx.
func answerError(what string, resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var eb meshapi.ErrorResponse
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return fmt.Errorf("%s: meshd answered %s: %s", what, resp.Status, msg)
}
