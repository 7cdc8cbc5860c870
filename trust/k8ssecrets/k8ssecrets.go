// Package k8ssecrets is the "k8s-secrets" trust backend: partner entity
// CAs kept as Kubernetes Secrets, followed with a client-go informer so
// that adds, updates and deletes take effect without a restart.
//
// The conventions are MCP Mesh's:
//
//   - the Secrets of one namespace (MCP_MESH_K8S_NAMESPACE; by default the
//     pod's own, else "default") that match a label selector
//     (MCP_MESH_K8S_LABEL_SELECTOR; by default mcp-mesh.io/trust=entity-ca);
//   - the CA certificates, PEM, under the key ca.crt;
//   - the entity is the annotation mcp-mesh.io/entity-name, else the
//     Secret's name.
//
// A Secret that does not parse (no ca.crt, damaged PEM, no CA certificate,
// an entity name that is not an id) keeps the CAs of its last good version,
// and is reported: a log line and a count once per bad version, and a
// Warning Event on the Secret when meshd's RBAC allows creating Events. A
// Secret that never parsed is skipped. While the API server is away the
// informer keeps the last set it saw and reconnects by itself; a Secret
// deleted meanwhile is removed when the informer relists.
package k8ssecrets

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/filestore"
)

// Name is the backend's name in MCP_MESH_TRUST_BACKEND.
const Name = "k8s-secrets"

// MCP Mesh's conventions for entity CA Secrets.
const (
	// DefaultLabelSelector selects the Secrets that hold entity CAs.
	DefaultLabelSelector = "mcp-mesh.io/trust=entity-ca"
	// CAKey is the Secret data key holding the CA certificates, PEM.
	CAKey = "ca.crt"
	// EntityAnnotation names the entity a Secret's CAs belong to; without
	// it, the entity is the Secret's name.
	EntityAnnotation = "mcp-mesh.io/entity-name"
)

// serviceAccountNamespace is where a pod finds its own namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// maxCASize bounds a Secret's ca.crt; a CA bundle is a few kilobytes.
const maxCASize = 1 << 20

// Config configures a Backend. Client is required; the zero value of every
// other field selects MCP Mesh's default.
type Config struct {
	// Client talks to the API server; see ClientFromEnv.
	Client kubernetes.Interface
	// Namespace is where the Secrets are; default DefaultNamespace().
	Namespace string
	// LabelSelector selects the Secrets; default DefaultLabelSelector.
	LabelSelector string
	// Logger receives what the Backend reports; default slog.Default().
	Logger *slog.Logger
	// SyncTimeout bounds the wait for the first list of Secrets in New;
	// default 30s.
	SyncTimeout time.Duration
}

// DefaultNamespace returns the namespace of the pod meshd runs in, read
// from its service account, or "default" outside a cluster.
func DefaultNamespace() string {
	if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "default"
}

// ClientFromEnv returns a client for the cluster meshd runs in (its
// service account), or outside a cluster for the kubeconfig that
// KUBECONFIG names (else ~/.kube/config).
func ClientFromEnv() (kubernetes.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("k8s-secrets: not in a cluster, and no usable kubeconfig (set KUBECONFIG): %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("k8s-secrets: in-cluster config: %w", err)
	}
	cfg.UserAgent = "meshd"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("k8s-secrets: %w", err)
	}
	return c, nil
}

// Backend is the k8s-secrets backend. It implements trust.Backend and
// trust.Notifier, so a trust.Chain over it drops its cached verdicts
// whenever the set of CAs changes.
type Backend struct {
	// AnchorsView serves Verify, OnChange, Entities and Certificates
	// from anchors, which only the informer's events change.
	trust.AnchorsView
	cfg      Config
	log      *slog.Logger
	anchors  *trust.Anchors
	informer cache.SharedIndexInformer

	// mu serialises applying informer events and guards secrets and
	// published. Lock order: mu, then the anchors' own lock.
	mu        sync.Mutex
	secrets   map[string]secret // by Secret name
	published map[string][]*x509.Certificate

	rejected atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup // the informer and Event writers
}

// secret is what a Backend keeps of one Secret.
type secret struct {
	// entity and certs are of the last version that parsed; certs is nil
	// when none has.
	entity string
	certs  []*x509.Certificate
	// bad identifies the newest version when it did not parse, already
	// reported; "" when the newest version parsed.
	bad string
}

