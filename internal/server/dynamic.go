package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/client-go/kubernetes"

	"github.com/meshtrust/meshtrust/credentials/spire"
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
	// default the trust domain's name.
	Entities map[spiffeid.TrustDomain]string
	// StartTimeout bounds the wait for the first SVID and bundles;
	// default 30s.
	StartTimeout time.Duration
	// ClientOptions are passed to go-spiffe's Workload API client (tests
	// shorten its back-off).
	ClientOptions []workloadapi.ClientOption
}

// dynamicBackend is a backend whose entities change at run time: a change
// makes the server re-verify what it admitted (sweepTrust).
type dynamicBackend interface {
	trust.Backend
	trust.Notifier
	Entities() []string
	Certificates(entity string) []*x509.Certificate
}

// addDynamic records a run-time-changing backend and what stops it.
func (s *Server) addDynamic(b dynamicBackend, closer func() error) {
	s.dynamic = append(s.dynamic, b)
	s.closers = append(s.closers, closer)
}

// closeBackends stops the backends' watchers; their anchors stay.
func (s *Server) closeBackends() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}

func (s *Server) k8sBackend(ctx context.Context) (*k8ssecrets.Backend, error) {
	c := s.cfg.K8s
	client := c.Client
	if client == nil {
		var err error
		if client, err = k8ssecrets.ClientFromEnv(); err != nil {
			return nil, fmt.Errorf("trust backend k8s-secrets: %w", err)
		}
	}
	st, err := k8ssecrets.New(ctx, k8ssecrets.Config{Client: client, Namespace: c.Namespace, LabelSelector: c.LabelSelector, Logger: s.log})
	if err != nil {
		return nil, fmt.Errorf("trust backend k8s-secrets: %w", err)
	}
	s.k8s = st
	s.addDynamic(st, st.Close)
	return st, nil
}

func (s *Server) spireBackend(ctx context.Context) (*spirebundle.Backend, error) {
	c := s.cfg.SPIRE
	timeout := c.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	src, err := spire.New(waitCtx, spire.WithSocket(c.Socket), spire.WithFederation(c.Federated...),
		spire.WithLogger(s.log), spire.WithClientOptions(c.ClientOptions...))
	if err != nil {
		return nil, fmt.Errorf("trust backend spire: %w", err)
	}
	b, err := spirebundle.New(ctx, spirebundle.Config{Source: src, Entities: c.Entities, Logger: s.log})
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("trust backend spire: %w", err)
	}
	s.addDynamic(b, func() error { return errors.Join(b.Close(), src.Close()) })
	return b, nil
}

// backendMetrics registers the metrics of the backends that have some.
func (s *Server) backendMetrics() {
	if s.k8s != nil {
		st := s.k8s
		s.metrics.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_trust_secret_rejections_total",
			Help: "Versions of entity CA Secrets (k8s-secrets backend) that could not be used; each keeps the Secret's last good version.",
		}, func() float64 { return float64(st.Rejected()) }))
	}
}

// admittedChains remembers the chain each admitted certificate presented,
// by leaf fingerprint, so that a change of trust anchors re-verifies the
// agents registered with them (sweepTrust), connected or not. Entries are
// dropped when they stop verifying, and when their leaf expires; past
// maxAdmitted live certificates new ones are not remembered (their agents
// are still re-verified through their connections and entities). Its
// mutex is a leaf.
type admittedChains struct {
	mu     sync.Mutex
	chains map[string][]*x509.Certificate
}

// maxAdmitted bounds the remembered chains.
const maxAdmitted = 1 << 16

// add remembers chain, admitted at now.
func (a *admittedChains) add(fp string, chain []*x509.Certificate, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.chains[fp]; ok {
		return
	}
	if a.chains == nil {
		a.chains = map[string][]*x509.Certificate{}
	}
	if len(a.chains) >= maxAdmitted {
		for k, c := range a.chains {
			if now.After(c[0].NotAfter) {
				delete(a.chains, k)
			}
		}
		if len(a.chains) >= maxAdmitted {
			return
		}
	}
	a.chains[fp] = chain
}

// refused verifies every remembered chain again and returns, forgotten,
// the fingerprints of those the chain now refuses.
func (a *admittedChains) refused(ctx context.Context, chain *trust.Chain) map[string]bool {
	a.mu.Lock()
	snapshot := make(map[string][]*x509.Certificate, len(a.chains))
	for fp, c := range a.chains {
		snapshot[fp] = c
	}
	a.mu.Unlock()
	out := map[string]bool{}
	for fp, c := range snapshot {
		if _, err := chain.Verify(ctx, c); err != nil {
			out[fp] = true
		}
	}
	a.mu.Lock()
	for fp := range out {
		delete(a.chains, fp)
	}
	a.mu.Unlock()
	return out
}
