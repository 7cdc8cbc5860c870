// Package server is meshd's network face: the agent port (TLS modes, the
// MCP Mesh-compatible agent routes), the admin API (a unix socket, and
// optionally an mTLS listener for admin identities) and the metrics
// listener. Its routes act on the small interfaces and values of Deps;
// package meshd assembles them (trust backends, the change feed's
// effects, the trust sweep) and hands them over.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/events"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// Store is the durable state meshd needs.
type Store interface {
	store.Store
}

// Deps are what the routes act on, assembled by package meshd.
type Deps struct {
	Store Store
	// CA is the mesh CA, nil without one; MeshCA is the localca backend
	// built over it (nil without a mesh CA): only its certificates are
	// admin identities and ask for certificates.
	// A nil *ca.CA must be passed as a nil Authority (not one holding a
	// nil pointer): the routes tell "no mesh CA" by CA == nil.
	CA     Authority
	MeshCA *trust.LocalCA
	// Chain verifies the agent port's callers against Revocations.
	Chain       *trust.Chain
	Revocations *trust.RevocationSet
	Registry    Registry
	Feed        Feed
	Sources     TrustSources
	// Collectors are further metrics served on /metrics (the trust
	// backends').
	Collectors []prometheus.Collector
	// Degraded lists, for GET /health, the parts of meshd that refuse
	// what they would otherwise admit (a trust backend whose anchors are
	// stale); nil: none ever.
	Degraded func() []meshapi.Degradation
	// LastAudit is meshd's own last verification of the audit log, nil
	// before the first; GET /admin/status verifies the log itself when
	// there is none (or LastAudit is nil).
	LastAudit func() *meshapi.StatusAudit
	// Freshness is how current this meshd's view of the store is, for
	// the staleness gate (fresh.go); nil: always current (SQLite, one
	// process, whose feed reads a local file).
	Freshness Freshness
	// Changes is what changes on this meshd (the change feed as applied,
	// the registry's registrations and evictions), for the console; nil:
	// a fan-out of its own that nothing feeds.
	Changes *Changes
}

// Authority is the mesh CA as the routes use it (*ca.CA implements it):
// /enroll, /agent-cert and /renew sign with it, /crl and /bundle publish
// what it wrote, the admin API revokes and reinstates through it.
type Authority interface {
	// Sign issues the certificate req asks for under the options a
	// provisioner's authorisation returned; Check is Sign's dry run.
	Sign(ctx context.Context, req ca.Request, opts ...ca.SignOption) (*ca.Issued, error)
	Check(ctx context.Context, req ca.Request, opts ...ca.SignOption) error
	// Revoke revokes a serial or an identity name (and everything issued
	// under it); Reinstate lifts an identity's revocation.
	Revoke(ctx context.Context, target string, reason ca.Reason) ([]store.Revocation, error)
	Reinstate(ctx context.Context, name string) error
	// Root is the root a join token's answer pins (by fingerprint);
	// ActiveIntermediate is the signer whose CRL GET /crl serves in DER.
	Root() *x509.Certificate
	ActiveIntermediate() *x509.Certificate
	// PreparedIntermediate is the intermediate waiting in the prepared
	// slot, nil when none is (GET /admin/status).
	PreparedIntermediate() *x509.Certificate
	// BundlePEM and CRLPEM are the published bundle and crl.pem;
	// CRLThisUpdate is the newest CRL's this-update, for
	// meshd_crl_age_seconds.
	BundlePEM() ([]byte, error)
	CRLPEM() ([]byte, error)
	CRLThisUpdate() time.Time
	// Config is read for the CA directory (the default session-keys/);
	// TrustDomain is the trust domain of the mesh CA's identities, in
	// which a policy check's modelled caller gets its names.
	Config() ca.Config
	TrustDomain() spiffeid.TrustDomain
	// RenewAt is when the holder of a leaf should renew it, the
	// renew_after of every issuance answer; TaintedIssuers the
	// intermediates an operator tainted, whose leaves renew now.
	RenewAt(issuerKeyID, serial string, notBefore, notAfter time.Time) time.Time
	TaintedIssuers() map[string]time.Time
	// List is every certificate the CA recorded with its state (GET
	// /admin/status counts those due for renewal; the console lists them
	// and counts each intermediate's live ones).
	List(ctx context.Context) ([]ca.Listed, error)
	// IntermediateStatus is every intermediate with its state (active,
	// prepared, retired, tainted, revoked) and its live certificates
	// (the console's intermediates page).
	IntermediateStatus(ctx context.Context) ([]ca.IntermediateStatus, error)
}

