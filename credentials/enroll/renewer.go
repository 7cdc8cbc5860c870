package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/retry"
)

// RenewerConfig configures a Renewer. The zero value renews at 2/3 of a
// certificate's lifetime with up to 5% of it as jitter, and retries from
// 5 s to 10 min apart while meshd cannot renew.
type RenewerConfig struct {
	// RenewFraction is the part of a certificate's lifetime after which
	// it is due for renewal; 0 means 2/3.
	RenewFraction float64
	// Jitter is the largest random delay past the due time, as a fraction
	// of the lifetime, so the nodes of a mesh enrolled together do not all
	// renew at once; 0 means 0.05, a negative value none.
	Jitter float64
	// MinBackoff and MaxBackoff bound the exponential delay between
	// attempts while renewal fails; 0 means 5 s and 10 min.
	MinBackoff, MaxBackoff time.Duration
	// TaintDelay is the largest random delay before the renewal a taint
	// of the certificates' intermediate asks for (Tainted), so the nodes
	// of a mesh do not all renew at once; 0 means 1 minute.
	TaintDelay time.Duration
	// Clock is the Renewer's time; nil means the system clock.
	Clock credentials.Clock
	// Rand returns a uniform random int64 in [0, n); nil means
	// math/rand/v2's Int64N.
	Rand func(n int64) int64
	// Logger receives renewals and failures; nil discards them. No key or
	// credential is ever logged.
	Logger *slog.Logger
	// Progress, when not nil, is told how a renewal advances, for a
	// person watching one of many agents: (0, n) as it asks meshd for the
	// node's certificate and its n agents', then (i, n) once the new
	// certificates of i agents are written.
	Progress func(done, total int)
}

// Renewer is a live source of a node's certificate and its agents'
// certificates, read from a Dir and renewed through meshd before they
// expire. It is the credentials.Source of the node (Current, Changed,
// Close; the roots are the mesh root of ca.crt), and AgentSource gives
// one per agent, so credentials.ServerConfig, ClientConfig and
// Materialize work on it. Its GetCertificate and GetClientCertificate
// also return the current certificate, for a tls.Config built by hand.
//
// It renews when its own rule says (RenewFraction of the lifetime, plus
// jitter), or earlier when meshd says so: at the renew_after of the
// answer that issued the certificates, or at the time RenewBy or Tainted
// passes on from meshd (its Meshtrust-Renew-After header, its ca.tainted
// event). meshd's word never makes it renew later than its own rule.
//
// A renewal renews the node and every agent in the Dir's agents/ in one
// POST /renew (the agents piggyback on the node), with the same keys, and
// writes the new certificates to the Dir atomically. An agent minted
// while the Renewer runs is served from its next renewal on. While meshd cannot renew, the
// current certificates stay in use until they expire and the Renewer
// retries with capped exponential backoff.
type Renewer struct {
	client *Client
	dir    Dir
	cfg    RenewerConfig
	log    *slog.Logger

	state atomic.Pointer[renewState]
	// hint is meshd's latest request to renew early, for the generation
	// it was made for (RenewBy).
	hint   atomic.Pointer[renewHint]
	mu     sync.Mutex    // serialises renewals
	wakeup chan struct{} // a renewal outside Run moved the schedule
	update chan struct{} // signalled after each swap; tests wait on it (export_test.go)

	node      credentials.Holder // the node's credentials.Source
	viewsMu   sync.Mutex
	views     map[*agentSource]struct{} // open AgentSources
	closed    chan struct{}             // closed by Close; stops Run
	closeOnce sync.Once
}

var _ credentials.Source = (*Renewer)(nil)

// renewState is one generation of credentials; it is replaced whole.
type renewState struct {
	node   *Node
	agents map[string]*tls.Certificate
	// jitter is drawn once per generation, so the schedule is stable.
	jitter time.Duration
	// serverAt is the earliest renew_after of the answer that issued the
	// generation (the node's and its agents'); zero when it came from the
	// Dir or meshd gave none.
	serverAt time.Time
	// creds and agentCreds are the generation as a credentials.Source
	// serves it, built once.
	creds      *credentials.Credentials
	agentCreds map[string]*credentials.Credentials
}

