// Package meshd assembles meshd: it opens the trust backends named in
// the configuration, loads the trust state from the store, follows the
// change feed (apply.go), re-verifies what it admitted when a backend's
// anchors change (sweep.go), signs the audit log's checkpoints, and hands
// the routes of package server the small values they act on.
package meshd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/bundleendpoint"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/events"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/filestore"
	"github.com/meshtrust/meshtrust/trust/k8ssecrets"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

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

// Config configures meshd: its listeners and routes (server.Config), and
// how it is assembled. Zero values select the defaults.
type Config struct {
	server.Config
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
	// BundleEndpoint serves the mesh CA's bundle as a SPIFFE bundle
	// endpoint, for SPIRE deployments that federate with the mesh; off
	// unless its Addr is set. It needs the mesh CA.
	BundleEndpoint bundleendpoint.Config
	// HeartbeatTimeout is how long an agent may be silent before it is
	// unhealthy; default 20s.
	HeartbeatTimeout time.Duration
	// HealthCheckInterval is how often silent agents are marked unhealthy
	// and liveness changes are written; default 500ms.
	HealthCheckInterval time.Duration
	// RevocationPoll is how often the store is checked for revocations
	// made by other processes (meshctl ca revoke offline); default 100ms.
	RevocationPoll time.Duration
	// Registrations bounds what one agent may register (tools,
	// dependencies, tags) and lists the partner entities whose agents may
	// provide for agents outside their entity; see registry.Config.
	Registrations RegistrationLimits
	// CheckpointInterval is how often the audit log's head is signed into
	// the CA's checkpoints file while it grows; default 1 minute.
	CheckpointInterval time.Duration
	// AuditVerifyInterval is how often meshd verifies the whole audit log
	// against the signed checkpoints (meshd_audit_verified); default 1
	// hour. Each verification reads the whole log.
	AuditVerifyInterval time.Duration
	// CASecretDir is where a kubernetes.io/tls Secret holding the CA's
	// intermediate is mounted (tls.crt, tls.key, ca.crt; meshd
	// --ca-from-secret): meshd adopts each new version of it, on every
	// replica, without a restart (casecret.go). It needs the mesh CA,
	// adopted from the Secret once before New (AdoptCASecret).
	CASecretDir string
	// CASecretResync is how often the Secret is read again besides on a
	// change of its directory; default 1 minute.
	CASecretResync time.Duration
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

// Meshd is one meshd process: its trust state, registry and change feed,
// and the routes over them.
type Meshd struct {
	cfg  Config
	log  *slog.Logger
	st   server.Store
	auth *ca.CA // nil without a local CA
	srv  *server.Server
	// bundle is the SPIFFE bundle endpoint; nil when it is off.
	bundle *bundleendpoint.Server

	revs     *trust.RevocationSet
	chain    *trust.Chain
	localCA  *trust.LocalCA
	entities *trust.Anchors
	revoked  *trust.Anchors // revoked entities' CAs, last in the chain: refused as entity_revoked, not unknown_ca
	files    *filestore.Backend
	k8s      *k8ssecrets.Backend  // nil unless the k8s-secrets backend is on
	spire    *spirebundle.Backend // nil unless the spire backend is on
	spireSrc *spire.Source        // meshd's Workload API: the spire backend's, and its own SVID's
	// dynamic are the backends whose entities change at run time
	// (filestore, k8s-secrets, spire), and closers what stops them.
	dynamic []dynamicBackend
	closers []func() error
	// admitted remembers the chains of admitted certificates, so that a
	// trust change re-verifies registered agents, not only open
	// connections.
	admitted admittedChains
	reg      *registry.Registry
	// namespaces holds the entities' agent-id namespaces, for the registry.
	namespaces *registry.Namespaces
	// names keeps each partner entity name to one trust source.
	names *entityNames

	// events is the change feed; apply is its subscriber here. The poll
	// loop and every admin request that wrote an event poll it, so the
	// request returns only once its change took effect.
	events  *events.Feed
	effects effects
	// changes fans out the changes this process applies and the
	// registry's, for the operator console.
	changes *server.Changes
	crl     *ca.CRLRefresher // nil without a local CA
	// obs is what meshd exports about itself (observe.go).
	obs *observer
	// caSecret follows the CA Secret; nil without Config.CASecretDir.
	caSecret *caSecretWatcher
	// serving re-issues the agent port's certificate when the CA issued
	// it itself (servingcert.go); nil otherwise.
	serving *servingCert

	trustChanged chan struct{}
	wg           sync.WaitGroup
	cancel       context.CancelFunc
}

// Defaults of Config.RevocationPoll and Config.CheckpointInterval.
const (
	DefaultRevocationPoll     = 100 * time.Millisecond
	DefaultCheckpointInterval = time.Minute
)

// minPollsPerBound is how many change feed polls the staleness bound
// (server.Config.StalenessBound) must cover at least.
const minPollsPerBound = 3

// The CA and the registry are what the server's routes act on.
var (
	_ server.Authority = (*ca.CA)(nil)
	_ server.Registry  = (*registry.Registry)(nil)
)

// New assembles meshd over st. authority is the mesh CA, required by the
// localca backend and by admin revocation; it may be nil otherwise.
func New(ctx context.Context, cfg Config, st server.Store, authority *ca.CA) (*Meshd, error) {
	var err error
	if cfg.Config, err = cfg.Config.WithDefaults(); err != nil {
		return nil, err
	}
	cfg.RevocationPoll = cmp.Or(cfg.RevocationPoll, DefaultRevocationPoll)
	cfg.CheckpointInterval = cmp.Or(cfg.CheckpointInterval, DefaultCheckpointInterval)
	cfg.AuditVerifyInterval = cmp.Or(cfg.AuditVerifyInterval, DefaultAuditVerifyInterval)
	cfg.AgentTrustDomain = cmp.Or(cfg.AgentTrustDomain, DefaultAgentTrustDomain)
	m := &Meshd{cfg: cfg, log: cfg.Logger, st: st, auth: authority, revs: &trust.RevocationSet{},
		trustChanged: make(chan struct{}, 1), namespaces: registry.NewNamespaces(), changes: server.NewChanges(cfg.Now), obs: newObserver()}
	ok := false
	defer func() {
		if !ok {
			m.closeBackends() // the watchers buildBackends started
			if m.bundle != nil {
				m.bundle.Shutdown(ctx) // its certificate files' watch
			}
		}
	}()
	backends, err := m.buildBackends(ctx)
	if err != nil {
		return nil, err
	}
	m.chain = trust.NewChain(m.revs, backends, trust.WithClock(cfg.Now))
	for _, b := range m.dynamic {
		// After the chain's own subscription, so the sweep never re-verifies
		// against verdicts cached before the change.
		b.OnChange(m.noteTrustChange)
	}
	// The feed is followed from its last event on; what came before is
	// loaded from the store's current state (read after the cursor, so a
	// change in between is applied twice, never missed).
	cursor, err := st.LastEventSeq(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the change feed: %w", err)
	}
	if err := m.loadState(ctx); err != nil {
		return nil, err
	}
	// After the registered entities are loaded: at start, a name two
	// sources hold goes to the first in the chain's order.
	m.names = newEntityNames(m.log, backends, m.revoked)
	// A read of the store is abandoned well inside the bound, so a
	// replica whose link returns reads afresh at once (events.Config).
	feedCfg := events.Config{Logger: m.log, Now: cfg.Now, PollTimeout: min(time.Second, cfg.StalenessBound/3)}
	var syncEvery time.Duration
	w, replica := st.(replicated)
	replica = replica && w.Wake() != nil
	// A few polls fit in the bound, so that one slow read does not make
	// a healthy replica refuse.
	if replica && cfg.StalenessBound < minPollsPerBound*cfg.RevocationPoll {
		return nil, fmt.Errorf("the staleness bound %s (--staleness-bound) must cover at least %d change feed polls (--revocation-poll %s): at least %s", cfg.StalenessBound, minPollsPerBound, cfg.RevocationPoll, minPollsPerBound*cfg.RevocationPoll)
	}
	if replica {
		feedCfg.Wake, syncEvery = w.Wake(), replicaSync
	}
	m.events = events.New(st, cursor, feedCfg)
	m.events.Handle(m.apply)
	bindings, err := m.bindings(backends)
	if err != nil {
		return nil, err
	}
	for _, b := range backends {
		if b.Name() == BackendEntities {
			continue
		}
		for name, ns := range cfg.EntityNamespaces {
			m.namespaces.Set(b.Name(), name, ns)
		}
	}
	rl := cfg.Registrations
	// Only auto admits callers without a certificate beside ones with;
	// in off no caller has one, and nothing is bounded as certless.
	var certless *registry.CertlessLimits
	if cfg.TLSMode == server.TLSAuto {
		l := cfg.Certless.Registry(cfg.Now)
		certless = &l
	}
	if m.reg, err = registry.New(ctx, st, registry.Config{Timeout: cfg.HeartbeatTimeout, FlushInterval: cfg.HealthCheckInterval, Now: cfg.Now, Logger: m.log, SyncInterval: syncEvery,
		MaxTools: rl.MaxTools, MaxToolDependencies: rl.MaxToolDependencies, MaxDependencies: rl.MaxDependencies, MaxTags: rl.MaxTags,
		ProviderEntities: rl.ProviderEntities, PlainHTTP: cfg.TLSMode == server.TLSOff, Bindings: bindings, Namespaces: m.namespaces,
		Certless: certless, OnChange: m.changes.Agent}); err != nil {
		return nil, err
	}
	if authority != nil {
		m.crl = authority.NewCRLRefresher(m.log)
	}
	if cfg.CASecretDir != "" {
		if authority == nil {
			return nil, fmt.Errorf("the CA Secret in %s: meshd has no CA to adopt its intermediate into", cfg.CASecretDir)
		}
		m.caSecret = m.newCASecretWatcher(authority)
	}
	deps := server.Deps{Store: st, MeshCA: m.localCA, Chain: m.chain, Revocations: m.revs,
		Registry: m.reg, Feed: feed{m}, Sources: sources{m}, Collectors: append(m.backendMetrics(), m.observerMetrics()...), Degraded: m.degraded, Changes: m.changes, LastAudit: m.lastAudit}
	if replica {
		// Only replicas on a shared store can be cut off from what the
		// others revoke; one process on SQLite reads a local file its own
		// writes go to, and is always current.
		deps.Freshness = m.events
	}
	if authority != nil {
		// Only a CA: a nil *ca.CA in the interface would not be a nil
		// Authority, and the routes would sign with it.
		deps.CA = authority
	}
	if m.serving, err = ownServingCert(ctx, cfg, st, authority); err != nil {
		return nil, err
	}
	if m.bundle, err = m.bundleEndpoint(ctx, authority); err != nil {
		return nil, err
	}
	if cfg.SPIRE.ServeSVID {
		src, err := m.spireSource(ctx)
		if err != nil {
			return nil, fmt.Errorf("meshd's own SVID for the agent port: %w", err)
		}
		cfg.Config.CertSource = src
	}
	if m.srv, err = server.New(ctx, cfg.Config, deps); err != nil {
		return nil, err
	}
	if err := m.evictRevokedAgents(ctx); err != nil {
		m.srv.Shutdown(ctx)
		return nil, err
	}
	ok = true
	return m, nil
}

func (m *Meshd) buildBackends(ctx context.Context) ([]trust.Backend, error) {
	names := m.cfg.Backends
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
			if m.auth == nil {
				dev, err := m.trustDirCA()
				if err != nil {
					return nil, err
				}
				out = append(out, dev)
				continue
			}
			m.localCA = trust.NewLocalCA(m.auth.TrustDomain(), m.auth.Root(), m.auth.Intermediates())
			out = append(out, m.localCA)
		case BackendFilestore:
			if m.cfg.TrustDir == "" {
				return nil, errors.New("trust backend filestore needs MCP_MESH_TRUST_DIR (--trust-dir)")
			}
			fs, err := filestore.New(ctx, m.cfg.TrustDir, filestore.WithLogger(m.log))
			if err != nil {
				return nil, err
			}
			m.files = fs
			m.addDynamic(fs, fs.Close)
			out = append(out, fs)
		case BackendK8s:
			b, err := m.k8sBackend(ctx)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		case BackendSPIRE:
			b, err := m.spireBackend(ctx)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		case BackendEntities:
			m.entities = trust.NewAnchors(BackendEntities)
			out = append(out, m.entities)
		default:
			return nil, fmt.Errorf("unknown trust backend %q in MCP_MESH_TRUST_BACKEND (want a comma list of localca, filestore, k8s-secrets, spire, entities)", name)
		}
	}
	if m.entities == nil {
		m.entities = trust.NewAnchors(BackendEntities)
		out = append(out, m.entities)
	}
	m.revoked = trust.NewAnchors("revoked-entities")
	out = append(out, m.revoked)
	return out, nil
}