// Registry is the agent registry as the routes use it
// (*registry.Registry implements it): the agent routes register, renew,
// check and delete through it, the admin routes list, release, drain and
// explain, the metrics read its counts.
type Registry interface {
	// HeartbeatFrom registers or renews the agent of body for peer
	// (nil without a certificate) from source; Check answers a HEAD
	// heartbeat; Delete unregisters; Authorize says whether peer may act
	// for agentID (a session's attach). Neither heartbeat keeps body
	// after it returns: the server reuses its buffer.
	HeartbeatFrom(ctx context.Context, peer *trust.Peer, source string, body []byte) (registry.Result, error)
	// HeartbeatUnchanged answers from memory a heartbeat that would write
	// nothing; false otherwise (served while the store is unreachable).
	HeartbeatUnchanged(peer *trust.Peer, body []byte) (registry.Result, bool)
	Check(peer *trust.Peer, id string) (registry.Result, error)
	Delete(ctx context.Context, peer *trust.Peer, id string) error
	Authorize(peer *trust.Peer, agentID string) error
	// EvictFingerprints evicts the agents registered with the
	// certificates of fps; Release frees an agent id for any caller.
	EvictFingerprints(ctx context.Context, fps map[string]bool, reason string) ([]registry.Evicted, error)
	Release(ctx context.Context, id, by string) error
	List(f registry.Filter) []registry.View
	Schemas(limit int) []registry.Schema
	Explain(id string) ([]registry.Explanation, bool)
	Draining() bool
	SetDraining(on bool)
	// Len, CertlessUsage and Expiry feed the metrics.
	Len() int
	CertlessUsage() (agents int, bytes int64)
	Expiry(fn func(agentID, owner string, notAfter time.Time))
}

// Feed is the change feed as the admin routes and the revocation stream
// use it: an admin request that wrote a change polls the feed, so it
// answers only once its change took effect, and reports what it did.
type Feed interface {
	Poll(ctx context.Context) (int, error)
	Reader(after int64) *events.Reader
	// Pending counts the events some handler failed to apply and retries;
	// Synced is when the store was last read without an error, and the
	// cursor then.
	Pending() int
	Synced() (at time.Time, cursor int64)
	// Take returns, and forgets, what applying the events of key
	// ("<kind> <name>": "cert.revoked opus@ct111", "entity.revoked acme",
	// "entity.rotated acme") did in this process.
	Take(key string) Effect
}

// Effect is what applying a change did: agents evicted, connections
// closed.
type Effect struct {
	Evicted, Closed int
	// Agents are the ids of the agents evicted.
	Agents []string
}

// EntitySource is a trust source that holds partner CAs by entity name.
type EntitySource interface {
	Name() string
	Entities() []string
	Certificates(entity string) []*x509.Certificate
}

// TrustSources is what the routes ask of the trust sources meshd was
// assembled from.
type TrustSources interface {
	// Check refuses peer (ErrEntityNameTaken) when its entity's name is
	// held by another trust source than the one that admitted it.
	Check(peer *trust.Peer) error
	// OtherHolder returns the trust source, other than the registered
	// entities, that holds an entity named entity now; "" when none does.
	OtherHolder(entity string) string
	// Dynamic returns the sources whose entities change at run time (trust
	// dir, Kubernetes Secrets, SPIRE), in the chain's order; TrustDir the
	// trust dir's, nil without one.
	Dynamic() []EntitySource
	TrustDir() EntitySource
	// Namespace is the agent-id namespace of entity in source.
	Namespace(source, entity string) registry.Namespace
	// Admitted remembers the chain an admitted certificate presented, by
	// leaf fingerprint, so that a later change of trust re-verifies the
	// agents registered with it, connected or not.
	Admitted(fingerprint string, chain []*x509.Certificate, now time.Time)
}

