// Package server is meshd's network face: the agent port (TLS modes, the
// MCP Mesh-compatible agent routes), the admin API (a unix socket, and
// optionally an mTLS listener for admin identities), and the eviction
// pipeline that turns a revocation into refused requests and closed
// connections.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/events"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/filestore"
	"github.com/meshtrust/meshtrust/trust/k8ssecrets"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

// Store is the durable state meshd needs.
type Store interface {
	store.Store
}

// replicated is a Store that other meshd processes (replicas) may share:
// the PostgreSQL store, whose Wake is not nil. Wake tells when the change
// feed may have grown (LISTEN/NOTIFY), so that replicas apply each other's
// revocations within milliseconds rather than at the next poll; the
// registry merges the agents the others registered every replicaSync.
type replicated interface {
	Wake() <-chan struct{}
}

// replicaSync is how often a replica's registry merges the agents other
// replicas wrote: how long GET /agents on two replicas may disagree.
const replicaSync = time.Second

// Backend names for MCP_MESH_TRUST_BACKEND.
const (
	BackendLocalCA   = "localca"
	BackendFilestore = "filestore"
	BackendK8s       = k8ssecrets.Name
	BackendSPIRE     = spirebundle.Name
	// BackendEntities trusts the entities registered with `meshctl entity
	// register`. It is appended to the chain when not listed.
	BackendEntities = "entities"
)

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
	// Backends is MCP_MESH_TRUST_BACKEND, in order.
	Backends []string
	// TrustDir is MCP_MESH_TRUST_DIR, for the filestore backend. Without
	// a mesh CA, its ca.pem is the localca backend's CA, as MCP Mesh's
	// --tls-auto leaves it.
	TrustDir string
	// AgentTrustDomain is MCP_MESH_TRUST_DOMAIN for identity binding: the
	// <name>.<trust domain> form of MCP Mesh's agent certificates that
	// trust-dir and entity CAs admit by default; default mcp-mesh.local.
	AgentTrustDomain string
	// AgentBindings overrides the identity binding of trust sources, by
	// backend name (see docs/identity-binding.md). By default the mesh
	// CA's localca binds by exact CN, every other source by exact CN and
	// <name>.<AgentTrustDomain>.
	AgentBindings map[string]registry.Binding
	// EntityNamespaces are the namespaces of the entities that the trust
	// dir (entities/<name>.pem) and other backends admit; an entity
	// registered with meshd has the namespace chosen at registration.
	// Default: the prefix "<name>-".
	EntityNamespaces map[string]registry.Namespace
	// K8s configures the k8s-secrets backend.
	K8s K8sConfig
	// SPIRE configures the spire backend.
	SPIRE SPIREConfig
	// HeartbeatTimeout is how long an agent may be silent before it is
	// unhealthy; default 20s.
	HeartbeatTimeout time.Duration
	// HealthCheckInterval is how often silent agents are marked unhealthy
	// and liveness changes are written; default 500ms.
	HealthCheckInterval time.Duration
	// RevocationPoll is how often the store is checked for revocations
	// made by other processes (meshctl ca revoke offline); default 100ms.
	RevocationPoll time.Duration
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
	// EnrollBurst and EnrollInterval, when set, replace both limits on
	// /enroll attempts, per source (default a burst of 5, then one per
	// 12s) and across all sources (50, then one per 500ms): for a
	// benchmark of enrollment itself. /enroll is the one route a caller
	// without a certificate reaches; meshd sets neither.
	EnrollBurst    int
	EnrollInterval time.Duration
	// Certless bounds what callers without a certificate can make meshd
	// hold in TLS mode auto; zero values are the defaults.
	Certless CertlessLimits
	// Registrations bounds what one agent may register (tools,
	// dependencies, tags) and lists the partner entities whose agents may
	// provide for agents outside their entity; see registry.Config.
	Registrations RegistrationLimits
	// CheckpointInterval is how often the audit log's head is signed into
	// the CA's checkpoints file while it grows; default 1 minute.
	CheckpointInterval time.Duration
	// MaxAgentsPerNode caps the agent identities with a live certificate
	// one node may hold; default 512. Renewing an agent it has is never
	// refused by it.
	MaxAgentsPerNode int
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