// renewHint is a request of meshd to renew generation s by at.
type renewHint struct {
	s  *renewState
	at time.Time
}

// NewRenewer returns a Renewer of the node enrolled in dir, which renews
// through client.
func NewRenewer(client *Client, dir Dir, cfg RenewerConfig) (*Renewer, error) {
	if cfg.RenewFraction == 0 {
		cfg.RenewFraction = 2.0 / 3
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		return nil, fmt.Errorf("enroll: renew fraction %v is outside (0, 1)", cfg.RenewFraction)
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = 0.05
	}
	if cfg.Jitter < 0 {
		cfg.Jitter = 0
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Minute
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.TaintDelay <= 0 {
		cfg.TaintDelay = time.Minute
	}
	retry.Defaults(&cfg.Clock, &cfg.Rand)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	node, err := dir.Load()
	if err != nil {
		return nil, err
	}
	r := &Renewer{
		client: client, dir: dir, cfg: cfg, log: log,
		wakeup: make(chan struct{}, 1), update: make(chan struct{}, 1),
		views: make(map[*agentSource]struct{}), closed: make(chan struct{}),
	}
	s := r.newState(node)
	if err := r.node.Set(s.creds); err != nil {
		return nil, fmt.Errorf("%s: %w", dir.Path(NodeCertFile), err)
	}
	r.state.Store(s)
	return r, nil
}

func (r *Renewer) newState(n *Node) *renewState {
	roots := rootCerts(n.Chain)
	s := &renewState{
		node:       n,
		agents:     make(map[string]*tls.Certificate, len(n.Agents)),
		creds:      &credentials.Credentials{Certificate: n.Certificate, Roots: roots},
		agentCreds: make(map[string]*credentials.Credentials, len(n.Agents)),
	}
	for i := range n.Agents {
		a := &n.Agents[i]
		s.agents[a.ID] = &a.Certificate
		s.agentCreds[a.ID] = &credentials.Credentials{Certificate: a.Certificate, Roots: roots}
	}
	if life := lifetime(n.Certificate.Leaf); r.cfg.Jitter > 0 && life > 0 {
		if limit := int64(float64(life) * r.cfg.Jitter); limit > 0 {
			s.jitter = time.Duration(r.cfg.Rand(limit))
		}
	}
	return s
}

// rootCerts returns the roots of chain (its self-signed certificates),
// or the whole chain when it has none, as Node.Roots does.
func rootCerts(chain []*x509.Certificate) []*x509.Certificate {
	var roots []*x509.Certificate
	for _, c := range chain {
		if selfSigned(c) {
			roots = append(roots, c)
		}
	}
	if len(roots) == 0 {
		return chain
	}
	return roots
}

// Current returns the node's current credentials: its certificate and
// key, and the mesh root of ca.crt as Roots. After Close it fails with
// credentials.ErrClosed.
func (r *Renewer) Current() (*credentials.Credentials, error) { return r.node.Current() }

// Changed returns a channel that is closed when the node's credentials
// are renewed or adopted from the Dir, or at Close.
func (r *Renewer) Changed() <-chan struct{} { return r.node.Changed() }

// Close stops Run and closes the Renewer as a credentials.Source, and
// every AgentSource of it. It does not touch the Dir. It is idempotent.
func (r *Renewer) Close() error {
	r.closeOnce.Do(func() {
		close(r.closed)
		r.node.Close() // a renewal still under way publishes to no one

		r.viewsMu.Lock()
		defer r.viewsMu.Unlock()
		for v := range r.views {
			v.holder.Close()
			delete(r.views, v)
		}
	})
	return nil
}

// AgentSource returns agent id's credentials as a credentials.Source:
// its certificate, renewed with the node's, and the node's roots.
// Closing it leaves the Renewer running. It fails for an agent that has
// no certificate in the Dir yet (mint one with `meshctl agent-cert`).
func (r *Renewer) AgentSource(id string) (credentials.Source, error) {
	r.viewsMu.Lock()
	defer r.viewsMu.Unlock()
	select {
	case <-r.closed:
		return nil, credentials.ErrClosed
	default:
	}
	c, ok := r.state.Load().agentCreds[id]
	if !ok {
		return nil, fmt.Errorf("enroll: no certificate for agent %q in %s (mint one with `meshctl agent-cert %s`)", id, string(r.dir), id)
	}
	v := &agentSource{r: r, id: id}
	if err := v.holder.Set(c); err != nil {
		return nil, fmt.Errorf("enroll: agent %q: %w", id, err)
	}
	r.views[v] = struct{}{}
	return v, nil
}

// agentSource is one agent's view of a Renewer.
type agentSource struct {
	r      *Renewer
	id     string
	holder credentials.Holder
}

func (v *agentSource) Current() (*credentials.Credentials, error) { return v.holder.Current() }
func (v *agentSource) Changed() <-chan struct{}                   { return v.holder.Changed() }

func (v *agentSource) Close() error {
	v.r.viewsMu.Lock()
	delete(v.r.views, v)
	v.r.viewsMu.Unlock()
	return v.holder.Close()
}

// swap makes s the current credentials.
func (r *Renewer) swap(s *renewState) {
	r.state.Store(s)
	if err := r.node.Set(s.creds); err != nil && !errors.Is(err, credentials.ErrClosed) {
		r.log.Error("cannot serve the renewed node certificate", "err", err)
	}
	r.viewsMu.Lock()
	for v := range r.views {
		// An agent missing from s (its files were removed from the Dir)
		// keeps serving its last certificate until it expires.
		if c := s.agentCreds[v.id]; c != nil {
			if err := v.holder.Set(c); err != nil && !errors.Is(err, credentials.ErrClosed) {
				r.log.Error("cannot serve the renewed agent certificate", "agent", v.id, "err", err)
			}
		}
	}
	r.viewsMu.Unlock()
	select {
	case r.update <- struct{}{}:
	default:
	}
}

// Node returns the current credentials. The caller must not modify them.
func (r *Renewer) Node() *Node { return r.state.Load().node }

// lifetime returns how long c is valid for.
func lifetime(c *x509.Certificate) time.Duration { return c.NotAfter.Sub(c.NotBefore) }

// RenewAt returns when c is due for renewal: once fraction of its lifetime
// has passed.
func RenewAt(c *x509.Certificate, fraction float64) time.Time {
	return c.NotBefore.Add(time.Duration(float64(lifetime(c)) * fraction))
}

// Due returns when the node's credentials are next due for renewal: the
// earliest due time of the node's and its agents' certificates, without
// jitter, or the earlier time meshd asked for (renew_after, RenewBy).
func (r *Renewer) Due() time.Time {
	s := r.state.Load()
	due := r.due(s)
	if !s.serverAt.IsZero() && s.serverAt.Before(due) {
		due = s.serverAt
	}
	if h := r.hint.Load(); h != nil && h.s == s && h.at.Before(due) {
		due = h.at
	}
	return due
}

func (r *Renewer) due(s *renewState) time.Time {
	due := RenewAt(s.node.Certificate.Leaf, r.cfg.RenewFraction)
	for _, a := range s.agents {
		if t := RenewAt(a.Leaf, r.cfg.RenewFraction); t.Before(due) {
			due = t
		}
	}
	return due
}

// scheduled is when Run renews: the due time plus this generation's
// jitter, never later than halfway from the due time to expiry; or
// meshd's point when it is before the due time, taken as it is (meshd
// spread its holders itself). A renew_after past the due time changes
// nothing: the local rule, jitter and all, is never overruled to renew
// later.
func (r *Renewer) scheduled(s *renewState) time.Time {
	due := r.due(s)
	at := due.Add(s.jitter)
	if limit := due.Add(s.node.Certificate.Leaf.NotAfter.Sub(due) / 2); at.After(limit) {
		at = limit
	}
	if sa := s.serverAt; !sa.IsZero() && sa.Before(due) {
		at = sa
	}
	if h := r.hint.Load(); h != nil && h.s == s && h.at.Before(at) {
		at = h.at
	}
	return at
}

// RenewBy asks for the current certificates to be renewed by at: meshd's
// Meshtrust-Renew-After header on an answer to one of them, its intermediate
// being tainted. Run renews then, unless its own schedule is earlier; the
// request holds for the current certificates only (renewed ones follow
// their own renew_after). A later request for the same certificates never
// moves an earlier one back.
func (r *Renewer) RenewBy(at time.Time) {
	s := r.state.Load()
	for {
		old := r.hint.Load()
		if old != nil && old.s == s && !at.Before(old.at) {
			return
		}
		if r.hint.CompareAndSwap(old, &renewHint{s: s, at: at}) {
			break
		}
	}
	select {
	case r.wakeup <- struct{}{}:
	default:
	}
}

// Tainted tells the Renewer that meshd's intermediate issuerKeyID (the
// lowercase hex subject key id of a ca.tainted event) was tainted: when
// the node's certificate or an agent's was issued by it, they are renewed
// after a random delay of at most TaintDelay, and Tainted reports true.
//
// The name compared is the key id: issuerKeyID as meshd's stream gives
// it, against the lowercase hex authority key id of the certificates this
// Renewer holds, which verified against the mesh root when they were
// issued (checkIssued). The stream itself is authenticated by meshd's
// certificate; a forged event could only bring a renewal forward.
func (r *Renewer) Tainted(issuerKeyID string) bool {
	s := r.state.Load()
	hit := hex.EncodeToString(s.node.Certificate.Leaf.AuthorityKeyId) == issuerKeyID
	for _, a := range s.agents {
		if a.Leaf != nil && hex.EncodeToString(a.Leaf.AuthorityKeyId) == issuerKeyID {
			hit = true
		}
	}
	if !hit {
		return false
	}
	r.RenewBy(r.cfg.Clock.Now().Add(time.Duration(r.cfg.Rand(int64(r.cfg.TaintDelay) + 1))))
	return true
}

// RenewNow renews the node and its agents at once, whether due or not,
// and writes the new certificates to the Dir.
func (r *Renewer) RenewNow(ctx context.Context) (*Renewal, error) {
	select {
	case <-r.closed:
		return nil, credentials.ErrClosed
	default:
	}
	res, err := r.renew(ctx)
	select {
	case r.wakeup <- struct{}{}:
	default:
	}
	return res, err
}

// progress tells RenewerConfig.Progress, if any.
func (r *Renewer) progress(done, total int) {
	if r.cfg.Progress != nil {
		r.cfg.Progress(done, total)
	}
}

func (r *Renewer) renew(ctx context.Context) (*Renewal, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.state.Load().node
	// Agents minted since the Dir was read (meshctl agent-cert) ride along
	// too: the Dir, not memory, lists the node's agents.
	agents := cur.Agents
	if disk, err := r.dir.Load(); err == nil && samePublicKey(disk.Key.Public(), cur.Key.Public()) {
		agents = disk.Agents
	}
	keys := make([]AgentKey, 0, len(agents))
	for _, a := range agents {
		keys = append(keys, AgentKey{ID: a.ID, Key: a.Key})
	}
	r.progress(0, len(agents))
	res, err := r.client.Renew(ctx, cur.Certificate, cur.Key, keys)
	if err != nil {
		return nil, err
	}
	next := &Node{ID: cur.ID, Key: cur.Key, Certificate: res.Node.TLSCertificate(cur.Key), Chain: res.Node.Chain}
	var werr []error
	if err := r.dir.WriteNode(cur.Key, res.Node); err != nil {
		werr = append(werr, err)
	}
	for i, a := range agents {
		b, ok := res.Agents[a.ID]
		if !ok {
			r.log.Warn("meshd did not renew an agent certificate; keeping the current one", "agent", a.ID, "not_after", a.Certificate.Leaf.NotAfter)
			next.Agents = append(next.Agents, a)
			r.progress(i+1, len(agents))
			continue
		}
		if err := r.dir.WriteAgent(a.ID, a.Key, b); err != nil {
			werr = append(werr, err)
		}
		next.Agents = append(next.Agents, Agent{ID: a.ID, Key: a.Key, Certificate: b.TLSCertificate(a.Key)})
		r.progress(i+1, len(agents))
	}
	// The new certificates are valid whether or not they reached the disk:
	// serve them.
	ns := r.newState(next)
	ns.serverAt = serverPoint(res)
	r.swap(ns)
	r.log.Info("renewed node certificate", "node", cur.ID, "serial", res.Node.Serial, "not_after", res.Node.NotAfter, "agents", len(res.Agents))
	if len(werr) > 0 {
		return res, fmt.Errorf("renewed, but writing to %s failed (the new certificates are in use until restart): %w", string(r.dir), errors.Join(werr...))
	}
	return res, nil
}

// serverPoint is the earliest renew_after of a renewal's certificates,
// zero when meshd gave none. A point within the first hundredth of the
// node certificate's life is moved to its end: a new certificate meshd
// says to renew at once would be renewed in a loop.
func serverPoint(res *Renewal) time.Time {
	var at time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	earliest(res.Node.RenewAfter)
	for _, a := range res.Agents {
		earliest(a.RenewAfter)
	}
	if at.IsZero() {
		return at
	}
	leaf := res.Node.Certificate
	if floor := leaf.NotBefore.Add(lifetime(leaf) / 100); at.Before(floor) {
		at = floor
	}
	return at
}

// adoptNewer takes the Dir's credentials when another process (say the
// `meshctl renew` timer) renewed them, and reports whether it did.
func (r *Renewer) adoptNewer() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	disk, err := r.dir.Load()
	if err != nil {
		return false
	}
	cur := r.state.Load().node
	if !disk.Certificate.Leaf.NotAfter.After(cur.Certificate.Leaf.NotAfter) {
		return false
	}
	r.swap(r.newState(disk))
	r.log.Info("picked up renewed certificates from disk", "dir", string(r.dir), "not_after", disk.Certificate.Leaf.NotAfter)
	return true
}