// ErrEntityNameTaken refuses a partner entity name another trust source
// holds already: a name is one entity, held by one source.
var ErrEntityNameTaken = errors.New("entity name held by another trust source")

// Config configures a Server. Zero values select the defaults.
type Config struct {
	// Listen is the agent port's address; default 127.0.0.1:8000.
	Listen string
	// AdminSocket is the admin API's unix socket, created 0600.
	AdminSocket string
	// AdminListen optionally serves the admin API over mTLS too; only the
	// mesh CA's certificates of AdminIdentities are admitted.
	AdminListen string
	// MetricsListen optionally serves GET /metrics alone, plain HTTP, for
	// a Prometheus that holds no admin identity; nothing else of the
	// admin API is on it.
	MetricsListen   string
	AdminIdentities []string
	TLSMode         TLSMode
	// CertFile and KeyFile are the agent port's certificate and key,
	// reloaded when they change.
	CertFile, KeyFile string
	// CertSource, instead of CertFile and KeyFile, is where the agent
	// port's certificate comes from (meshd's own X.509-SVID from the
	// SPIRE Workload API), used from the next handshake after each
	// rotation. The server does not close it.
	CertSource credentials.Source
	// BootstrapSecret enrolls nodes on /enroll and is refused everywhere
	// else; empty disables secret enrollment (join tokens still work).
	BootstrapSecret string
	// LegacySecretCompat lets the agent routes accept BootstrapSecret as a
	// bearer from callers without a certificate (migration only).
	LegacySecretCompat bool
	// ReadTimeout bounds the time to read one request, headers and body,
	// on every listener; default 30s. A slow client cannot hold a
	// connection by trickling its body.
	ReadTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sent no request for
	// that long, on every listener; default 2 minutes, as MCP Mesh 3.7.1.
	IdleTimeout time.Duration
	// MaxRequestBody, when set, bounds every request body on every
	// listener (MCP_MESH_MAX_REQUEST_BODY_BYTES): a larger body is refused
	// with 413. It lowers the routes' own bounds, never raises them.
	MaxRequestBody int64
	// MaxWatchStreams caps the open /revocations/watch streams, and
	// MaxWatchStreamsPerSource those of one source: a mesh node with
	// every agent identity the mesh CA issued under it, a partner entity,
	// another certificate's name, or for a caller without a certificate
	// its IPv4 address or IPv6 /64; defaults 1024 and 16.
	// MaxCertlessWatchStreams of the total are for callers without a
	// certificate (TLS auto), and they never get more, so the rest stay
	// for authenticated verifiers; default an eighth of MaxWatchStreams.
	MaxWatchStreams, MaxWatchStreamsPerSource, MaxCertlessWatchStreams int
	// AgentCertBurst and AgentCertInterval limit how fast one node mints
	// agent certificates (/agent-cert, and the agents of a /renew): a
	// burst, then one per interval; defaults 100 and 100ms.
	AgentCertBurst    int
	AgentCertInterval time.Duration
	// Enroll bounds the /enroll attempts, per source and in all; zero
	// fields are the defaults.
	Enroll EnrollLimits
	// Certless bounds what callers without a certificate can make meshd
	// hold in TLS mode auto; zero values are the defaults.
	Certless CertlessLimits
	// MaxAgentsPerNode caps the agent identities with a live certificate
	// one node may hold; default 512. Renewing an agent it has is never
	// refused by it.
	MaxAgentsPerNode int
	// StalenessBound is how long past its last read of the store a
	// replica keeps serving what depends on revocation state (the
	// heartbeats of agents it knows); past it those routes answer 503
	// (fresh.go). Only with Deps.Freshness; default DefaultStalenessBound.
	StalenessBound time.Duration
	// SessionKeysDir holds the session token signing keys; default the
	// CA dir's session-keys/. SessionTTL is a token's lifetime; default
	// 15 minutes.
	SessionKeysDir string
	SessionTTL     time.Duration
	// SessionIssuer is the session tokens' iss (default
	// meshauth.DefaultSessionIssuer), SessionAudience their aud (default
	// meshauth.DefaultSessionAudience); meshd's own agent port accepts
	// tokens for the first audience.
	SessionIssuer   string
	SessionAudience []string
	Logger          *slog.Logger
	Now             func() time.Time
}