// loadState fills the revocation set and the registered entities from the
// store.
func (m *Meshd) loadState(ctx context.Context) error {
	ents, err := m.st.Entities(ctx)
	if err != nil {
		return fmt.Errorf("load entities: %w", err)
	}
	for _, e := range ents {
		if e.Revoked() {
			m.revs.AddEntity(trust.Revoked{Entity: e.Name, At: e.RevokedAt, Reason: "entity revoked"})
			if certs, err := pemfile.ParseCerts(e.CAPEM); err == nil {
				m.revoked.Set(e.Name, certs)
			}
			continue
		}
		certs, err := pemfile.ParseCerts(e.CAPEM)
		if err != nil {
			m.log.Warn("stored entity CA does not parse; skipping it", "entity", e.Name, "err", err)
			continue
		}
		m.namespaces.Set(BackendEntities, e.Name, server.StoredNamespace(e))
		m.entities.Set(e.Name, certs)
	}
	revs, err := m.st.Revocations(ctx, 0)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	for _, r := range revs {
		reason := ca.Reason(r.Reason).String()
		m.revs.AddSerial(trust.Revoked{Serial: r.Serial, IssuerKeyID: r.IssuerKeyID, Reason: reason, At: r.RevokedAt})
	}
	ids, err := m.st.RevokedIdentities(ctx)
	if err != nil {
		return fmt.Errorf("load revoked identities: %w", err)
	}
	for _, r := range ids {
		m.revs.AddIdentity(trust.Revoked{Identity: r.Name, Reason: ca.Reason(r.Reason).String(), At: r.RevokedAt})
	}
	keys, err := m.st.BlockedKeys(ctx)
	if err != nil {
		return fmt.Errorf("load revoked keys: %w", err)
	}
	for _, k := range keys {
		m.revs.AddKey(trust.Revoked{KeyHash: k, Reason: "keyCompromise"})
	}
	return nil
}