// New lists the Secrets, waits until the informer has them all, and follows
// their changes until ctx is done or Close is called; after either, the CAs
// loaded last stay in force. It fails when the Secrets cannot be listed
// (with what to grant when RBAC refuses).
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Client == nil {
		return nil, errors.New("k8s-secrets: no Kubernetes client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace()
	}
	if cfg.LabelSelector == "" {
		cfg.LabelSelector = DefaultLabelSelector
	}
	if _, err := labels.Parse(cfg.LabelSelector); err != nil {
		return nil, fmt.Errorf("k8s-secrets: label selector %q (MCP_MESH_K8S_LABEL_SELECTOR): %w", cfg.LabelSelector, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 30 * time.Second
	}
	anchors := trust.NewAnchors(Name)
	b := &Backend{
		AnchorsView: anchors.View(),
		cfg:         cfg,
		log:         cfg.Logger.With("backend", Name, "namespace", cfg.Namespace),
		anchors:     anchors,
		secrets:     map[string]secret{},
	}
	// One list first, so that a refusal is a clear start-up error rather
	// than an informer retrying forever.
	listCtx, cancelList := context.WithTimeout(ctx, cfg.SyncTimeout)
	_, err := cfg.Client.CoreV1().Secrets(cfg.Namespace).List(listCtx, metav1.ListOptions{LabelSelector: cfg.LabelSelector, Limit: 1})
	cancelList()
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("k8s-secrets: not allowed to list Secrets in namespace %q: grant meshd's service account get, list and watch on secrets there (the Helm chart's Role does): %w", cfg.Namespace, err)
		}
		return nil, fmt.Errorf("k8s-secrets: list Secrets in namespace %q: %w", cfg.Namespace, err)
	}

	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = cfg.LabelSelector }))
	b.informer = factory.Core().V1().Secrets().Informer()
	if err := b.informer.SetWatchErrorHandlerWithContext(b.watchError); err != nil {
		return nil, fmt.Errorf("k8s-secrets: %w", err)
	}
	if _, err := b.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { b.update(ctx, obj) },
		UpdateFunc: func(_, obj any) { b.update(ctx, obj) },
		DeleteFunc: b.delete,
	}); err != nil {
		return nil, fmt.Errorf("k8s-secrets: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	b.cancel = cancel
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.informer.RunWithContext(runCtx) }()

	syncCtx, cancelSync := context.WithTimeout(runCtx, cfg.SyncTimeout)
	defer cancelSync()
	if !cache.WaitForCacheSync(syncCtx.Done(), b.informer.HasSynced) {
		b.Close()
		return nil, fmt.Errorf("k8s-secrets: the Secrets of namespace %q were not listed within %s", cfg.Namespace, cfg.SyncTimeout)
	}
	b.mu.Lock()
	n := len(b.published)
	b.mu.Unlock()
	b.log.Info("trust anchors loaded from Secrets", "selector", cfg.LabelSelector, "entities", n)
	return b, nil
}

// Name returns "k8s-secrets".
func (b *Backend) Name() string { return Name }

// Rejected returns how many Secret versions could not be used so far.
func (b *Backend) Rejected() uint64 { return b.rejected.Load() }

// Close stops following the Secrets. The CAs loaded last stay in force.
func (b *Backend) Close() error {
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
	return nil
}

// watchError logs the informer's lost watches: the API server going away
// keeps the last set in force while client-go reconnects with backoff.
func (b *Backend) watchError(_ context.Context, _ *cache.Reflector, err error) {
	b.log.Warn("watching Secrets failed; keeping the CAs loaded before and retrying", "err", err)
}

// update applies an added or changed Secret.
func (b *Backend) update(ctx context.Context, obj any) {
	sec, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	entity, certs, err := parseSecret(sec)
	b.mu.Lock()
	defer b.mu.Unlock()
	last := b.secrets[sec.Name]
	if err != nil {
		bad := versionID(sec)
		if bad != last.bad {
			b.reject(ctx, sec, last, err)
		}
		last.bad = bad
		b.secrets[sec.Name] = last
		return
	}
	if last.certs != nil && last.entity != entity {
		b.log.Info("entity CA Secret now names another entity", "secret", sec.Name, "from", last.entity, "to", entity)
	}
	b.secrets[sec.Name] = secret{entity: entity, certs: certs}
	b.publish()
}