// CertlessLimits bound what callers without a certificate can make meshd
// hold in TLS mode auto (see registry.CertlessLimits, whose defaults zero
// fields select): agents and stored payload bytes per source (an IPv4
// address, an IPv6 /64) and in all, one agent's payload, how long a silent
// one is kept, and how fast new agent ids are registered.
type CertlessLimits struct {
	MaxAgents, MaxAgentsPerSource           int
	MaxBytes, MaxBytesPerSource, MaxPayload int64
	Expiry                                  time.Duration
	// NewInterval is how often one source may register a new agent id
	// once it spent a burst of MaxAgentsPerSource (default 1 minute);
	// NewGlobalInterval how often all sources together may, after a burst
	// of MaxAgents (default 5s). They bound the audit rows callers without
	// a certificate cause: two per id at most (its claim, and its deletion
	// or expiry).
	NewInterval, NewGlobalInterval time.Duration
}

// EnrollLimits bound the attempts on /enroll, the one route a caller
// without a certificate reaches: per source (an IPv4 address, an IPv6
// /64) a burst, then one more every interval; and for all sources
// together a global burst, then one every global interval, so many
// addresses cannot multiply the guesses one gets. An operator who
// bootstraps many nodes at once from one address raises them for the
// rollout (--enroll-burst, --enroll-interval, ...).
type EnrollLimits struct {
	Burst          int
	Interval       time.Duration
	GlobalBurst    int
	GlobalInterval time.Duration
}

// DefaultIdleTimeout is Config.IdleTimeout's default, MCP Mesh 3.7.1's.
const DefaultIdleTimeout = 2 * time.Minute

// Defaults of EnrollLimits: per source 5, then one per 12 seconds; in all
// 50, then 2 a second.
const (
	DefaultEnrollBurst          = 5
	DefaultEnrollInterval       = 12 * time.Second
	DefaultEnrollGlobalBurst    = 50
	DefaultEnrollGlobalInterval = 500 * time.Millisecond
)

// Defaults of CertlessLimits' rates.
const (
	DefaultCertlessNewInterval       = time.Minute
	DefaultCertlessNewGlobalInterval = 5 * time.Second
)

// Registry returns l as the registry's bounds, with the new-id rate
// limited per source and in all.
func (l CertlessLimits) Registry(clock func() time.Time) registry.CertlessLimits {
	rl := registry.CertlessLimits{MaxAgents: l.MaxAgents, MaxAgentsPerSource: l.MaxAgentsPerSource,
		MaxBytes: l.MaxBytes, MaxBytesPerSource: l.MaxBytesPerSource, MaxPayload: l.MaxPayload, Expiry: l.Expiry}.WithDefaults()
	perSource := newLimiter(rl.MaxAgentsPerSource, cmp.Or(l.NewInterval, DefaultCertlessNewInterval))
	global := newLimiter(rl.MaxAgents, cmp.Or(l.NewGlobalInterval, DefaultCertlessNewGlobalInterval))
	rl.AdmitNew = func(source string) bool {
		// The source is the caller's address as the connection reports it
		// (sourceKey); no certificate vouches for it, and it only
		// apportions the rate.
		now := clock()
		return perSource.allow(source, now).ok && global.allow("*", now).ok
	}
	return rl
}