// evictRevokedAgents evicts the loaded agents whose certificate, key,
// identity or entity was revoked while meshd was down: they must not stay
// listed healthy until the heartbeat timeout.
func (m *Meshd) evictRevokedAgents(ctx context.Context) error {
	recs, err := m.st.Agents(ctx)
	if err != nil {
		return fmt.Errorf("load agents: %w", err)
	}
	keys, err := m.st.BlockedKeys(ctx)
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
		if rec, cerr := m.st.Cert(ctx, a.CertSerial); cerr == nil && rec.Fingerprint == a.CertFingerprint {
			r, revoked := m.revs.Serial(rec.IssuerKeyID, rec.Serial)
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
				ev, err = m.reg.EvictFingerprints(ctx, map[string]bool{rec.Fingerprint: true}, fmt.Sprintf("certificate %s (serial %s) revoked: %s", a.Owner, a.CertSerial, r.Reason))
			}
		}
		if reason == "" {
			for _, name := range store.BlockingNames(a.Owner) {
				if _, ok := m.revs.Identity(name); ok {
					reason = "identity_revoked"
					ev, err = m.reg.EvictIdentity(ctx, name, fmt.Sprintf("identity %s revoked", name))
					break
				}
			}
		}
		if _, ok := m.revs.Entity(a.Entity); reason == "" && ok && a.Entity != "" {
			reason = "entity_revoked"
			ev, err = m.reg.EvictEntity(ctx, a.Entity, fmt.Sprintf("entity %q revoked", a.Entity))
		}
		if err != nil {
			return err
		}
		if len(ev) > 0 {
			m.srv.CountEvictions(reason, server.Effect{Evicted: len(ev)})
			m.log.Info("evicted agents revoked while meshd was down", "agent", a.ID, "agents_evicted", len(ev))
		}
	}
	return nil
}

