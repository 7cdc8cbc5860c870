// Command meshd is the meshtrust server: the mesh CA's online half, the
// mTLS agent registry and its admin API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/cli"
	"github.com/meshtrust/meshtrust/internal/config"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/database"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust/k8ssecrets"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand(os.Stdout, os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		stop()
		os.Exit(1)
	}
}

// options are meshd's flags.
type options struct {
	// The data, root and CA directories, the store and the trust
	// domain: the settings meshctl reads too, with the same defaults.
	config.Mesh
	listen, adminListen        string
	metricsListen              string
	admins                     []string
	tlsMode, tlsCert, tlsKey   string
	tlsSVID                    bool
	backends, trustDir         string
	k8sNamespace, k8sSelector  string
	spire                      spireOptions
	dev                        bool
	caFromSecret               string
	heartbeatTimeout, interval time.Duration
	sessionKeysDir             string
	sessionTTL                 time.Duration
	sessionIssuer              string
	sessionAudience            []string
	healthCheckInterval        time.Duration
	revocationPoll             time.Duration
	stalenessBound             time.Duration
	checkpointInterval         time.Duration
	auditVerifyInterval        time.Duration
	logLevel, logFormat        string
	// gcPercent is --gc-percent; gcPercentSet whether it was given.
	gcPercent                  int
	gcPercentSet               bool
	secretFile, meshSecretFile string
	legacyCompat               bool
	limits                     limits
	binding                    bindingOptions
	pkcs11                     config.PKCS11
	bundle                     bundleEndpointOptions
	// envNotes are what meshd logs at start about MCP Mesh variables it
	// accepts but does not follow as MCP Mesh would.
	envNotes []string
}