// WithDefaults returns c with its zero values set to the defaults, or an
// error for a setting meshd cannot serve.
func (c Config) WithDefaults() (Config, error) {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8000"
	}
	if c.TLSMode == "" {
		c.TLSMode = TLSAuto
	}
	if _, err := ParseTLSMode(string(c.TLSMode)); err != nil {
		return c, err
	}
	c.ReadTimeout = cmp.Or(c.ReadTimeout, 30*time.Second)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
	c.MaxWatchStreams = cmp.Or(c.MaxWatchStreams, 1024)
	c.MaxWatchStreamsPerSource = cmp.Or(c.MaxWatchStreamsPerSource, 16)
	if c.MaxCertlessWatchStreams == 0 {
		c.MaxCertlessWatchStreams = min(max(1, c.MaxWatchStreams/8), c.MaxWatchStreams-1)
	} else if c.MaxCertlessWatchStreams >= c.MaxWatchStreams {
		return c, fmt.Errorf("the revocation streams for callers without a certificate (%d, --max-certless-watch-streams) must be fewer than all revocation streams (%d, --max-watch-streams), so that authenticated verifiers keep some", c.MaxCertlessWatchStreams, c.MaxWatchStreams)
	}
	c.Enroll.Burst = cmp.Or(c.Enroll.Burst, DefaultEnrollBurst)
	c.Enroll.Interval = cmp.Or(c.Enroll.Interval, DefaultEnrollInterval)
	c.Enroll.GlobalBurst = cmp.Or(c.Enroll.GlobalBurst, DefaultEnrollGlobalBurst)
	c.Enroll.GlobalInterval = cmp.Or(c.Enroll.GlobalInterval, DefaultEnrollGlobalInterval)
	c.AgentCertBurst = cmp.Or(c.AgentCertBurst, 100)
	c.AgentCertInterval = cmp.Or(c.AgentCertInterval, 100*time.Millisecond)
	c.MaxAgentsPerNode = cmp.Or(c.MaxAgentsPerNode, 512)
	c.StalenessBound = cmp.Or(c.StalenessBound, DefaultStalenessBound)
	if c.StalenessBound < 0 {
		return c, fmt.Errorf("the staleness bound %s (--staleness-bound) must be positive", c.StalenessBound)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if len(c.AdminIdentities) == 0 {
		c.AdminIdentities = []string{"admin@external"}
	}
	return c, nil
}