// Start opens the listeners and runs meshd in the background until ctx
// ends or Shutdown is called.
func (m *Meshd) Start(ctx context.Context) error {
	ctx, m.cancel = context.WithCancel(ctx)
	if err := m.srv.Start(ctx); err != nil {
		m.cancel()
		return err
	}
	if m.bundle != nil {
		if err := m.bundle.Start(ctx); err != nil {
			m.srv.Shutdown(ctx)
			m.cancel()
			return err
		}
	}
	// Entities may have left the trust dir while meshd was down.
	m.noteTrustChange()
	m.wg.Add(4)
	go func() { defer m.wg.Done(); m.reg.Run(ctx) }()
	go func() { defer m.wg.Done(); m.observeLoop(ctx) }()
	go func() { defer m.wg.Done(); m.events.Run(ctx, m.cfg.RevocationPoll) }()
	go func() { defer m.wg.Done(); m.watchTrust(ctx) }()
	if m.caSecret != nil {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.caSecret.run(ctx) }()
	}
	if m.serving != nil {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.serving.run(ctx) }()
	}
	if m.crl != nil {
		m.wg.Add(2)
		go func() { defer m.wg.Done(); m.crl.Run(ctx) }()
		go func() { defer m.wg.Done(); m.checkpointLoop(ctx) }()
	}
	// The bound addresses: a port 0 in the configuration is chosen here.
	m.log.Info("meshd serving", "agent_port", m.AgentAddr(), "tls_mode", m.cfg.TLSMode, "backends", backendNames(m.chain.Backends()), "admin_socket", m.cfg.AdminSocket,
		"admin_listen", m.AdminTLSAddr(), "metrics_listen", m.MetricsAddr(), "bundle_endpoint", m.BundleEndpointAddr(), "agents", m.reg.Len())
	return nil
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// writes the registry's pending liveness changes and stops the trust
// backends' watchers.
func (m *Meshd) Shutdown(ctx context.Context) error {
	err := m.srv.Shutdown(ctx)
	if m.bundle != nil {
		err = errors.Join(err, m.bundle.Shutdown(ctx))
	}
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	return errors.Join(err, m.closeBackends())
}