// RegistrationLimits are the registry's bounds on one registration and its
// trust boundary for dependency resolution; zero values are the
// registry's defaults.
type RegistrationLimits struct {
	MaxTools, MaxToolDependencies, MaxDependencies, MaxTags int
	// ProviderEntities are partner entities whose agents may be the
	// providers of agents outside their entity (the mesh's own included).
	ProviderEntities []string
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

// Defaults of CertlessLimits' rates.
const (
	DefaultCertlessNewInterval       = time.Minute
	DefaultCertlessNewGlobalInterval = 5 * time.Second
)

// registryLimits returns l as the registry's bounds, with the new-id rate
// limited per source and in all.
func (l CertlessLimits) registryLimits(clock func() time.Time) registry.CertlessLimits {
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

// Server is meshd.
type Server struct {
	cfg  Config
	log  *slog.Logger
	st   Store
	auth *ca.CA // nil without a local CA

	revs     *trust.RevocationSet
	chain    *trust.Chain
	localCA  *trust.LocalCA
	entities *trust.Anchors
	revoked  *trust.Anchors // revoked entities' CAs, last in the chain: refused as entity_revoked, not unknown_ca
	files    *filestore.Backend
	k8s      *k8ssecrets.Backend // nil unless the k8s-secrets backend is on
	// dynamic are the backends whose entities change at run time
	// (filestore, k8s-secrets, spire), and closers what stops them.
	dynamic []dynamicBackend
	closers []func() error
	// admitted remembers the chains of admitted certificates, so that a
	// trust change re-verifies registered agents, not only open
	// connections.
	admitted admittedChains
	reg      *registry.Registry
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
	// namespaces holds the entities' agent-id namespaces, for the registry.
	namespaces *registry.Namespaces
	// names keeps each partner entity name to one trust source.
	names   *entityNames
	started time.Time

	agentLn, adminLn, adminTLSLn net.Listener
	agentSrv, adminSrv, adminTLS *http.Server
	metricsLn                    net.Listener
	metricsSrv                   *http.Server

	// events is the change feed; applyEvent is its subscriber here. The
	// poll loop and every admin request that wrote an event poll it, so
	// the request returns only once its change took effect.
	events  *events.Feed
	effects effects
	crl     *ca.CRLRefresher // nil without a local CA
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

	trustChanged chan struct{}
	wg           sync.WaitGroup
	cancel       context.CancelFunc
	// stopping is closed when Shutdown begins, so that long-lived
	// responses (revocation streams) end instead of holding it up.
	stopping chan struct{}
	stopOnce sync.Once
}

// New builds a Server over st. authority is the mesh CA, required by the
// localca backend and by admin revocation; it may be nil otherwise.
func New(ctx context.Context, cfg Config, st Store, authority *ca.CA) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8000"
	}
	if cfg.TLSMode == "" {
		cfg.TLSMode = TLSAuto
	}
	if _, err := ParseTLSMode(string(cfg.TLSMode)); err != nil {
		return nil, err
	}
	if cfg.RevocationPoll == 0 {
		cfg.RevocationPoll = 100 * time.Millisecond
	}
	cfg.ReadTimeout = cmp.Or(cfg.ReadTimeout, 30*time.Second)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, 2*time.Minute)
	cfg.MaxWatchStreams = cmp.Or(cfg.MaxWatchStreams, 1024)
	cfg.MaxWatchStreamsPerSource = cmp.Or(cfg.MaxWatchStreamsPerSource, 16)
	if cfg.MaxCertlessWatchStreams == 0 {
		cfg.MaxCertlessWatchStreams = min(max(1, cfg.MaxWatchStreams/8), cfg.MaxWatchStreams-1)
	} else if cfg.MaxCertlessWatchStreams >= cfg.MaxWatchStreams {
		return nil, fmt.Errorf("the revocation streams for callers without a certificate (%d, --max-certless-watch-streams) must be fewer than all revocation streams (%d, --max-watch-streams), so that authenticated verifiers keep some", cfg.MaxCertlessWatchStreams, cfg.MaxWatchStreams)
	}
	cfg.AgentCertBurst = cmp.Or(cfg.AgentCertBurst, 100)
	cfg.AgentCertInterval = cmp.Or(cfg.AgentCertInterval, 100*time.Millisecond)
	cfg.MaxAgentsPerNode = cmp.Or(cfg.MaxAgentsPerNode, 512)
	cfg.CheckpointInterval = cmp.Or(cfg.CheckpointInterval, time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.AdminIdentities) == 0 {
		cfg.AdminIdentities = []string{"admin@external"}
	}
	s := &Server{cfg: cfg, log: cfg.Logger, st: st, auth: authority, revs: &trust.RevocationSet{},
		trustChanged: make(chan struct{}, 1), started: cfg.Now(),
		enrollLimit:  newLimiter(cmp.Or(cfg.EnrollBurst, enrollBurst), cmp.Or(cfg.EnrollInterval, enrollInterval)),
		enrollGlobal: newLimiter(cmp.Or(cfg.EnrollBurst, enrollGlobalBurst), cmp.Or(cfg.EnrollInterval, enrollGlobalInterval)),
		watchSlots:   newSlots(cfg.MaxWatchStreams-cfg.MaxCertlessWatchStreams, cfg.MaxWatchStreamsPerSource),
		agentCerts:   newLimiter(cfg.AgentCertBurst, cfg.AgentCertInterval), issueAudit: newLimiter(1, auditWindow),
		stopping: make(chan struct{}), namespaces: registry.NewNamespaces()}
	s.certlessWatchSlots = newSlots(cfg.MaxCertlessWatchStreams, cfg.MaxWatchStreamsPerSource)
	s.cfg.AgentTrustDomain = cmp.Or(cfg.AgentTrustDomain, DefaultAgentTrustDomain)

	if cfg.TLSMode != TLSOff {
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, fmt.Errorf("TLS mode %s needs the agent port's certificate and key: set MCP_MESH_TLS_CERT and MCP_MESH_TLS_KEY (--tls-cert/--tls-key), or run meshd --dev to create them", cfg.TLSMode)
		}
		// The agent port's certificate is a credentials.Source like every
		// other: reloaded when its files change, the last good pair kept.
		certs, err := file.New(ctx, cfg.CertFile, cfg.KeyFile, "", file.WithLogger(s.log))
		if err != nil {
			return nil, fmt.Errorf("server certificate: %w", err)
		}
		s.certs = certs
	}
	ok := false
	defer func() {
		if ok {
			return
		}
		s.closeBackends() // the watchers buildBackends started
		if s.certs != nil {
			s.certs.Close() // and the server certificate's
		}
	}()
	backends, err := s.buildBackends(ctx)
	if err != nil {
		return nil, err
	}
	s.chain = trust.NewChain(s.revs, backends, trust.WithClock(cfg.Now))
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
	for _, b := range s.dynamic {
		// After the chain's own subscription, so the sweep never re-verifies
		// against verdicts cached before the change.
		b.OnChange(s.noteTrustChange)
	}
	// The feed is followed from its last event on; what came before is
	// loaded from the store's current state (read after the cursor, so a
	// change in between is applied twice, never missed).
	cursor, err := st.LastEventSeq(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the change feed: %w", err)
	}
	if err := s.loadState(ctx); err != nil {
		return nil, err
	}
	// After the registered entities are loaded: at start, a name two
	// sources hold goes to the first in the chain's order.
	s.names = newEntityNames(s.log, backends, s.revoked)
	if err := s.loadAdminPolicy(ctx); err != nil {
		return nil, err
	}
	feedCfg := events.Config{Logger: s.log, Now: cfg.Now}
	var syncEvery time.Duration
	if w, ok := st.(replicated); ok && w.Wake() != nil {
		feedCfg.Wake, syncEvery = w.Wake(), replicaSync
	}
	s.events = events.New(st, cursor, feedCfg)
	s.events.Handle(s.applyEvent)
	bindings, err := s.bindings(backends)
	if err != nil {
		return nil, err
	}
	for _, b := range backends {
		if b.Name() == BackendEntities {
			continue
		}
		for name, ns := range cfg.EntityNamespaces {
			s.namespaces.Set(b.Name(), name, ns)
		}
	}
	rl := cfg.Registrations
	// Only auto admits callers without a certificate beside ones with;
	// in off no caller has one, and nothing is bounded as certless.
	var certless *registry.CertlessLimits
	if cfg.TLSMode == TLSAuto {
		l := cfg.Certless.registryLimits(cfg.Now)
		certless = &l
		s.certlessBody = 2 * l.MaxPayload
	}
	if s.reg, err = registry.New(ctx, st, registry.Config{Timeout: cfg.HeartbeatTimeout, FlushInterval: cfg.HealthCheckInterval, Now: cfg.Now, Logger: s.log, SyncInterval: syncEvery,
		MaxTools: rl.MaxTools, MaxToolDependencies: rl.MaxToolDependencies, MaxDependencies: rl.MaxDependencies, MaxTags: rl.MaxTags,
		ProviderEntities: rl.ProviderEntities, PlainHTTP: cfg.TLSMode == TLSOff, Bindings: bindings, Namespaces: s.namespaces,
		Certless: certless}); err != nil {
		return nil, err
	}
	var crlAge func() time.Duration
	if authority != nil {
		s.crl = authority.NewCRLRefresher(s.log)
		crlAge = func() time.Duration { return cfg.Now().Sub(authority.CRLThisUpdate()) }
	}
	s.metrics = newMetrics(s.chain, s.reg, s.serverCertExpiry, crlAge)
	s.metrics.feedPending(s.events.Pending)
	s.anonymous = newAnonymousCallers(s.log, s.metrics.unauthenticated)
	s.backendMetrics()
	if err := s.evictRevokedAgents(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Server) buildBackends(ctx context.Context) ([]trust.Backend, error) {
	names := s.cfg.Backends
	if len(names) == 0 {
		names = []string{BackendLocalCA}
	}
	var out []trust.Backend
	seen := map[string]bool{}
	for _, raw := range names {
		name := strings.TrimSpace(raw)
		if seen[name] {
			return nil, fmt.Errorf("trust backend %q is listed twice in MCP_MESH_TRUST_BACKEND", name)
		}
		seen[name] = true
		switch name {
		case BackendLocalCA:
			if s.auth == nil {
				dev, err := s.trustDirCA()
				if err != nil {
					return nil, err
				}
				out = append(out, dev)
				continue
			}
			s.localCA = trust.NewLocalCA(s.auth.TrustDomain(), s.auth.Root(), s.auth.Intermediates())
			out = append(out, s.localCA)
		case BackendFilestore:
			if s.cfg.TrustDir == "" {
				return nil, errors.New("trust backend filestore needs MCP_MESH_TRUST_DIR (--trust-dir)")
			}
			fs, err := filestore.New(ctx, s.cfg.TrustDir, filestore.WithLogger(s.log))
			if err != nil {
				return nil, err
			}
			s.files = fs
			s.addDynamic(fs, fs.Close)
			out = append(out, fs)
		case BackendK8s:
			b, err := s.k8sBackend(ctx)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		case BackendSPIRE:
			b, err := s.spireBackend(ctx)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		case BackendEntities:
			s.entities = trust.NewAnchors(BackendEntities)
			out = append(out, s.entities)
		default:
			return nil, fmt.Errorf("unknown trust backend %q in MCP_MESH_TRUST_BACKEND (want a comma list of localca, filestore, k8s-secrets, spire, entities)", name)
		}
	}
	if s.entities == nil {
		s.entities = trust.NewAnchors(BackendEntities)
		out = append(out, s.entities)
	}
	s.revoked = trust.NewAnchors("revoked-entities")
	out = append(out, s.revoked)
	return out, nil
}

