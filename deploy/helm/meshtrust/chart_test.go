// The Helm chart's tests: helm lint, helm template for every documented
// values combination (values.yaml alone and each ci/*-values.yaml), and
// every rendered manifest created on the real API server kubetest runs
// with a server-side dry run and strict field validation, so that the API
// server itself validates it. cert-manager's Certificate and the
// Prometheus Operator's ServiceMonitor and PrometheusRule are validated
// against the minimal CRDs in testdata/crds.
package meshtrust_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/meshtrust/meshtrust/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// valueFiles are the documented values combinations: "" is values.yaml
// alone.
func valueFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found %d values files in ci/", len(files))
	}
	return append([]string{""}, files...)
}

// comboName names a values combination for a subtest.
func comboName(file string) string {
	if file == "" {
		return "defaults"
	}
	return strings.TrimSuffix(filepath.Base(file), "-values.yaml")
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubetest.Helm(t), args...)
	// No repositories, no plugins, nothing of the user's.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), errors.New(strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func render(t *testing.T, ns, values string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "t", ".", "--namespace", ns}
	if values != "" {
		args = append(args, "-f", values)
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm template %s: %v", values, err)
	}
	return decode(t, out)
}

func decode(t *testing.T, manifests string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var m map[string]any
		if err := d.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("rendered manifests do not parse: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

func TestLint(t *testing.T) {
	for _, f := range valueFiles(t) {
		args := []string{"lint", ".", "--strict"}
		if f != "" {
			args = append(args, "-f", f)
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("helm lint %s: %v\n%s", f, err, out)
		}
	}
}

// TestBadValuesRefused: values the chart cannot honour fail the render
// with a message, never a manifest that half works.
func TestBadValuesRefused(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"mesh.tls.mode=permissive", "mesh.tls.mode"},
		{"mesh.trust.backends={bogus}", "unknown backend"},
		{"mesh.trust.backends={filestore}", "k8s-secrets"},
		{"meshd.replicas=2", "meshd.database.urlSecret"},
		{"meshd.replicas=3,meshd.database.urlSecret=db", "meshd.ca.source to secret"},
		{"meshd.replicas=0", "at least 1"},
		{"meshd.replicas=2,meshd.database.urlSecret=db,meshd.ca.source=secret,meshd.ca.secret.name=s,meshd.antiAffinity=maybe", "soft or hard"},
		{"meshd.ca.source=vault", "dataDir, secret or pkcs11"},
		{"meshd.ca.source=secret", "meshd.ca.secret.name"},
		{"meshd.ca.source=pkcs11,meshd.ca.pkcs11.module=/m.so,meshd.ca.pkcs11.token=t", "pinSecret"},
		{"meshd.ca.source=pkcs11,meshd.ca.pkcs11.module=m.so,meshd.ca.pkcs11.token=t,meshd.ca.pkcs11.pinSecret=p", "absolute path in the container"},
		{"meshd.ca.source=pkcs11,meshd.ca.pkcs11.module=/m/m.so,meshd.ca.pkcs11.token=t,meshd.ca.pkcs11.pinSecret=p,meshd.ca.pkcs11.library.hostPath=/m,meshd.ca.pkcs11.library.volume.emptyDir.medium=Memory", "not both"},
		{"meshd.ca.source=pkcs11,meshd.ca.pkcs11.module=/m/m.so,meshd.ca.pkcs11.token=t,meshd.ca.pkcs11.pinSecret=p,meshd.ca.pkcs11.library.hostPath=lib", "absolute path on the node"},
		{"meshd.persistence.enabled=false", "SQLite store would be lost"},
		{"meshd.persistence.enabled=false,meshd.database.urlSecret=db", "CA directory (meshd.ca.source dataDir) would be lost"},
		{"mesh.tls.server.certManager.enabled=true", "issuerRef.name"},
		{"agent.enabled=true", "agent.id"},
		{"mesh.tls.vault.enabled=true,mesh.tls.spire.enabled=true", "not both"},
		{"mesh.trust.spire.serveSVID=true", "add spire to mesh.trust.backends"},
		{"mesh.trust.spire.serveSVID=true,mesh.trust.backends={spire},mesh.tls.mode=off", "auto or strict"},
	} {
		_, err := helm(t, "template", "t", ".", "--set", tc.set)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %s: %v; want an error about %s", tc.set, err, tc.want)
		}
	}
}