// limits are the caps on what one caller can make meshd spend.
type limits struct {
	readTimeout, idleTimeout, agentCertInterval  time.Duration
	watchStreams, watchPerSource, agentCertBurst int
	maxAgentsPerNode                             int
	maxRequestBody                               int64
	watchCertless                                int
	registrations                                meshd.RegistrationLimits
	providerEntities                             string
	certless                                     server.CertlessLimits
	enroll                                       server.EnrollLimits
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newCommand(stdout, stderr io.Writer) *cobra.Command {
	return commandFor(&options{}, stdout, stderr)
}

// commandFor is meshd's command, its flags parsed into o.
func commandFor(o *options, stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "meshd",
		Short: "The meshtrust server: mesh CA, mTLS agent registry and admin API",
		Long: `meshd admits agents only when their client certificate verifies against the
configured trust backends, binds each certificate to the agent id it may
speak for, manages partner entity CAs, and evicts revoked agents at once.

Start it for a first look with:  meshd --dev --data-dir ./meshtrust-data`,
		Version:       cli.Version(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mcpmeshEnv(o, cmd.Flags(), os.Getenv); err != nil {
				return err
			}
			o.gcPercentSet = cmd.Flags().Changed("gc-percent")
			return run(cmd.Context(), o, stdout, stderr)
		},
	}
	cmd.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	f := cmd.Flags()
	o.Mesh.Register(f, config.Help{
		DataDir:     "data directory: store, admin socket, and (with --dev) the CA (env MESHTRUST_DATA_DIR)",
		RootDir:     "root CA directory (default <data-dir>/root; env MESHTRUST_ROOT_DIR)",
		CADir:       "CA directory (default <data-dir>/ca; env MESHTRUST_CA_DIR)",
		Database:    "the store: an SQLite file, or postgres://user:password@host:port/database to run as one of several replicas sharing it (default <ca-dir>/meshtrust.db; env DATABASE_URL)",
		TrustDomain: "SPIFFE trust domain for a CA created by --dev (env MCP_MESH_TRUST_DOMAIN)",
	})
	f.StringVar(&o.listen, "listen", envOr("MESHD_LISTEN", "127.0.0.1:8000"), "agent port address (env MESHD_LISTEN, or MCP Mesh's HOST and PORT)")
	f.StringVar(&o.adminListen, "admin-listen", "", "also serve the admin API over mTLS on this address, to the certificates the meshd-admin policy allows (by default the --admin-identity list; env MCP_MESH_ADMIN_PORT: 127.0.0.1:<port>)")
	f.StringVar(&o.metricsListen, "metrics-listen", envOr("MESHD_METRICS_LISTEN", ""), "also serve GET /metrics alone, plain HTTP, on this address, for Prometheus (env MESHD_METRICS_LISTEN)")
	f.StringSliceVar(&o.admins, "admin-identity", []string{"admin@external"}, "mesh CA identities admitted on --admin-listen")
	f.StringVar(&o.tlsMode, "tls-mode", envOr("MCP_MESH_TLS_MODE", "strict"), "off, auto or strict (env MCP_MESH_TLS_MODE); strict, the default, admits only verified certificates, auto also callers without one (for a migration from MCP Mesh)")
	f.StringVar(&o.tlsCert, "tls-cert", envOr("MCP_MESH_TLS_CERT", ""), "agent port certificate, reloaded when it changes (env MCP_MESH_TLS_CERT)")
	f.StringVar(&o.tlsKey, "tls-key", envOr("MCP_MESH_TLS_KEY", ""), "agent port key (env MCP_MESH_TLS_KEY)")
	f.BoolVar(&o.tlsSVID, "tls-svid", envOr("MESHD_TLS_SVID", "") == "true", "present meshd's own X.509-SVID from the SPIRE Workload API (--spire-socket) on the agent port, rotated in place, instead of --tls-cert/--tls-key: what agents on the spire provider can verify (env MESHD_TLS_SVID=true)")
	f.StringVar(&o.backends, "trust-backend", envOr("MCP_MESH_TRUST_BACKEND", "localca"), "comma list of trust backends tried in order, first match wins: localca, filestore, k8s-secrets, spire, entities (env MCP_MESH_TRUST_BACKEND)")
	f.StringVar(&o.trustDir, "trust-dir", envOr("MCP_MESH_TRUST_DIR", ""), "filestore directory: *.pem and entities/<name>.pem (env MCP_MESH_TRUST_DIR)")
	f.StringVar(&o.k8sNamespace, "k8s-namespace", envOr("MCP_MESH_K8S_NAMESPACE", ""), "k8s-secrets: the namespace of the entity CA Secrets (default the pod's own, else default; env MCP_MESH_K8S_NAMESPACE)")
	f.StringVar(&o.k8sSelector, "k8s-label-selector", envOr("MCP_MESH_K8S_LABEL_SELECTOR", k8ssecrets.DefaultLabelSelector), "k8s-secrets: the label selector of the entity CA Secrets (env MCP_MESH_K8S_LABEL_SELECTOR)")
	f.StringVar(&o.spire.socket, "spire-socket", envOr("MCP_MESH_SPIRE_SOCKET", ""), "spire: the SPIRE agent's Workload API socket (default "+spire.DefaultSocket+"; env MCP_MESH_SPIRE_SOCKET)")
	f.StringVar(&o.spire.federated, "spire-federated", envOr("MCP_MESH_SPIRE_FEDERATED", ""), "spire: comma list of federated trust domains whose bundles are trusted besides meshd's own (env MCP_MESH_SPIRE_FEDERATED)")
	f.StringVar(&o.spire.entities, "spire-entities", envOr("MCP_MESH_SPIRE_ENTITIES", ""), "spire: comma list of trust-domain=entity; a trust domain not listed is the entity of its own name (env MCP_MESH_SPIRE_ENTITIES)")
	f.StringVar(&o.spire.maxStaleness, "spire-max-staleness", envOr("MCP_MESH_SPIRE_MAX_STALENESS", spirebundle.DefaultMaxStaleness.String()), "spire: how long the bundles stay trusted once the Workload API cannot refresh them; past it every SPIFFE certificate they would admit is refused (stale_trust) until it can (env MCP_MESH_SPIRE_MAX_STALENESS)")
	o.binding.flags(f)
	o.pkcs11.Register(f)
	o.bundle.flags(f)
	f.StringVar(&o.caFromSecret, "ca-from-secret", envOr("MESHD_CA_FROM_SECRET", ""), "a directory where a kubernetes.io/tls Secret is mounted (tls.crt, tls.key, ca.crt: the intermediate, its key, the mesh's root; cert-manager's CA-issuer shape): its intermediate becomes the active one at start, and again whenever the Secret changes, without a restart; a Secret that cannot be used is an error at start and later keeps the current intermediate, meshd degraded (env MESHD_CA_FROM_SECRET)")
	f.BoolVar(&o.dev, "dev", false, "development mode: create the mesh CA and a server certificate in --data-dir on first start")
	f.DurationVar(&o.revocationPoll, "revocation-poll", meshd.DefaultRevocationPoll, "how often the store's change feed is read for revocations and other changes made outside this process (meshctl ca revoke offline)")
	f.DurationVar(&o.stalenessBound, "staleness-bound", server.DefaultStalenessBound, "replicas on PostgreSQL: how long past its last read of the store's change feed a replica keeps serving the heartbeats of agents it knows; past it, heartbeats, GET /agents, registration, issuance and enrollment answer 503 (replica_stale) until it reads the store again. At least 3 --revocation-poll intervals")
	f.DurationVar(&o.checkpointInterval, "checkpoint-interval", meshd.DefaultCheckpointInterval, "how often, while the audit log grows, its head is signed into the CA's checkpoints file")
	f.DurationVar(&o.auditVerifyInterval, "audit-verify-interval", meshd.DefaultAuditVerifyInterval, "how often meshd verifies the whole audit log against the signed checkpoints, as meshctl ca audit --verify does (meshd_audit_verified)")
	f.DurationVar(&o.heartbeatTimeout, "heartbeat-timeout", 20*time.Second, "silence after which an agent is unhealthy (env DEFAULT_TIMEOUT_THRESHOLD, in seconds, as MCP Mesh's)")
	f.DurationVar(&o.healthCheckInterval, "health-check-interval", registry.DefaultFlushInterval, "how often silent agents are marked unhealthy and liveness is written (env HEALTH_CHECK_INTERVAL, in seconds, as MCP Mesh's)")
	f.StringVar(&o.sessionKeysDir, "session-keys-dir", "", "session token signing keys (default <ca-dir>/session-keys)")
	f.DurationVar(&o.sessionTTL, "session-ttl", 15*time.Minute, "lifetime of a session token from POST /session/attach (at most 24h)")
	f.StringVar(&o.sessionIssuer, "session-issuer", meshauth.DefaultSessionIssuer, "iss of session tokens: the name services trust this meshd by (meshauth.Config.TokenIssuer), such as its URL")
	f.StringSliceVar(&o.sessionAudience, "session-audience", []string{meshauth.DefaultSessionAudience}, "aud of session tokens: the services they are for; a service accepts a token that lists its own (meshauth.Config.TokenAudience)")
	f.DurationVar(&o.interval, "heartbeat-interval", 5*time.Second, "the interval agents heartbeat at; --heartbeat-timeout must cover at least two of them")
	f.StringVar(&o.secretFile, "bootstrap-secret-file", "", "file holding the bootstrap secret that enrolls new nodes on /enroll (also: $MESHTRUST_BOOTSTRAP_SECRET, <data-dir>/bootstrap.secret)")
	f.StringVar(&o.meshSecretFile, "mesh-secret-file", "", "the seed's earlier name for --bootstrap-secret-file (also: $MESHTRUST_MESH_SECRET, <data-dir>/mesh.secret)")
	f.BoolVar(&o.legacyCompat, "legacy-secret-compat", false, "migration only: let agent routes accept the bootstrap secret as a bearer from callers without a certificate (each use counted and logged)")
	f.DurationVar(&o.limits.readTimeout, "read-timeout", 30*time.Second, "longest time to read one request, headers and body, on every listener")
	f.DurationVar(&o.limits.idleTimeout, "idle-timeout", server.DefaultIdleTimeout, "a kept-alive connection that sends no request for this long is closed, on every listener")
	f.IntVar(&o.limits.watchStreams, "max-watch-streams", 1024, "most open /revocations/watch streams")
	f.IntVar(&o.limits.watchPerSource, "max-watch-streams-per-source", 16, "most open /revocations/watch streams of one source: a mesh node with its agents, a partner entity, another certificate's name, or one address (IPv6: /64) without a certificate")
	f.IntVar(&o.limits.watchCertless, "max-certless-watch-streams", 0, "most open /revocations/watch streams of callers without a certificate (TLS auto), out of --max-watch-streams, the rest kept for authenticated verifiers; 0: an eighth of --max-watch-streams")
	f.IntVar(&o.limits.agentCertBurst, "agent-cert-burst", 100, "certificates one node may obtain at once (/agent-cert; /renew, its own and its agents')")
	f.DurationVar(&o.limits.agentCertInterval, "agent-cert-interval", 100*time.Millisecond, "after the burst, one more certificate per node every interval")
	f.IntVar(&o.limits.enroll.Burst, "enroll-burst", server.DefaultEnrollBurst, "/enroll attempts one address (IPv6: /64) may make at once; raise it for a rollout of many nodes behind one address")
	f.DurationVar(&o.limits.enroll.Interval, "enroll-interval", server.DefaultEnrollInterval, "after --enroll-burst, one more /enroll attempt per address every interval")
	f.IntVar(&o.limits.enroll.GlobalBurst, "enroll-global-burst", server.DefaultEnrollGlobalBurst, "/enroll attempts all addresses together may make at once")
	f.DurationVar(&o.limits.enroll.GlobalInterval, "enroll-global-interval", server.DefaultEnrollGlobalInterval, "after --enroll-global-burst, one more /enroll attempt from all addresses together every interval")
	f.IntVar(&o.limits.maxAgentsPerNode, "max-agents-per-node", 512, "agent identities one node may hold a live certificate for")
	f.IntVar(&o.limits.registrations.MaxTools, "max-tools", registry.DefaultMaxTools, "tools one agent may register")
	f.IntVar(&o.limits.registrations.MaxToolDependencies, "max-tool-dependencies", registry.DefaultMaxToolDependencies, "dependencies one tool may declare")
	f.IntVar(&o.limits.registrations.MaxDependencies, "max-dependencies", registry.DefaultMaxDependencies, "dependencies of all of one agent's tools together")
	f.IntVar(&o.limits.registrations.MaxTags, "max-tags", registry.DefaultMaxTags, "tags one tool or dependency may carry")
	c := &o.limits.certless
	f.IntVar(&c.MaxAgents, "certless-max-agents", registry.DefaultCertlessAgents, "TLS mode auto: agents registered without a certificate meshd holds in all")
	f.IntVar(&c.MaxAgentsPerSource, "certless-max-agents-per-source", registry.DefaultCertlessAgentsPerSource, "TLS mode auto: agents one address (IPv6: /64) may register without a certificate")
	f.Int64Var(&c.MaxBytes, "certless-max-bytes", registry.DefaultCertlessBytes, "TLS mode auto: stored payload bytes of all agents registered without a certificate")
	f.Int64Var(&c.MaxBytesPerSource, "certless-max-bytes-per-source", registry.DefaultCertlessBytesPerSource, "TLS mode auto: stored payload bytes of the agents one address (IPv6: /64) registered without a certificate")
	f.Int64Var(&c.MaxPayload, "certless-max-payload", registry.DefaultCertlessPayload, "TLS mode auto: stored payload bytes of one agent registered without a certificate (bodies over twice this are not read)")
	f.DurationVar(&c.Expiry, "certless-expiry", registry.DefaultCertlessExpiry, "TLS mode auto: silence after which an agent registered without a certificate is deleted")
	f.DurationVar(&c.NewInterval, "certless-new-interval", server.DefaultCertlessNewInterval, "TLS mode auto: after a burst of --certless-max-agents-per-source, one new agent id per address (IPv6: /64) every interval")
	f.DurationVar(&c.NewGlobalInterval, "certless-new-global-interval", server.DefaultCertlessNewGlobalInterval, "TLS mode auto: after a burst of --certless-max-agents, one new agent id from all addresses together every interval")
	f.StringVar(&o.limits.providerEntities, "provider-entities", envOr("MCP_MESH_PROVIDER_ENTITIES", ""), "comma list of partner entities whose agents may provide capabilities to agents outside their entity, the mesh's own included (default none: dependencies resolve inside their trust boundary; env MCP_MESH_PROVIDER_ENTITIES)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (env MCP_MESH_LOG_LEVEL, MCP_MESH_DEBUG_MODE)")
	f.StringVar(&o.logFormat, "log-format", "text", "text or json")
	f.IntVar(&o.gcPercent, "gc-percent", defaultGCPercent, "the garbage collector's target: the heap grows by this percentage of the live heap before the next collection; lower holds less memory per live agent for more CPU (env MESHD_GC_PERCENT; without either, GOGC when set)")
	return cmd
}

