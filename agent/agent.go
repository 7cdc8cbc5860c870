// Package agent is the Go SDK of a mesh agent: it registers the agent
// with meshd (or any MCP Mesh registry) over mTLS, keeps it registered
// with MCP Mesh's heartbeat protocol, follows credential rotations, stops
// when the registry evicts it, and builds the TLS configurations of
// agent-to-agent calls that check peers against the mesh's trust and its
// revocations.
//
// The heartbeat is MCP Mesh's: a full POST /heartbeat first, then HEAD
// /heartbeat/{agent_id} every HeadInterval. 200 means nothing to do; 202
// (the topology changed, or meshd asks for a rotation) and 410 (the
// registry forgot the agent, or found it silent too long) are answered
// with a POST. Failures are retried with capped, jittered exponential
// backoff, and the credentials' Source is followed: new credentials are
// registered at once, on a new connection.
//
//	src, _ := provider.FromEnv(ctx, "opus")
//	a, err := agent.New(agent.Config{RegistryURL: "https://meshd:8000", AgentID: "opus", Source: src,
//		Registration: meshapi.Registration{HTTPHost: "10.0.0.7", HTTPPort: 9443}})
//	...
//	err = a.Run(ctx) // until ctx ends (then it deregisters) or meshd evicts the agent
//	if errors.Is(err, agent.ErrEvicted) { ... }
package agent