// Server is meshd's listeners and routes.
type Server struct {
	cfg  Config
	log  *slog.Logger
	st   Store
	auth Authority // nil without a local CA
	// tainted is the CA's tainted intermediates (ReloadTaint), read by
	// every answer to a certificate (renewHint) and the revocation
	// streams.
	tainted atomic.Pointer[taintSet]

	revs    *trust.RevocationSet
	chain   *trust.Chain
	localCA *trust.LocalCA
	sources TrustSources
	reg     Registry
	// agentAuth verifies the agent port's callers (once per connection
	// per trust generation) and tracks its connections, so eviction can
	// close them. Agent routes are authorized by the registry's binding.
	agentAuth *meshauth.Auth
	certs     credentials.Source // the agent port's certificate; nil with TLS off
	sessions  *meshauth.Sessions // nil without signing keys
	// adminPolicy decides the admin API over mTLS (AdminPolicy).
	adminPolicy meshauth.LivePolicy
	metrics     *metrics
	// anonymous counts and logs the callers admitted without a
	// certificate in TLS mode auto.
	anonymous *anonymousCallers
	// certlessBody is the largest heartbeat body read from a caller
	// without a certificate in auto: twice the certless payload bound
	// (a body may be pretty-printed), so a larger one is refused before
	// it is read in full.
	certlessBody int64
	started      time.Time
	degraded     func() []meshapi.Degradation // nil: never degraded
	fresh        Freshness                    // nil: always current
	// freshState is the staleness gate's verdict (stateCurrent, ...),
	// refreshed every freshTick by watchFreshness and read, one atomic
	// load, by every gated request.
	freshState atomic.Int32
	changes    *Changes
	// audits runs GET /admin/status's audit verifications one at a time.
	audits    auditCheck
	lastAudit func() *meshapi.StatusAudit // nil: meshd never verifies on its own
	// console is the operator console, served on the admin surface only.
	console *console.Console
	// buffers hold heartbeat bodies and answers, reused across requests.
	buffers buffers

	agentLn, adminLn, adminTLSLn net.Listener
	agentSrv, adminSrv, adminTLS *http.Server
	metricsLn                    net.Listener
	metricsSrv                   *http.Server

	// events is the change feed: every admin request that wrote an event
	// polls it, so the request returns only once its change took effect.
	events Feed
	// enrollLimit limits /enroll per source, enrollGlobal for all
	// sources together.
	enrollLimit, enrollGlobal *limiter
	// watchSlots caps the revocation streams of callers with a
	// certificate, certlessWatchSlots those of callers without one.
	watchSlots, certlessWatchSlots *slots
	// agentCerts limits how fast one node mints agent certificates;
	// issueAudit rations the audit entries of refused issuance requests
	// (one per caller, reason and minute).
	agentCerts, issueAudit *limiter

	wg     sync.WaitGroup
	cancel context.CancelFunc
	// stopping is closed when Shutdown begins, so that long-lived
	// responses (revocation streams) end instead of holding it up.
	stopping chan struct{}
	stopOnce sync.Once
}

// New builds the routes over d.
func New(ctx context.Context, cfg Config, d Deps) (*Server, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	// Checked here, not in WithDefaults: meshd sets CertSource (its own
	// SVID) only once its Workload API source is up.
	if cfg.CertSource != nil && (cfg.CertFile != "" || cfg.KeyFile != "") {
		return nil, errors.New("the agent port's certificate comes from one place: meshd's own SVID (--tls-svid) or the files --tls-cert/--tls-key, not both")
	}
	if cfg.TLSMode != TLSOff && cfg.CertSource == nil && (cfg.CertFile == "" || cfg.KeyFile == "") {
		return nil, fmt.Errorf("TLS mode %s needs the agent port's certificate and key: set MCP_MESH_TLS_CERT and MCP_MESH_TLS_KEY (--tls-cert/--tls-key), or run meshd --dev to create them", cfg.TLSMode)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, st: d.Store, auth: d.CA, revs: d.Revocations, chain: d.Chain, localCA: d.MeshCA,
		sources: d.Sources, reg: d.Registry, events: d.Feed, degraded: d.Degraded, fresh: d.Freshness, lastAudit: d.LastAudit, changes: d.Changes, started: cfg.Now(),
		enrollLimit:  newLimiter(cfg.Enroll.Burst, cfg.Enroll.Interval),
		enrollGlobal: newLimiter(cfg.Enroll.GlobalBurst, cfg.Enroll.GlobalInterval),
		watchSlots:   newSlots(cfg.MaxWatchStreams-cfg.MaxCertlessWatchStreams, cfg.MaxWatchStreamsPerSource),
		agentCerts:   newLimiter(cfg.AgentCertBurst, cfg.AgentCertInterval), issueAudit: newLimiter(1, auditWindow),
		stopping: make(chan struct{})}
	if s.changes == nil {
		s.changes = NewChanges(cfg.Now)
	}
	s.ReloadTaint()
	s.certlessWatchSlots = newSlots(cfg.MaxCertlessWatchStreams, cfg.MaxWatchStreamsPerSource)
	if cfg.TLSMode == TLSAuto {
		s.certlessBody = 2 * registry.CertlessLimits{MaxPayload: cfg.Certless.MaxPayload}.WithDefaults().MaxPayload
	}
	if s.console, err = console.New(console.Config{Backend: consoleBackend{s}, Now: cfg.Now, Log: s.log,
		Caller: func(r *http.Request) string { return store.Actor(r.Context()) }}); err != nil {
		return nil, err
	}
	if err := s.openSessions(); err != nil {
		return nil, err
	}
	ac := meshauth.Config{Chain: s.chain, Authorizer: meshauth.AuthorizeAny(), Now: cfg.Now}
	if s.sessions != nil {
		ac.Tokens = s.sessions
		ac.TokenIssuer = s.cfg.SessionIssuer
		if len(s.cfg.SessionAudience) > 0 {
			ac.TokenAudience = s.cfg.SessionAudience[0]
		}
	}
	if s.agentAuth, err = meshauth.New(ac); err != nil {
		return nil, err
	}
	if err := s.LoadAdminPolicy(ctx); err != nil {
		return nil, err
	}
	if cfg.TLSMode != TLSOff && cfg.CertSource != nil {
		s.certs = cfg.CertSource
	} else if cfg.TLSMode != TLSOff {
		// The agent port's certificate is a credentials.Source like every
		// other: reloaded when its files change, the last good pair kept.
		certs, err := file.New(ctx, cfg.CertFile, cfg.KeyFile, "", file.WithLogger(s.log))
		if err != nil {
			return nil, fmt.Errorf("server certificate: %w", err)
		}
		s.certs = certs
	}
	var crlAge func() time.Duration
	if d.CA != nil {
		crlAge = func() time.Duration { return cfg.Now().Sub(d.CA.CRLThisUpdate()) }
	}
	s.metrics = newMetrics(s.chain, s.reg, s.serverCertExpiry, crlAge)
	s.metrics.feedPending(s.events.Pending)
	s.metrics.reg.MustRegister(d.Collectors...)
	s.anonymous = newAnonymousCallers(s.log, s.metrics.unauthenticated)
	return s, nil
}