// loadState fills the revocation set and the registered entities from the
// store.
func (s *Server) loadState(ctx context.Context) error {
	ents, err := s.st.Entities(ctx)
	if err != nil {
		return fmt.Errorf("load entities: %w", err)
	}
	for _, e := range ents {
		if e.Revoked() {
			s.revs.AddEntity(trust.Revoked{Entity: e.Name, At: e.RevokedAt, Reason: "entity revoked"})
			if certs, err := pemfile.ParseCerts(e.CAPEM); err == nil {
				s.revoked.Set(e.Name, certs)
			}
			continue
		}
		certs, err := pemfile.ParseCerts(e.CAPEM)
		if err != nil {
			s.log.Warn("stored entity CA does not parse; skipping it", "entity", e.Name, "err", err)
			continue
		}
		s.namespaces.Set(BackendEntities, e.Name, storedNamespace(e))
		s.entities.Set(e.Name, certs)
	}
	revs, err := s.st.Revocations(ctx, 0)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	for _, r := range revs {
		reason := ca.Reason(r.Reason).String()
		s.revs.AddSerial(trust.Revoked{Serial: r.Serial, IssuerKeyID: r.IssuerKeyID, Reason: reason, At: r.RevokedAt})
	}
	ids, err := s.st.RevokedIdentities(ctx)
	if err != nil {
		return fmt.Errorf("load revoked identities: %w", err)
	}
	for _, r := range ids {
		s.revs.AddIdentity(trust.Revoked{Identity: r.Name, Reason: ca.Reason(r.Reason).String(), At: r.RevokedAt})
	}
	keys, err := s.st.BlockedKeys(ctx)
	if err != nil {
		return fmt.Errorf("load revoked keys: %w", err)
	}
	for _, k := range keys {
		s.revs.AddKey(trust.Revoked{KeyHash: k, Reason: "keyCompromise"})
	}
	return nil
}

