package meshd

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/client-go/kubernetes"

	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/k8ssecrets"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

// K8sConfig configures the k8s-secrets backend; zero values are MCP Mesh's
// defaults (see package trust/k8ssecrets).
type K8sConfig struct {
	// Namespace is MCP_MESH_K8S_NAMESPACE; default the pod's own, else
	// "default".
	Namespace string
	// LabelSelector is MCP_MESH_K8S_LABEL_SELECTOR; default
	// mcp-mesh.io/trust=entity-ca.
	LabelSelector string
	// Client talks to the API server; nil: in-cluster, else KUBECONFIG.
	Client kubernetes.Interface
}

// SPIREConfig configures the spire backend.
type SPIREConfig struct {
	// Socket is the SPIRE agent's Workload API socket
	// (MCP_MESH_SPIRE_SOCKET); default the SPIRE provider's.
	Socket string
	// Federated lists the trust domains whose federated bundles are
	// trusted, besides meshd's own.
	Federated []spiffeid.TrustDomain
	// Entities maps a trust domain to the entity its agents belong to;
	// default: meshd's own trust domain (its SVID's) is the mesh's own,
	// a federated one the entity of its name, which must then be a valid
	// entity name (no dots: map partner.example=partner).
	Entities map[spiffeid.TrustDomain]string
	// ServeSVID makes the agent port present meshd's own X.509-SVID from
	// this Workload API, rotated in place, instead of Config.CertFile and
	// KeyFile: what agents on the spire provider, which trust SPIRE's
	// bundle alone, can verify. It needs no spire backend in the chain.
	ServeSVID bool
	// StartTimeout bounds the wait for the first SVID and bundles;
	// default 30s.
	StartTimeout time.Duration
	// MaxStaleness is how long the bundles stay trusted once the
	// Workload API cannot refresh them (MCP_MESH_SPIRE_MAX_STALENESS);
	// default spirebundle.DefaultMaxStaleness, negative an error.
	MaxStaleness time.Duration
	// ClientOptions are passed to go-spiffe's Workload API client (tests
	// shorten its back-off).
	ClientOptions []workloadapi.ClientOption
}

// dynamicBackend is a backend whose entities change at run time: a change
// makes meshd re-verify what it admitted (sweepTrust).
type dynamicBackend interface {
	trust.Backend
	trust.Notifier
	Entities() []string
	Certificates(entity string) []*x509.Certificate
}

// addDynamic records a run-time-changing backend and what stops it.
func (m *Meshd) addDynamic(b dynamicBackend, closer func() error) {
	m.dynamic = append(m.dynamic, b)
	m.closers = append(m.closers, closer)
}

// closeBackends stops the backends' watchers; their anchors stay.
func (m *Meshd) closeBackends() error {
	var errs []error
	for i := len(m.closers) - 1; i >= 0; i-- {
		errs = append(errs, m.closers[i]())
	}
	m.closers = nil
	return errors.Join(errs...)
}

func (m *Meshd) k8sBackend(ctx context.Context) (*k8ssecrets.Backend, error) {
	c := m.cfg.K8s
	client := c.Client
	if client == nil {
		var err error
		if client, err = k8ssecrets.ClientFromEnv(); err != nil {
			return nil, fmt.Errorf("trust backend k8s-secrets: %w", err)
		}
	}
	st, err := k8ssecrets.New(ctx, k8ssecrets.Config{Client: client, Namespace: c.Namespace, LabelSelector: c.LabelSelector, Logger: m.log})
	if err != nil {
		return nil, fmt.Errorf("trust backend k8s-secrets: %w", err)
	}
	m.k8s = st
	m.addDynamic(st, st.Close)
	return st, nil
}

// spireSource returns the source over meshd's Workload API, connecting on
// first use: the spire backend's bundles and meshd's own SVID share it.
func (m *Meshd) spireSource(ctx context.Context) (*spire.Source, error) {
	if m.spireSrc != nil {
		return m.spireSrc, nil
	}
	c := m.cfg.SPIRE
	timeout := c.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	src, err := spire.New(waitCtx, spire.WithSocket(c.Socket), spire.WithFederation(c.Federated...),
		spire.WithLogger(m.log), spire.WithClientOptions(c.ClientOptions...))
	if err != nil {
		return nil, err
	}
	m.spireSrc = src
	m.closers = append(m.closers, src.Close)
	return src, nil
}

func (m *Meshd) spireBackend(ctx context.Context) (*spirebundle.Backend, error) {
	c := m.cfg.SPIRE
	src, err := m.spireSource(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust backend spire: %w", err)
	}
	b, err := spirebundle.New(ctx, spirebundle.Config{Source: src, Entities: c.Entities, MaxStaleness: c.MaxStaleness, Logger: m.log})
	if err != nil {
		return nil, fmt.Errorf("trust backend spire: %w", err)
	}
	for _, td := range c.Federated {
		if td == b.TrustDomain() {
			continue // listing the own trust domain changes nothing
		}
		// The entity name is what namespaces, grants and revocations
		// compare: a trust domain's name with dots can be none of them.
		if err := identity.ValidateID(b.Entity(td)); err != nil {
			b.Close()
			return nil, fmt.Errorf("trust backend spire: federated trust domain %s: its agents need an entity name, and %q is not one (%w): map it with --spire-entities %s=<name> (MCP_MESH_SPIRE_ENTITIES)", td, b.Entity(td), err, td)
		}
	}
	m.spire = b
	m.addDynamic(b, b.Close) // before the source's closer, which runs after
	return b, nil
}

// degraded lists the backends refusing what they would otherwise admit,
// for GET /health: the spire backend once its bundles are stale past
// its bound.
func (m *Meshd) degraded() []meshapi.Degradation {
	var out []meshapi.Degradation
	if m.caSecret != nil {
		out = append(out, m.caSecret.degradation()...)
	}
	if m.spire == nil {
		return out
	}
	since, stale := m.spire.StaleSince(m.cfg.Now())
	if !stale {
		return out
	}
	return append(out, meshapi.Degradation{Component: "trust backend " + spirebundle.Name, Reason: trust.ReasonStaleTrust, Since: since})
}

// backendMetrics returns the metrics of the backends that have some.
func (m *Meshd) backendMetrics() []prometheus.Collector {
	var out []prometheus.Collector
	if st := m.k8s; st != nil {
		out = append(out, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_trust_secret_rejections_total",
			Help: "Versions of entity CA Secrets (k8s-secrets backend) that could not be used; each keeps the Secret's last good version.",
		}, func() float64 { return float64(st.Rejected()) }))
	}
	if sb := m.spire; sb != nil {
		labels := prometheus.Labels{"backend": spirebundle.Name}
		out = append(out, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_trust_backend_stale", ConstLabels: labels,
			Help: "1 while a trust backend refuses every certificate its anchors would admit, because it could not refresh them for longer than its bound (spire: --spire-max-staleness); else 0.",
		}, func() float64 {
			if _, stale := sb.StaleSince(m.cfg.Now()); stale {
				return 1
			}
			return 0
		}), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_trust_backend_stale_seconds", ConstLabels: labels,
			Help: "Seconds since a trust backend last knew its anchors current (spire: since the Workload API stream broke); 0 while they are.",
		}, func() float64 {
			since, _ := sb.StaleSince(m.cfg.Now())
			if since.IsZero() {
				return 0
			}
			return m.cfg.Now().Sub(since).Seconds()
		}))
	}
	return out
}