// delete removes a deleted Secret's CAs.
func (b *Backend) delete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj // deleted while the watch was down; seen at the relist
	}
	sec, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.secrets[sec.Name]; !ok {
		return
	}
	delete(b.secrets, sec.Name)
	b.log.Info("entity CA Secret deleted", "secret", sec.Name)
	b.publish()
}

// reject reports a Secret version that cannot be used. s.mu is held.
func (b *Backend) reject(ctx context.Context, sec *corev1.Secret, last secret, err error) {
	b.rejected.Add(1)
	if last.certs != nil {
		b.log.Warn("cannot use entity CA Secret; keeping its last good version until it is fixed",
			"secret", sec.Name, "entity", last.entity, "reason", err.Error())
	} else {
		b.log.Warn("skipping entity CA Secret", "secret", sec.Name, "reason", err.Error())
	}
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.recordEvent(ctx, sec, err) }()
}

// recordEvent puts a Warning Event on the Secret, so that `kubectl describe
// secret` shows why meshd ignores it. Without RBAC for Events it is left
// at the log line.
func (b *Backend) recordEvent(ctx context.Context, sec *corev1.Secret, cause error) {
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: sec.Name + ".", Namespace: sec.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Secret", APIVersion: "v1", Namespace: sec.Namespace,
			Name: sec.Name, UID: sec.UID, ResourceVersion: sec.ResourceVersion},
		Reason:         "InvalidEntityCA",
		Message:        "meshd cannot use this Secret's " + CAKey + ": " + cause.Error() + "; its last good version stays trusted",
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "meshd"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "meshtrust.io/meshd",
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := b.cfg.Client.CoreV1().Events(sec.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		b.log.Debug("cannot record an Event on the Secret (meshd's RBAC may not allow creating Events)", "secret", sec.Name, "err", err)
	}
}

// publish recomputes the trusted set from the Secrets and swaps it in when
// it changed. Several Secrets may name one entity; a CA certificate
// belongs to the first entity, in Secret name order, that holds it. s.mu
// is held.
func (b *Backend) publish() {
	names := make([]string, 0, len(b.secrets))
	for n := range b.secrets {
		names = append(names, n)
	}
	slices.Sort(names)
	set := map[string][]*x509.Certificate{}
	owner := map[string]string{} // fingerprint -> Secret
	for _, n := range names {
		sec := b.secrets[n]
		for _, c := range sec.certs {
			fp := trust.Fingerprint(c)
			if other, dup := owner[fp]; dup {
				if other != n {
					b.log.Warn("skipping CA certificate already trusted through another Secret; a CA may belong to one entity only",
						"secret", n, "other_secret", other, "subject", c.Subject.String())
				}
				continue
			}
			owner[fp] = n
			set[sec.entity] = append(set[sec.entity], c)
		}
	}
	if trust.SameSets(set, b.published) {
		return
	}
	b.published = set
	b.anchors.Replace(set)
}

// parseSecret returns the entity a Secret names and its CA certificates.
func parseSecret(sec *corev1.Secret) (string, []*x509.Certificate, error) {
	entity := sec.Name
	if v, ok := sec.Annotations[EntityAnnotation]; ok {
		entity = v
	}
	if err := identity.ValidateID(entity); err != nil {
		return "", nil, fmt.Errorf("entity name %q (annotation %s, else the Secret's name) is not a valid entity id: %w", entity, EntityAnnotation, err)
	}
	data, ok := sec.Data[CAKey]
	if !ok {
		return "", nil, fmt.Errorf("no %s key; put the entity's CA certificates, PEM, under %s", CAKey, CAKey)
	}
	if len(data) > maxCASize {
		return "", nil, fmt.Errorf("%s is larger than %d bytes; it should hold a few CA certificates", CAKey, maxCASize)
	}
	certs, skipped, err := filestore.Parse(data)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", CAKey, err)
	}
	if len(certs) == 0 {
		return "", nil, fmt.Errorf("%s holds no CA certificate (%s)", CAKey, strings.Join(skipped, "; "))
	}
	return entity, certs, nil
}

// versionID names one version of a Secret's content, for reporting a bad
// version once.
func versionID(sec *corev1.Secret) string {
	h := sha256.New()
	h.Write([]byte(sec.Annotations[EntityAnnotation]))
	h.Write([]byte{0})
	h.Write(sec.Data[CAKey])
	return hex.EncodeToString(h.Sum(nil))
}