// evictRevokedAgents evicts the loaded agents whose certificate, key,
// identity or entity was revoked while meshd was down: they must not stay
// listed healthy until the heartbeat timeout.
func (s *Server) evictRevokedAgents(ctx context.Context) error {
	recs, err := s.st.Agents(ctx)
	if err != nil {
		return fmt.Errorf("load agents: %w", err)
	}
	keys, err := s.st.BlockedKeys(ctx)
	if err != nil {
		return fmt.Errorf("load revoked keys: %w", err)
	}
	blocked := make(map[string]bool, len(keys))
	for _, k := range keys {
		blocked[k] = true
	}
	for _, a := range recs {
		if a.Status == registry.StatusEvicted {
			continue
		}
		var (
			ev     []registry.Evicted
			reason string
		)
		// Only a certificate the mesh CA recorded is looked up: the
		// agent's stored fingerprint (SHA-256 of the DER it registered
		// with) must be the record's, so a serial another issuer reused
		// never matches.
		if rec, cerr := s.st.Cert(ctx, a.CertSerial); cerr == nil && rec.Fingerprint == a.CertFingerprint {
			r, revoked := s.revs.Serial(rec.IssuerKeyID, rec.Serial)
			// The key: a keyCompromise revocation of any certificate of it
			// (a same-key renewal's predecessor) blocks this one too. The
			// mesh CA's record vouches for the hash compared: lowercase hex
			// SHA-256 of the certificate's SubjectPublicKeyInfo, the form
			// BlockedKeys holds.
			if !revoked && rec.KeyHash != "" && blocked[rec.KeyHash] {
				r, revoked = trust.Revoked{KeyHash: rec.KeyHash, Reason: ca.Reason(store.ReasonKeyCompromise).String() + " of its key"}, true
			}
			if revoked {
				reason = "certificate_revoked"
				ev, err = s.reg.EvictFingerprints(ctx, map[string]bool{rec.Fingerprint: true}, fmt.Sprintf("certificate %s (serial %s) revoked: %s", a.Owner, a.CertSerial, r.Reason))
			}
		}
		if reason == "" {
			for _, name := range store.BlockingNames(a.Owner) {
				if _, ok := s.revs.Identity(name); ok {
					reason = "identity_revoked"
					ev, err = s.reg.EvictIdentity(ctx, name, fmt.Sprintf("identity %s revoked", name))
					break
				}
			}
		}
		if _, ok := s.revs.Entity(a.Entity); reason == "" && ok && a.Entity != "" {
			reason = "entity_revoked"
			ev, err = s.reg.EvictEntity(ctx, a.Entity, fmt.Sprintf("entity %q revoked", a.Entity))
		}
		if err != nil {
			return err
		}
		if len(ev) > 0 {
			s.metrics.evictions.WithLabelValues(reason).Add(float64(len(ev)))
			s.log.Info("evicted agents revoked while meshd was down", "agent", a.ID, "agents_evicted", len(ev))
		}
	}
	return nil
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
	// Entities may have left the trust dir while meshd was down.
	s.noteTrustChange()
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.reg.Run(ctx) }()
	go func() { defer s.wg.Done(); s.events.Run(ctx, s.cfg.RevocationPoll) }()
	go func() { defer s.wg.Done(); s.watchTrust(ctx) }()
	if s.crl != nil {
		s.wg.Add(2)
		go func() { defer s.wg.Done(); s.crl.Run(ctx) }()
		go func() { defer s.wg.Done(); s.checkpointLoop(ctx) }()
	}
	s.log.Info("meshd serving", "agent_port", s.AgentAddr(), "tls_mode", s.cfg.TLSMode, "backends", backendNames(s.chain.Backends()), "admin_socket", s.cfg.AdminSocket, "admin_listen", s.cfg.AdminListen, "agents", s.reg.Len())
	return nil
}