// CloseWhere closes the agent port's open connections whose verified peer
// matches, and returns how many it closed.
func (s *Server) CloseWhere(match func(*trust.Peer) bool) int {
	return s.agentAuth.CloseWhere(func(c *meshauth.Caller) bool { return c.Peer != nil && match(c.Peer) })
}

// CloseUntrusted verifies the agent port's open connections again, closes
// those the chain now refuses, and returns their peers' fingerprints.
func (s *Server) CloseUntrusted(ctx context.Context) []string {
	return s.agentAuth.CloseUntrusted(ctx)
}

// CountEvictions adds what a loss of trust did, by cause, to
// meshd_evictions_total and meshd_evicted_connections_total.
func (s *Server) CountEvictions(cause string, eff Effect) {
	s.metrics.evictions.WithLabelValues(cause).Add(float64(eff.Evicted))
	s.metrics.closedConns.Add(float64(eff.Closed))
}

func (s *Server) serverCertExpiry() time.Time {
	if s.certs == nil {
		return time.Time{}
	}
	c, err := s.certs.Current()
	if err != nil {
		return time.Time{}
	}
	return c.Certificate.Leaf.NotAfter
}

// Start opens the listeners and serves in the background until ctx ends
// or Shutdown is called.
func (s *Server) Start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("agent port: %w", err)
	}
	s.agentLn = ln
	s.agentSrv = s.httpServer(s.agentHandler())
	s.agentSrv.ConnContext, s.agentSrv.ConnState = s.agentAuth.ConnContext, s.agentAuth.ConnState
	if s.cfg.TLSMode == TLSOff {
		s.log.Warn("TLS IS OFF: the agent port serves plain HTTP with no identities; any caller can register, heartbeat or delete any agent. Use --tls-mode auto or strict outside a throwaway experiment.", "listen", ln.Addr().String())
	} else {
		if s.cfg.TLSMode == TLSAuto {
			s.log.Warn("TLS mode auto: callers without a client certificate are admitted to the agent routes as MCP Mesh admits them; they may act only for agent ids no certificate has claimed, are listed as unauthenticated, and are counted in meshd_unauthenticated_requests_total. strict is the production mode: use --tls-mode strict (MCP_MESH_TLS_MODE=strict) once every agent presents a certificate.", "listen", ln.Addr().String())
		}
		s.agentSrv.TLSConfig = agentTLSConfig(s.certs)
		ln = tls.NewListener(ln, s.agentSrv.TLSConfig)
	}
	s.serve(s.agentSrv, ln)
	if s.fresh != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.watchFreshness(ctx) }()
	}

	if s.cfg.AdminSocket != "" {
		if err := s.listenAdminSocket(); err != nil {
			s.abortStart()
			return err
		}
	}
	if s.cfg.AdminListen != "" {
		if err := s.listenAdminTLS(); err != nil {
			s.abortStart()
			return err
		}
	}
	if s.cfg.MetricsListen != "" {
		if err := s.listenMetrics(); err != nil {
			s.abortStart()
			return err
		}
	}
	return nil
}