func run(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	log, err := newLogger(o, stderr)
	if err != nil {
		return err
	}
	for _, n := range o.envNotes {
		log.Warn(n)
	}
	mode, err := server.ParseTLSMode(o.tlsMode)
	if err != nil {
		return err
	}
	gc, err := gcPercent(o.gcPercent, o.gcPercentSet, os.Getenv)
	if err != nil {
		return err
	}
	if gc > 0 {
		debug.SetGCPercent(gc)
	}
	if err := o.limits.check(); err != nil {
		return err
	}
	if o.revocationPoll <= 0 || o.checkpointInterval <= 0 {
		return fmt.Errorf("--revocation-poll %s and --checkpoint-interval %s must be positive", o.revocationPoll, o.checkpointInterval)
	}
	if o.stalenessBound <= 0 {
		return fmt.Errorf("--staleness-bound %s must be positive (such as %s): a replica cut off from the store must stop deciding on revocations it cannot see", o.stalenessBound, server.DefaultStalenessBound)
	}
	// Each verification reads the whole audit log: a tiny interval would
	// keep meshd reading it back to back.
	if o.auditVerifyInterval < time.Minute {
		return fmt.Errorf("--audit-verify-interval %s: at least 1m (each verification reads the whole audit log)", o.auditVerifyInterval)
	}
	if o.interval <= 0 || o.heartbeatTimeout < 2*o.interval {
		return fmt.Errorf("--heartbeat-timeout %s must be at least twice --heartbeat-interval %s, or agents are marked unhealthy between two heartbeats", o.heartbeatTimeout, o.interval)
	}
	if o.caFromSecret != "" && o.dev {
		return errors.New("--ca-from-secret adopts the intermediate of a Secret; --dev creates a CA of its own: give one of them")
	}
	if o.tlsSVID && (o.dev || mode == server.TLSOff) {
		return fmt.Errorf("--tls-svid serves meshd's SPIRE SVID on the agent port: it needs TLS on (--tls-mode auto or strict) and is not for --dev, which serves a mesh CA certificate")
	}
	if o.DataDir == "" {
		if !o.dev {
			return errors.New("--data-dir (or MESHTRUST_DATA_DIR) is required")
		}
		o.DataDir = "meshtrust-data"
	}
	o.RootDir, o.CADir = o.Mesh.Dirs(o.DataDir)
	for _, d := range []struct{ what, path string }{{"data dir", o.DataDir}, {"CA dir", o.CADir}, {"root dir", o.RootDir}} {
		if err := checkPrivate(d.what, d.path); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return err
	}
	cfg := ca.Config{RootDir: o.RootDir, Dir: o.CADir, TrustDomain: o.TrustDomain}
	if cfg.PKCS11, err = o.pkcs11.Resolve(os.Getenv); err != nil {
		return err
	}
	// The token is opened and logged in to before anything else: a
	// module that does not load, a missing token or a wrong PIN is a
	// start-up error, whether or not the CA's keys are on it yet.
	defer ca.CloseTokens()
	if cfg.PKCS11.Configured() {
		if err := ca.OpenToken(cfg.PKCS11); err != nil {
			return err
		}
	}
	if o.dev {
		if err := devBootstrap(ctx, o, cfg, log); err != nil {
			return fmt.Errorf("--dev: %w", err)
		}
		if err := devSecret(o); err != nil {
			return fmt.Errorf("--dev: %w", err)
		}
	}
	secret, err := loadBootstrapSecret(o)
	if err != nil {
		return err
	}
	if o.legacyCompat && secret == "" {
		return errors.New("--legacy-secret-compat needs the bootstrap secret (--bootstrap-secret-file or $MESHTRUST_BOOTSTRAP_SECRET)")
	}
	if o.Database == "" {
		if _, err := storeLocation(o.DataDir, cfg, log); err != nil {
			return err
		}
	}
	// The CA directory records its store (database.Open) even before it
	// holds a CA.
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return err
	}
	st, err := database.Open(ctx, cfg.Dir, o.Database, database.Options{Logger: log, Follow: true, CAExists: pemfile.Exists(cfg.BundlePath())})
	if err != nil {
		return err
	}
	defer st.Close()
	if o.caFromSecret != "" {
		if err := meshd.AdoptCASecret(ctx, cfg, st, o.caFromSecret); err != nil {
			return fmt.Errorf("--ca-from-secret: %w", err)
		}
	}
	// A CA state in the store is a CA to open, whatever the CA directory
	// holds: a new replica with an empty volume writes the roots from the
	// store here, and ca.Open the rest (ca.Materialise).
	haveCA, err := ca.Materialise(ctx, cfg, st)
	if err != nil {
		return err
	}
	var authority *ca.CA
	if haveCA {
		if authority, err = ca.Open(ctx, cfg, st); err != nil {
			return err
		}
	}
	spireCfg, err := o.spire.config()
	if err != nil {
		return err
	}
	spireCfg.ServeSVID = o.tlsSVID
	scfg := meshd.Config{
		Config: server.Config{
			Listen: o.listen, AdminSocket: filepath.Join(o.DataDir, "admin.sock"), AdminListen: o.adminListen, AdminIdentities: o.admins, MetricsListen: o.metricsListen,
			TLSMode: mode, CertFile: o.tlsCert, KeyFile: o.tlsKey, Logger: log,
			SessionKeysDir: o.sessionKeysDir, SessionTTL: o.sessionTTL, SessionIssuer: o.sessionIssuer, SessionAudience: o.sessionAudience,
			BootstrapSecret: secret, LegacySecretCompat: o.legacyCompat,
			ReadTimeout: o.limits.readTimeout, IdleTimeout: o.limits.idleTimeout, MaxRequestBody: o.limits.maxRequestBody, MaxWatchStreams: o.limits.watchStreams, MaxWatchStreamsPerSource: o.limits.watchPerSource,
			AgentCertBurst: o.limits.agentCertBurst, AgentCertInterval: o.limits.agentCertInterval, MaxAgentsPerNode: o.limits.maxAgentsPerNode,
			MaxCertlessWatchStreams: o.limits.watchCertless, Certless: o.limits.certless, Enroll: o.limits.enroll,
			StalenessBound: o.stalenessBound,
		},
		Backends: strings.Split(o.backends, ","), TrustDir: o.trustDir,
		K8s:              meshd.K8sConfig{Namespace: o.k8sNamespace, LabelSelector: o.k8sSelector},
		SPIRE:            spireCfg,
		HeartbeatTimeout: o.heartbeatTimeout, HealthCheckInterval: o.healthCheckInterval,
		RevocationPoll: o.revocationPoll, CheckpointInterval: o.checkpointInterval, AuditVerifyInterval: o.auditVerifyInterval,
		Registrations: o.limits.registrationLimits(),
		CASecretDir:   o.caFromSecret,
	}
	if err := o.binding.apply(&scfg); err != nil {
		return err
	}
	if scfg.BundleEndpoint, err = o.bundle.config(); err != nil {
		return err
	}
	srv, err := meshd.New(ctx, scfg, st, authority)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	if o.dev {
		printDevHint(stdout, o, srv.AgentAddr(), mode)
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// spireOptions are the spire backend's flags.
type spireOptions struct{ socket, federated, entities, maxStaleness string }

// config parses the spire backend's flags.
func (o spireOptions) config() (meshd.SPIREConfig, error) {
	c := meshd.SPIREConfig{Socket: o.socket}
	d, err := time.ParseDuration(strings.TrimSpace(o.maxStaleness))
	if err != nil || d <= 0 {
		return c, fmt.Errorf("--spire-max-staleness: %q is not a positive duration (such as %s); the bound cannot be turned off, only lengthened", o.maxStaleness, spirebundle.DefaultMaxStaleness)
	}
	c.MaxStaleness = d
	for _, raw := range strings.Split(o.federated, ",") {
		if raw = strings.TrimSpace(raw); raw == "" {
			continue
		}
		td, err := spiffeid.TrustDomainFromString(raw)
		if err != nil {
			return c, fmt.Errorf("--spire-federated: %q is not a trust domain: %w", raw, err)
		}
		c.Federated = append(c.Federated, td)
	}
	for _, raw := range strings.Split(o.entities, ",") {
		if raw = strings.TrimSpace(raw); raw == "" {
			continue
		}
		name, entity, ok := strings.Cut(raw, "=")
		if !ok {
			return c, fmt.Errorf("--spire-entities: %q is not trust-domain=entity", raw)
		}
		td, err := spiffeid.TrustDomainFromString(strings.TrimSpace(name))
		if err != nil {
			return c, fmt.Errorf("--spire-entities: %q is not a trust domain: %w", name, err)
		}
		if c.Entities == nil {
			c.Entities = map[spiffeid.TrustDomain]string{}
		}
		c.Entities[td] = strings.TrimSpace(entity)
	}
	return c, nil
}

// registrationLimits returns the registry's limits, provider entities
// split out of their comma list.
func (l limits) registrationLimits() meshd.RegistrationLimits {
	r := l.registrations
	for _, e := range strings.Split(l.providerEntities, ",") {
		if e = strings.TrimSpace(e); e != "" {
			r.ProviderEntities = append(r.ProviderEntities, e)
		}
	}
	return r
}

// check refuses a limit that would disable itself: zero means "the
// default" to meshd's server, so a flag set to 0 or less is an error.
func (l limits) check() error {
	for _, d := range []struct {
		flag string
		v    int64
	}{
		{"--read-timeout", int64(l.readTimeout)}, {"--idle-timeout", int64(l.idleTimeout)}, {"--agent-cert-interval", int64(l.agentCertInterval)},
		{"--max-watch-streams", int64(l.watchStreams)}, {"--max-watch-streams-per-source", int64(l.watchPerSource)},
		{"--agent-cert-burst", int64(l.agentCertBurst)}, {"--max-agents-per-node", int64(l.maxAgentsPerNode)},
		{"--enroll-burst", int64(l.enroll.Burst)}, {"--enroll-interval", int64(l.enroll.Interval)},
		{"--enroll-global-burst", int64(l.enroll.GlobalBurst)}, {"--enroll-global-interval", int64(l.enroll.GlobalInterval)},
		{"--max-tools", int64(l.registrations.MaxTools)}, {"--max-tool-dependencies", int64(l.registrations.MaxToolDependencies)},
		{"--max-dependencies", int64(l.registrations.MaxDependencies)}, {"--max-tags", int64(l.registrations.MaxTags)},
		{"--certless-max-agents", int64(l.certless.MaxAgents)}, {"--certless-max-agents-per-source", int64(l.certless.MaxAgentsPerSource)},
		{"--certless-max-bytes", l.certless.MaxBytes}, {"--certless-max-bytes-per-source", l.certless.MaxBytesPerSource},
		{"--certless-max-payload", l.certless.MaxPayload}, {"--certless-expiry", int64(l.certless.Expiry)},
		{"--certless-new-interval", int64(l.certless.NewInterval)}, {"--certless-new-global-interval", int64(l.certless.NewGlobalInterval)},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s must be positive", d.flag)
		}
	}
	if l.watchCertless < 0 {
		return errors.New("--max-certless-watch-streams must not be negative (0 is an eighth of --max-watch-streams)")
	}
	return nil
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

// storeLocation returns the one store of the mesh: <ca-dir>/meshtrust.db,
// where meshctl's offline commands find it too, whether or not the CA
// exists yet, so creating the CA later keeps every entity, revocation,
// agent and token. A store an older meshd kept in the data dir (before
// there was a CA) is moved there; if both exist, meshd refuses to start
// rather than pick one.
func storeLocation(dataDir string, cfg ca.Config, log *slog.Logger) (string, error) {
	want := cfg.StorePath()
	legacy := filepath.Join(dataDir, "meshtrust.db")
	if filepath.Clean(legacy) == filepath.Clean(want) {
		return want, nil
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return "", err
	}
	switch {
	case !pemfile.Exists(legacy):
		return want, nil
	case pemfile.Exists(want):
		return "", fmt.Errorf("two stores found: %s (the CA's) and %s (left by an older meshd). meshd uses only %s: keep the one with your entities and revocations there (check with `sqlite3 FILE 'select count(*) from entities; select count(*) from revocations'`), move the other away, and start again", want, legacy, want)
	}
	// SQLite's write-ahead log belongs to its database: move it along, the
	// log first so the database never appears without it.
	for _, suffix := range []string{"-wal", "-shm", ""} {
		if err := os.Rename(legacy+suffix, want+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("move the store %s to %s: %w", legacy, want, err)
		}
	}
	log.Info("moved the store into the CA directory, where meshctl finds it too", "from", legacy, "to", want)
	return want, nil
}