// checkpointLoop anchors the audit log outside the store: a checkpoint
// signed by the CA every CheckpointInterval while the log grows, and one at
// shutdown, so a later rewrite or truncation of the store's log is caught
// by `meshctl ca audit --verify`.
func (s *Server) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.checkpoint(context.WithoutCancel(ctx))
			return
		case <-t.C:
			s.checkpoint(ctx)
		}
	}
}

func (s *Server) checkpoint(ctx context.Context) {
	if _, err := s.auth.Checkpoint(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("writing the audit checkpoint failed; the audit log may have been rewritten or restored (run meshctl ca audit --verify)", "err", err)
	}
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

func backendNames(backends []trust.Backend) []string {
	var out []string
	for _, b := range backends {
		out = append(out, b.Name())
	}
	return out
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

// Registry returns the agent registry.
func (s *Server) Registry() *registry.Registry { return s.reg }

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
	errs = append(errs, s.closeBackends())
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

// noteTrustChange is called when a backend's anchors change.
func (s *Server) noteTrustChange() {
	select {
	case s.trustChanged <- struct{}{}:
	default:
	}
}

// watchTrust re-verifies open connections and registered agents' entities
// after a backend's anchors change (a file removed from the trust dir),
// evicting what is no longer trusted.
func (s *Server) watchTrust(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.trustChanged:
			s.sweepTrust(ctx)
		}
	}
}