// abortStart closes what a failed Start had opened already.
func (s *Server) abortStart() {
	for _, srv := range []*http.Server{s.agentSrv, s.adminSrv, s.adminTLS, s.metricsSrv} {
		if srv != nil {
			srv.Close()
		}
	}
	s.cancel()
	s.wg.Wait()
	if s.adminLn != nil {
		os.Remove(s.cfg.AdminSocket)
		s.adminLn = nil
	}
}

// httpServer is every listener's http.Server, with MCP Mesh 3.7.1's
// timeouts: headers read within 10s, a kept-alive connection closed after
// IdleTimeout (2 minutes) of silence, and a request (headers and body)
// read within ReadTimeout. That last is an absolute deadline on reading
// the request only: a long-lived response (the revocation stream) lifts
// it once its request is read (serveWatch), so no deadline cuts a stream.
func (s *Server) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           s.limitBodies(h),
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// headerTimeout bounds reading a request's headers, on every listener.
const headerTimeout = 10 * time.Second

// limitBodies refuses, with 413, a request whose body is larger than
// Config.MaxRequestBody (MCP_MESH_MAX_REQUEST_BODY_BYTES), and bounds the
// reading of one that does not say its length; without the setting it
// leaves each route to its own bound. A route whose own bound is smaller
// (a heartbeat's 1 MiB, /agent-cert's 64 KiB) keeps it.
func (s *Server) limitBodies(next http.Handler) http.Handler {
	limit := s.cfg.MaxRequestBody
	if limit <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			s.refuse(w, r, http.StatusRequestEntityTooLarge, "body_too_large",
				fmt.Sprintf("the request body (%d bytes) is larger than this meshd accepts (%d bytes, MCP_MESH_MAX_REQUEST_BODY_BYTES)", r.ContentLength, limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}

func (s *Server) serve(srv *http.Server, ln net.Listener) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// AgentAddr returns the agent port's bound address.
func (s *Server) AgentAddr() string {
	if s.agentLn == nil {
		return ""
	}
	return s.agentLn.Addr().String()
}

// AdminTLSAddr returns the mTLS admin listener's bound address, if any.
func (s *Server) AdminTLSAddr() string {
	if s.adminTLSLn == nil {
		return ""
	}
	return s.adminTLSLn.Addr().String()
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// and writes the registry's pending liveness changes.
func (s *Server) Shutdown(ctx context.Context) error {
	// http.Server.Shutdown waits for active requests, and a revocation
	// stream never finishes on its own.
	s.stopOnce.Do(func() { close(s.stopping) })
	var errs []error
	for _, srv := range []*http.Server{s.agentSrv, s.adminSrv, s.adminTLS, s.metricsSrv} {
		if srv != nil {
			errs = append(errs, srv.Shutdown(ctx))
		}
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.certs != nil {
		errs = append(errs, s.certs.Close())
	}
	if s.adminLn != nil {
		// Only a socket this meshd created: after a failed Start it may
		// be another meshd's.
		os.Remove(s.cfg.AdminSocket)
	}
	return errors.Join(errs...)
}