// TestManifestsShape checks what the chart promises beyond validity: the
// Service never exposes the admin API, RBAC is read-only on Secrets in one
// namespace, and every container runs non-root on a read-only root.
func TestManifestsShape(t *testing.T) {
	for _, f := range valueFiles(t) {
		t.Run(comboName(f), func(t *testing.T) {
			objs := render(t, "mesh", f)
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.GetKind()]++
				switch o.GetKind() {
				case "Service":
					ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ports")
					for _, p := range ports {
						name := p.(map[string]any)["name"]
						if name != "agent" && name != "metrics" {
							t.Errorf("Service %s exposes port %v; only the agent port (and metrics) may be", o.GetName(), name)
						}
					}
				case "Role":
					rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
					for _, r := range rules {
						rule := r.(map[string]any)
						res := rule["resources"].([]any)
						verbs := rule["verbs"].([]any)
						switch {
						case slices.Equal(res, []any{"secrets"}) && slices.Equal(verbs, []any{"get", "list", "watch"}):
						case slices.Equal(res, []any{"events"}) && slices.Equal(verbs, []any{"create"}):
						default:
							t.Errorf("Role grants %v on %v; want get/list/watch on secrets (and create on events) only", verbs, res)
						}
					}
				case "ClusterRole", "ClusterRoleBinding":
					t.Errorf("the chart creates a %s; its RBAC must stay in one namespace", o.GetKind())
				case "StatefulSet", "Deployment":
					containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
					for _, c := range containers {
						sc, _ := c.(map[string]any)["securityContext"].(map[string]any)
						if sc["readOnlyRootFilesystem"] != true || sc["runAsNonRoot"] != true || sc["allowPrivilegeEscalation"] != false {
							t.Errorf("%s %s: container security context %v; want non-root, read-only root, no privilege escalation", o.GetKind(), o.GetName(), sc)
						}
					}
				}
			}
			if kinds["StatefulSet"] != 1 || kinds["Service"] < 2 {
				t.Errorf("rendered %v; want one StatefulSet and its Services", kinds)
			}
		})
	}
}

// TestServerSideDryRun creates every rendered manifest of every values
// combination on the real API server with dryRun=All and strict field
// validation.
func TestServerSideDryRun(t *testing.T) {
	c := kubetest.Shared(t)
	cfg := c.AdminConfig(t)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, dyn)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	b := make([]byte, 4)
	rand.Read(b)
	ns := "chart-" + hex.EncodeToString(b)
	nsGVR := schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
	if _, err := dyn.Resource(nsGVR).Create(t.Context(), nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dyn.Resource(nsGVR).Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	for _, f := range valueFiles(t) {
		t.Run(comboName(f), func(t *testing.T) {
			objs := render(t, ns, f)
			for _, o := range objs {
				gvk := o.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Fatalf("%s %s: the API server does not serve it: %v", gvk, o.GetName(), err)
				}
				var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					if o.GetNamespace() == "" {
						o.SetNamespace(ns)
					}
					ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
				}
				_, err = ri.Create(t.Context(), o, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
				if err != nil {
					t.Errorf("%s %s: refused by the API server: %v", gvk.Kind, o.GetName(), err)
				}
			}
		})
	}
}

// installCRDs creates testdata/crds' definitions (once per API server) and
// waits until they are established.
func installCRDs(t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	files, err := filepath.Glob(filepath.Join("testdata", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in testdata/crds: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, crd := range decode(t, string(data)) {
			if _, err := dyn.Resource(gvr).Create(t.Context(), crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("CRD %s: %v", crd.GetName(), err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !established(t, dyn, gvr, crd.GetName()) {
				if time.Now().After(deadline) {
					t.Fatalf("CRD %s not established within 30s", crd.GetName())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

func established(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, name string) bool {
	got, err := dyn.Resource(gvr).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		return false
	}
	conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
	for _, c := range conds {
		m := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