func (s *Server) sweepTrust(ctx context.Context) {
	refused := map[string]bool{}
	closed := 0
	for _, fp := range s.agentAuth.CloseUntrusted(ctx) {
		refused[fp] = true
		closed++
	}
	// Registered agents whose certificate no longer verifies lose their
	// standing even if they have no connection open right now; so do the
	// agents of entities no backend knows any more (those meshd has not
	// seen a certificate of since it started).
	for fp := range s.admitted.refused(ctx, s.chain) {
		refused[fp] = true
	}
	known := map[string]bool{}
	for _, b := range s.dynamic {
		for _, e := range b.Entities() {
			known[e] = true
		}
	}
	for _, e := range s.entities.Entities() {
		known[e] = true
	}
	var gone []string
	for _, v := range s.reg.List(registry.Filter{}) {
		if v.EntityID != "" && !known[v.EntityID] && v.Status != registry.StatusEvicted && !slices.Contains(gone, v.EntityID) {
			gone = append(gone, v.EntityID)
		}
	}
	evicted := 0
	for _, e := range gone {
		ev, err := s.reg.EvictEntity(ctx, e, fmt.Sprintf("entity %q is no longer trusted", e))
		if err != nil {
			s.log.Error("evict agents of a removed entity", "entity", e, "err", err)
		}
		evicted += len(ev)
	}
	ev, err := s.reg.EvictFingerprints(ctx, refused, "certificate no longer trusted")
	if err != nil {
		s.log.Error("evict agents whose certificate lost trust", "err", err)
	}
	evicted += len(ev)
	s.metrics.evictions.WithLabelValues("trust_changed").Add(float64(evicted))
	s.metrics.closedConns.Add(float64(closed))
	if evicted+closed > 0 {
		s.log.Info("trust anchors changed", "agents_evicted", evicted, "connections_closed", closed, "entities_gone", gone)
	}
}