// backoff returns the delay before retry number attempt (1, 2, ...):
// doubling from MinBackoff, capped at MaxBackoff, the upper half of it
// drawn at random so that nodes do not retry in step.
func (r *Renewer) backoff(attempt int) time.Duration {
	return retry.Backoff(attempt, r.cfg.MinBackoff, r.cfg.MaxBackoff, r.cfg.Rand)
}

// Run renews the credentials whenever they are due until ctx ends or
// Close is called, and returns ctx's error or credentials.ErrClosed. A
// failed renewal is logged and retried; past the
// node certificate's expiry it cannot succeed (enroll again) and Run
// says so in every failure it logs.
func (r *Renewer) Run(ctx context.Context) error {
	attempt := 0
	var retryAt time.Time
	for {
		s := r.state.Load()
		at := r.scheduled(s)
		if attempt > 0 && retryAt.After(at) {
			at = retryAt
		}
		if wait := at.Sub(r.cfg.Clock.Now()); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.closed:
				return credentials.ErrClosed
			case <-r.wakeup:
				attempt = 0
				continue
			case <-r.cfg.Clock.After(wait):
			}
			continue // the clock may have moved on, or credentials changed
		}
		if r.adoptNewer() {
			attempt = 0
			continue
		}
		_, err := r.renew(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil || r.state.Load() != s {
			attempt = 0
			if err != nil {
				r.log.Error("renewal incomplete", "err", err)
			}
			continue
		}
		attempt++
		delay := r.backoff(attempt)
		now := r.cfg.Clock.Now()
		retryAt = now.Add(delay)
		leaf := s.node.Certificate.Leaf
		if now.After(leaf.NotAfter) {
			r.log.Error("node certificate expired and cannot be renewed; enroll the node again (meshctl enroll --force)", "node", s.node.ID, "not_after", leaf.NotAfter, "err", err, "retry_in", delay)
		} else {
			r.log.Warn("renewal failed; the current certificate stays in use", "node", s.node.ID, "not_after", leaf.NotAfter, "err", err, "attempt", attempt, "retry_in", delay)
		}
	}
}