import (
	"bytes"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Errors Run returns, wrapped in a *Refusal, for callers that branch on
// them.
var (
	// ErrEvicted: the registry evicted the agent. meshd says so by
	// refusing its certificate as revoked (reasons "revoked",
	// "entity_revoked": the certificate, its identity, its node or its
	// entity was revoked, and meshd evicted every agent registered with
	// it) or by answering "evicted". Registering again with the same
	// credentials cannot succeed: the agent needs new ones, and for a
	// revoked identity an operator's reinstatement.
	ErrEvicted = errors.New("agent: evicted by the registry")
	// ErrRejected: the registry refuses the registration for a reason
	// that retrying cannot change: an invalid payload (400, or MCP Mesh's
	// 200 with "status":"error"), or a certificate that may not speak for
	// the agent id (identity_mismatch, outside_namespace, owned_by_other,
	// ...).
	ErrRejected = errors.New("agent: registration rejected by the registry")
)

// Refusal is a refusal of the registry that ends Run: it wraps ErrEvicted
// or ErrRejected.
type Refusal struct {
	// AgentID is the agent refused.
	AgentID string
	// Method and Path are the request's ("POST", "/heartbeat").
	Method, Path string
	// Status is the HTTP status code.
	Status int
	// Reason is meshd's machine-readable reason ("revoked",
	// "identity_mismatch"); "" when the registry gave none.
	Reason string
	// Message is the registry's explanation.
	Message string
	err     error
}

// Error says what the registry refused and why, in its words.
func (r *Refusal) Error() string {
	reason := ""
	if r.Reason != "" {
		reason = " (" + r.Reason + ")"
	}
	return fmt.Sprintf("agent %s: %s: %s %s answered %d%s: %s", r.AgentID, strings.TrimPrefix(r.err.Error(), "agent: "), r.Method, r.Path, r.Status, reason, r.Message)
}

// Unwrap returns ErrEvicted or ErrRejected.
func (r *Refusal) Unwrap() error { return r.err }

// The reasons of meshd's 403s (and 410s) that end Run.
var (
	evictedReasons  = []string{"revoked", "entity_revoked", "evicted"}
	rejectedReasons = []string{"identity_mismatch", "not_agent_cert", "outside_namespace", "owned_by_other", "owned_by_other_entity", "owned_by_other_source"}
)

// Rotator is a credentials.Source that can fetch fresh credentials on
// demand. When the registry asks the agent for new credentials (its POST
// answer carries "rotate": true, after an `entity rotate`), Run calls
// Rotate on a Source that implements it, and registers the new
// credentials as soon as the Source serves them. provider.FromEnv's
// enroll source is one (it renews through meshd). A Source that is not
// keeps its credentials until it rotates by itself.
type Rotator interface {
	Rotate(ctx context.Context) error
}

// Rescheduler is a credentials.Source that renews on meshd's schedule.
// When an answer of meshd carries Meshtrust-Renew-After (the certificate's
// intermediate was tainted), Run passes the time on to RenewBy, which
// renews by then (provider.FromEnv's enroll source is one: the node and
// its agents renew together). A Source that is a Rotator and no
// Rescheduler is rotated by Run once that time has come.
type Rescheduler interface {
	RenewBy(at time.Time)
}

// Tainter is a credentials.Source that can be told an intermediate was
// tainted (a ca.tainted event of meshd's revocation stream): Tainted
// renews soon, with jitter, when the Source's certificates were issued by
// issuerKeyID, and reports whether they were. NewWatcher wires a Source
// that implements it to the stream.
type Tainter interface {
	Tainted(issuerKeyID string) bool
}

// Config configures an Agent. RegistryURL, Source and an agent id (AgentID,
// or the one in Registration or Payload) are required.
type Config struct {
	// RegistryURL is meshd's agent port, https://host:port
	// (MCP_MESH_REGISTRY_URL).
	RegistryURL string
	// AgentID is the id the agent registers as. "" takes it from
	// Registration or Payload; when both are set they must agree.
	AgentID string
	// Registration is the agent's heartbeat payload, used unless Payload
	// is set.
	Registration meshapi.Registration
	// Payload is the agent's heartbeat payload as MCP Mesh's JSON, sent
	// as given (unknown fields included) with its agent_id filled in.
	Payload json.RawMessage
	// Source supplies the agent's certificate, presented to the
	// registry, and the roots the registry's certificate must chain to.
	Source credentials.Source
	// AuthorizeRegistry decides whether the server is the registry, once
	// its chain has verified against the Source's roots. nil accepts a
	// certificate valid for RegistryURL's host name (or IP address), as
	// an HTTPS client would, or an X.509-SVID with the SPIFFE ID
	// spiffe://<td>/mesh-registry (MCP Mesh's registry ID, which meshd
	// --tls-svid presents), where <td> is the trust domain of the agent's
	// own SVID; give credentials.AuthorizeIdentity, AdaptMatcher or
	// AuthorizeAny for a registry whose certificate names it otherwise.
	AuthorizeRegistry credentials.Authorizer
	// HeadInterval is the time between heartbeats; 0 means 5 s. The
	// registry's timeout (meshd's --heartbeat-timeout, 20 s by default)
	// should allow a few missed ones.
	HeadInterval time.Duration
	// MinBackoff and MaxBackoff bound the exponential delay between
	// attempts while the registry cannot be reached or fails; 0 means 1 s
	// and 30 s. The upper half of each delay is random.
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one request; 0 means 10 s.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds the DELETE that deregisters the agent once
	// Run's context ends; 0 means 5 s.
	ShutdownTimeout time.Duration
	// OnRegister, if set, is called after every registration the
	// registry accepted, with its answer (the resolved dependencies), on
	// Run's goroutine: it must return quickly.
	OnRegister func(Registered)
	// Logger receives registrations, failures and eviction; nil discards
	// them. No key, certificate or token is logged.
	Logger *slog.Logger
	// Clock is the Agent's time; nil means the system clock.
	Clock credentials.Clock
	// Rand returns a uniform random int64 in [0, n), for the backoff's
	// jitter; nil means math/rand/v2's Int64N.
	Rand func(n int64) int64
}

// Agent keeps one agent registered with the registry. Create it with New
// and call Run once.
type Agent struct {
	cfg   Config
	id    string
	base  string // the registry URL without a trailing slash
	body  []byte
	src   credentials.Source
	tr    *http.Transport
	hc    *http.Client
	log   *slog.Logger
	ready chan struct{}

	// presented is the certificate of the last handshake, to tell a
	// refusal of old credentials on a kept-alive connection from a
	// refusal of the current ones.
	presented atomic.Pointer[tls.Certificate]
	running   atomic.Bool
	readyOnce sync.Once

	mu   sync.Mutex
	deps map[string][]meshapi.Resolution

	// rotateAt is when meshd asked, by Meshtrust-Renew-After, for the
	// current credentials to be renewed, for a Source that is a Rotator
	// and no Rescheduler; zero when it has not. Run's goroutine alone
	// uses it.
	rotateAt time.Time
}

// New returns an Agent for cfg. It checks the configuration and builds
// the payload; it sends nothing.
func New(cfg Config) (*Agent, error) {
	u, err := url.Parse(cfg.RegistryURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("agent: registry URL %q: want https://host:port (MCP_MESH_REGISTRY_URL)", cfg.RegistryURL)
	}
	if cfg.Source == nil {
		return nil, errors.New("agent: no credentials Source (provider.FromEnv gives one)")
	}
	body, id, err := payload(&cfg)
	if err != nil {
		return nil, err
	}
	cfg.AgentID = id
	if cfg.HeadInterval <= 0 {
		cfg.HeadInterval = 5 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	retry.Defaults(&cfg.Clock, &cfg.Rand)
	if cfg.AuthorizeRegistry == nil {
		cfg.AuthorizeRegistry = authorizeRegistry(u.Hostname(), cfg.Source)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg: cfg, id: id, base: strings.TrimSuffix(u.String(), "/"), body: body, src: cfg.Source,
		log: log.With("agent", id, "registry", u.Host), ready: make(chan struct{}),
	}
	tcfg := credentials.ClientConfig(cfg.Source, cfg.AuthorizeRegistry)
	present := tcfg.GetClientCertificate
	tcfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := present(cri)
		if err == nil {
			a.presented.Store(c)
		}
		return c, err
	}
	a.tr = http.DefaultTransport.(*http.Transport).Clone()
	a.tr.TLSClientConfig = tcfg
	a.tr.MaxIdleConnsPerHost = 1 // requests are sequential
	a.hc = &http.Client{Transport: a.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return a, nil
}

// registryPath is the path of MCP Mesh's registry SPIFFE ID,
// spiffe://<td>/mesh-registry.
const registryPath = "/mesh-registry"

// authorizeRegistry accepts a registry certificate valid for host, or the
// X.509-SVID spiffe://<td>/mesh-registry of the trust domain of the
// agent's own SVID (src's current certificate). Which source vouches:
// the SVID's chain has verified against that trust domain's bundle alone
// (credentials.ClientConfig), so a federated partner cannot pose as the
// registry; compared: the SPIFFE ID's canonical string, exactly.
func authorizeRegistry(host string, src credentials.Source) credentials.Authorizer {
	return func(leaf *x509.Certificate, _ [][]*x509.Certificate) error {
		herr := leaf.VerifyHostname(host)
		if herr == nil {
			return nil
		}
		if id, err := x509svid.IDFromCert(leaf); err == nil {
			if want, ok := registrySPIFFEID(src); ok && id == want {
				return nil
			}
		}
		return fmt.Errorf("not the registry at %s: %w, and not the SPIFFE ID %s of the agent's trust domain (set Config.AuthorizeRegistry if the registry's certificate names it otherwise)", host, herr, registryPath)
	}
}

// registrySPIFFEID is spiffe://<td>/mesh-registry for the trust domain of
// src's current certificate, when it is an X.509-SVID.
func registrySPIFFEID(src credentials.Source) (spiffeid.ID, bool) {
	c, err := src.Current()
	if err != nil || c.Certificate.Leaf == nil {
		return spiffeid.ID{}, false
	}
	own, err := x509svid.IDFromCert(c.Certificate.Leaf)
	if err != nil {
		return spiffeid.ID{}, false
	}
	id, err := spiffeid.FromPath(own.TrustDomain(), registryPath)
	return id, err == nil
}

// Ready returns a channel that is closed once the registry has accepted
// the agent's first registration.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Dependencies returns the providers of the agent's dependencies as the
// registry's last accepted registration resolved them, by tool function
// name; nil before the first. An agent reads it to find the endpoint of
// the agent it calls for a capability (examples/agent's /greet-peer).
func (a *Agent) Dependencies() map[string][]meshapi.Resolution {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.deps == nil {
		return nil
	}
	out := make(map[string][]meshapi.Resolution, len(a.deps))
	for k, v := range a.deps {
		out[k] = slices.Clone(v)
	}
	return out
}

// step is what Run does next after an exchange with the registry.
type step int

const (
	stepHead  step = iota // all is well: HEAD after the interval
	stepPost              // POST now
	stepRetry             // failed: back off, then try the same again
)

// Run registers the agent and keeps it registered until ctx ends, then
// deregisters it (DELETE /agents/{id}) and returns ctx's error, joined
// with the DELETE's if that failed. It returns earlier with a *Refusal
// wrapping ErrEvicted when the registry evicts the agent (it is not
// deregistered: meshd has done that), or ErrRejected when the registry
// refuses the registration for good, and with an error wrapping
// credentials.ErrClosed when the Source is closed: close it only once Run
// has returned, or the DELETE cannot be sent. Transient failures are
// logged and retried. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	defer a.tr.CloseIdleConnections()
	var (
		changed    = a.src.Changed()
		post       = true // the first heartbeat is a full POST
		posted     bool   // a POST was sent, so there may be a record to delete
		failures   int
		rotatedFor *credentials.Credentials // the credentials a rotation was asked for
		retried    *credentials.Credentials // the credentials last retried on a new connection
	)
	for {
		select {
		case <-changed:
			changed = a.newCredentials()
			post = true
		default:
		}
		if ctx.Err() != nil {
			return a.stop(ctx, posted)
		}
		cur, err := a.src.Current()
		if errors.Is(err, credentials.ErrClosed) {
			return fmt.Errorf("agent %s: %w", a.id, err)
		}
		var (
			next step
			ans  *Registered
		)
		switch {
		case err != nil:
			next, err = stepRetry, fmt.Errorf("no credentials to present: %w", err)
		case post:
			posted = true
			next, ans, err = a.post(ctx, cur)
		default:
			next, err = a.head(ctx)
		}
		if ctx.Err() != nil {
			return a.stop(ctx, posted)
		}
		var refusal *Refusal
		if errors.As(err, &refusal) && errors.Is(err, ErrEvicted) && cur != retried {
			if p := a.presented.Load(); p != nil && p != &cur.Certificate {
				// A kept-alive connection still carried the old
				// certificate, which may be revoked for a good reason
				// (superseded): ask again with the current one.
				a.log.Info("the registry refused the previous certificate; registering the current one on a new connection", "reason", refusal.Reason)
				retried = cur
				a.tr.CloseIdleConnections()
				continue
			}
		}
		if refusal != nil {
			refusal.AgentID = a.id
			a.log.Error("the registry refused the agent; stopping", "status", refusal.Status, "reason", refusal.Reason, "message", refusal.Message)
			return refusal
		}
		wait := time.Duration(0)
		switch next {
		case stepHead:
			failures = 0
			post = false
			wait = a.cfg.HeadInterval
			if ans != nil {
				a.registered(ctx, cur, ans, &rotatedFor)
			}
			if !a.rotateAt.IsZero() && !a.cfg.Clock.Now().Before(a.rotateAt) {
				a.rotateAt = time.Time{}
				a.rotate(ctx, cur, "meshd asks for the certificate to be renewed (its intermediate was tainted); rotating", &rotatedFor)
			}
		case stepPost:
			post = true
		case stepRetry:
			failures++
			wait = retry.Backoff(failures, a.cfg.MinBackoff, a.cfg.MaxBackoff, a.cfg.Rand)
			if ra := retryAfter(err); ra > wait {
				wait = ra
			}
			a.log.Warn("heartbeat failed; retrying", "err", err, "attempt", failures, "retry_in", wait)
		}
		if wait <= 0 {
			continue
		}
		select {
		case <-ctx.Done():
		case <-a.cfg.Clock.After(wait):
		case <-changed:
			changed = a.newCredentials()
			post = true
		}
	}
}

// newCredentials drops the connections made with the old credentials, so
// the next request presents the new ones, and returns the Source's next
// Changed channel.
func (a *Agent) newCredentials() <-chan struct{} {
	a.tr.CloseIdleConnections()
	a.rotateAt = time.Time{}
	a.log.Info("credentials changed; registering them")
	return a.src.Changed()
}

// registered records an accepted registration and answers a rotation
// request: it asks a Rotator Source for fresh credentials once per
// generation of them, and the Source's change registers them.
func (a *Agent) registered(ctx context.Context, cur *credentials.Credentials, ans *Registered, rotatedFor **credentials.Credentials) {
	a.mu.Lock()
	a.deps = ans.Dependencies
	a.mu.Unlock()
	first := false
	a.readyOnce.Do(func() { close(a.ready); first = true })
	if first {
		a.log.Info("registered", "message", ans.Message, "subject", ans.Leaf.Subject.CommonName, "serial", fmt.Sprintf("%x", ans.Leaf.SerialNumber))
	}
	if a.cfg.OnRegister != nil {
		a.cfg.OnRegister(*ans)
	}
	if !ans.Rotate {
		return
	}
	a.rotate(ctx, cur, "the registry asks for fresh credentials; rotating", rotatedFor)
}

// rotate asks a Rotator Source for fresh credentials, once per generation
// of them (rotatedFor); the Source's change registers them.
func (a *Agent) rotate(ctx context.Context, cur *credentials.Credentials, why string, rotatedFor **credentials.Credentials) {
	if *rotatedFor == cur {
		return
	}
	*rotatedFor = cur
	r, ok := a.src.(Rotator)
	if !ok {
		a.log.Warn("the registry asks for fresh credentials, and the credential source cannot fetch them on demand; the current ones stay registered until the source rotates", "serial", fmt.Sprintf("%x", cur.Certificate.Leaf.SerialNumber))
		return
	}
	a.log.Info(why)
	rctx, cancel := context.WithTimeout(ctx, 3*a.cfg.RequestTimeout)
	defer cancel()
	if err := r.Rotate(rctx); err != nil {
		*rotatedFor = nil // asked again at the next answer that says rotate
		a.log.Warn("rotating the credentials failed; the current ones stay registered", "err", err)
	}
}

// answer is an answer of the registry, read whole (bounded).
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request to the registry.
func (a *Agent) do(ctx context.Context, method, path string, body []byte) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: cannot reach the registry: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	a.renewHint(resp.Header)
	return &answer{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

// renewHint follows meshd's Meshtrust-Renew-After, which it sends while
// the certificate presented on the connection was issued by a tainted
// intermediate: a Rescheduler Source is told to renew by then; for a
// Rotator Source, Run rotates once it has come. The time is clamped into
// the presented certificate's life; a value that does not parse is
// ignored. It can only bring a renewal forward.
func (a *Agent) renewHint(h http.Header) {
	v := h.Get(meshapi.HeaderRenewAfter)
	if v == "" {
		return
	}
	p := a.presented.Load()
	if p == nil || p.Leaf == nil {
		return
	}
	at, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return
	}
	if at.Before(p.Leaf.NotBefore) {
		at = p.Leaf.NotBefore
	}
	if at.After(p.Leaf.NotAfter) {
		at = p.Leaf.NotAfter
	}
	if r, ok := a.src.(Rescheduler); ok {
		r.RenewBy(at)
		return
	}
	if a.rotateAt.IsZero() || at.Before(a.rotateAt) {
		a.rotateAt = at
	}
}

// post sends the full registration.
func (a *Agent) post(ctx context.Context, cur *credentials.Credentials) (step, *Registered, error) {
	const path = meshapi.PathHeartbeat
	ans, err := a.do(ctx, http.MethodPost, path, a.body)
	if err != nil {
		return stepRetry, nil, err
	}
	if ans.status == http.StatusOK {
		var hb meshapi.HeartbeatResponse
		if err := json.Unmarshal(ans.body, &hb); err != nil {
			return stepRetry, nil, fmt.Errorf("POST %s: the registry's answer is not a heartbeat answer: %v", path, err)
		}
		if hb.Status == "error" {
			// MCP Mesh answers a validation failure with 200.
			return stepRetry, nil, &Refusal{Method: http.MethodPost, Path: path, Status: ans.status, Message: hb.Message, err: ErrRejected}
		}
		return stepHead, &Registered{Message: hb.Message, Rotate: hb.Rotate, Dependencies: hb.DependenciesResolved, Leaf: cur.Certificate.Leaf}, nil
	}
	reason, msg := refusalOf(ans)
	switch {
	case ans.status == http.StatusBadRequest || ans.status == http.StatusRequestEntityTooLarge:
		return stepRetry, nil, &Refusal{Method: http.MethodPost, Path: path, Status: ans.status, Reason: reason, Message: msg, err: ErrRejected}
	case (ans.status == http.StatusForbidden || ans.status == http.StatusGone) && slices.Contains(evictedReasons, reason):
		return stepRetry, nil, &Refusal{Method: http.MethodPost, Path: path, Status: ans.status, Reason: reason, Message: msg, err: ErrEvicted}
	case ans.status == http.StatusForbidden && slices.Contains(rejectedReasons, reason):
		return stepRetry, nil, &Refusal{Method: http.MethodPost, Path: path, Status: ans.status, Reason: reason, Message: msg, err: ErrRejected}
	}
	// Anything else may pass: an expired certificate the Source is about
	// to renew, a trust anchor not loaded yet, an overloaded registry.
	return stepRetry, nil, &statusError{method: http.MethodPost, path: path, status: ans.status, reason: reason, msg: msg, retryAfter: retryAfterHeader(ans.header)}
}

// head is the cheap heartbeat.
func (a *Agent) head(ctx context.Context) (step, error) {
	path := "/heartbeat/" + url.PathEscape(a.id)
	ans, err := a.do(ctx, http.MethodHead, path, nil)
	if err != nil {
		return stepRetry, err
	}
	switch ans.status {
	case http.StatusOK:
		return stepHead, nil
	case http.StatusAccepted:
		a.log.Debug("the topology changed, or the registry asks for a rotation; registering again")
		return stepPost, nil
	case http.StatusGone:
		a.log.Info("the registry no longer holds the agent as healthy; registering again", "reason", ans.header.Get("X-Reason"))
		return stepPost, nil
	case http.StatusForbidden:
		// A HEAD answer has no body: the POST's says why.
		a.log.Info("the registry refused the heartbeat; registering again to learn why", "reason", ans.header.Get("X-Reason"))
		return stepPost, nil
	}
	return stepRetry, &statusError{method: http.MethodHead, path: path, status: ans.status, reason: ans.header.Get("X-Reason"), retryAfter: retryAfterHeader(ans.header)}
}

// stop deregisters the agent once ctx has ended.
func (a *Agent) stop(ctx context.Context, posted bool) error {
	if !posted {
		return ctx.Err()
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout)
	defer cancel()
	path := "/agents/" + url.PathEscape(a.id)
	ans, err := a.do(dctx, http.MethodDelete, path, nil)
	if err == nil {
		switch ans.status {
		case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
			a.log.Info("deregistered")
			return ctx.Err()
		}
		reason, msg := refusalOf(ans)
		err = &statusError{method: http.MethodDelete, path: path, status: ans.status, reason: reason, msg: msg}
	}
	a.log.Warn("deregistering failed; the registry marks the agent unhealthy once it misses its heartbeats", "err", err)
	return errors.Join(ctx.Err(), fmt.Errorf("agent %s: deregistering: %w", a.id, err))
}

// refusalOf reads meshd's error body: its reason and message.
func refusalOf(ans *answer) (reason, msg string) {
	var e meshapi.ErrorResponse
	if json.Unmarshal(ans.body, &e) == nil && e.Error != "" {
		return e.Reason, e.Error
	}
	msg = strings.TrimSpace(string(ans.body))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = http.StatusText(ans.status)
	}
	return ans.header.Get("X-Reason"), msg
}

// statusError is an answer Run retries.
type statusError struct {
	method, path string
	status       int
	reason, msg  string
	retryAfter   time.Duration
}

// Error describes the answer.
func (e *statusError) Error() string {
	s := fmt.Sprintf("%s %s: the registry answered %d %s", e.method, e.path, e.status, http.StatusText(e.status))
	if e.reason != "" {
		s += " (" + e.reason + ")"
	}
	if e.msg != "" {
		s += ": " + e.msg
	}
	return s
}

// retryAfter is the delay a failure's Retry-After asked for, if any.
func retryAfter(err error) time.Duration {
	var se *statusError
	if errors.As(err, &se) {
		return se.retryAfter
	}
	return 0
}

// retryAfterHeader reads a Retry-After in seconds, capped at 5 minutes.
func retryAfterHeader(h http.Header) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(h.Get("Retry-After")))
	if err != nil || n <= 0 {
		return 0
	}
	return min(time.Duration(n)*time.Second, 5*time.Minute)
}