// AgentAddr returns the agent port's bound address.
func (m *Meshd) AgentAddr() string { return m.srv.AgentAddr() }

// AdminTLSAddr returns the mTLS admin listener's bound address, if any.
func (m *Meshd) AdminTLSAddr() string { return m.srv.AdminTLSAddr() }

// MetricsAddr returns the metrics listener's bound address, if any.
func (m *Meshd) MetricsAddr() string { return m.srv.MetricsAddr() }

func backendNames(backends []trust.Backend) []string {
	var out []string
	for _, b := range backends {
		out = append(out, b.Name())
	}
	return out
}

// checkpointLoop anchors the audit log outside the store: a checkpoint
// signed by the CA every CheckpointInterval while the log grows, and one at
// shutdown, so a later rewrite or truncation of the store's log is caught
// by `meshctl ca audit --verify`.
func (m *Meshd) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.checkpoint(context.WithoutCancel(ctx))
			return
		case <-t.C:
			m.checkpoint(ctx)
		}
	}
}

func (m *Meshd) checkpoint(ctx context.Context) {
	if _, err := m.auth.Checkpoint(ctx); err != nil && ctx.Err() == nil {
		m.log.Error("writing the audit checkpoint failed; the audit log may have been rewritten or restored (run meshctl ca audit --verify)", "err", err)
	}
}
