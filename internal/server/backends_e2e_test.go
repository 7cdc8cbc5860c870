package server_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/kubetest"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// k8sNamespace makes a namespace on the shared API server where user
// "meshd" has exactly the Helm chart's Role, and returns its name and the
// admin and meshd clients.
func k8sNamespace(t *testing.T) (string, kubernetes.Interface, kubernetes.Interface) {
	t.Helper()
	c := kubetest.Shared(t)
	admin, meshdClient := c.Admin(t), c.Meshd(t)
	b := make([]byte, 4)
	rand.Read(b)
	ns := "e2e-" + hex.EncodeToString(b)
	ctx := t.Context()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "meshd"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "meshd"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "meshd"},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "meshd"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "RBAC for meshd", func() bool {
		_, err := meshdClient.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		return err == nil
	})
	return ns, admin, meshdClient
}

func entitySecret(name string, ca []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"mcp-mesh.io/trust": "entity-ca"}},
		Data:       map[string][]byte{"ca.crt": ca},
	}
}

// TestE2EK8sSecrets: a partner registered as a labelled Secret is admitted;
// changing its CA evicts the agents the old CA vouched for, connected or
// not, and deleting the Secret evicts the rest, connections closed, as
// `entity revoke` does. The test waits for the evictions and logs how long
// they took; it does not time them (BENCHMARKS.md says what measures it).
func TestE2EK8sSecrets(t *testing.T) {
	ns, admin, meshdClient := k8sNamespace(t)
	secrets := admin.CoreV1().Secrets(ns)
	partner := newTestCA(t, "partner CA")
	if _, err := secrets.Create(t.Context(), entitySecret("partner", partner.pem), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "k8s-secrets"},
		configure: func(c *meshd.Config) { c.K8s = meshd.K8sConfig{Client: meshdClient, Namespace: ns} }})
	e.extraKeys = append(e.extraKeys, partner.keyPEM)
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
	observer := e.client(&obsCert)

	connected, idle := partner.leaf(t, "partner-a"), partner.leaf(t, "partner-b")
	conn := e.dial(&connected)
	if r := conn.mustDo("POST", "/heartbeat", heartbeat("partner-a", 9200)); r.code != http.StatusOK {
		t.Fatalf("partner-a: %s", r)
	}
	if r := e.do(e.freshClient(&idle), "POST", "/heartbeat", heartbeat("partner-b", 9201)); r.code != http.StatusOK {
		t.Fatalf("partner-b: %s", r)
	}
	if a, ok := e.agents(observer, "").find("partner-a"); !ok || a.EntityID != "partner" {
		t.Fatalf("partner-a listed as %+v", a)
	}

	// The Secret's CA replaced: both agents were vouched for by the old one.
	partner2 := newTestCA(t, "partner CA 2")
	e.extraKeys = append(e.extraKeys, partner2.keyPEM)
	start := time.Now()
	if _, err := secrets.Update(t.Context(), entitySecret("partner", partner2.pem), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.awaitClose(); err != nil {
		t.Fatalf("partner-a's connection after its Secret's CA changed: %v", err)
	}
	eventually.True(t, "partner-a and partner-b evicted", func() bool {
		l := e.agents(observer, "")
		a, _ := l.find("partner-a")
		b, _ := l.find("partner-b")
		return a.Status == "evicted" && b.Status == "evicted"
	})
	t.Logf("Secret changed: agents evicted after %v", time.Since(start))

	fresh := partner2.leaf(t, "partner-c")
	conn = e.dial(&fresh)
	if r := conn.mustDo("POST", "/heartbeat", heartbeat("partner-c", 9202)); r.code != http.StatusOK {
		t.Fatalf("partner-c with the new CA: %s", r)
	}
	start = time.Now()
	if err := secrets.Delete(t.Context(), "partner", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.awaitClose(); err != nil {
		t.Fatalf("partner-c's connection after its Secret was deleted: %v", err)
	}
	eventually.True(t, "partner-c evicted", func() bool {
		a, _ := e.agents(observer, "").find("partner-c")
		return a.Status == "evicted"
	})
	t.Logf("Secret deleted: agent evicted after %v", time.Since(start))
	if r := e.do(e.freshClient(&fresh), "POST", "/heartbeat", heartbeat("partner-c", 9202)); r.code != http.StatusForbidden || r.reason() != "unknown_ca" {
		t.Errorf("partner-c after the Secret was deleted: %s, want 403 unknown_ca", r)
	}

	// A bad Secret is counted, and trusted nothing.
	if _, err := secrets.Create(t.Context(), entitySecret("broken", []byte("not a certificate")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the bad Secret counted", func() bool { return e.metrics()["meshd_trust_secret_rejections_total"] == 1 })

	// The entity list names the backend.
	partner3 := newTestCA(t, "partner CA 3")
	e.extraKeys = append(e.extraKeys, partner3.keyPEM)
	if _, err := secrets.Create(t.Context(), entitySecret("globex", partner3.pem), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "globex listed from k8s-secrets", func() bool {
		r := e.adminDo("GET", "/admin/entities", nil)
		return r.code == http.StatusOK && strings.Contains(string(r.body), `"source":"k8s-secrets"`)
	})
}

// TestE2ESPIRE: agents with SVIDs of a listed trust domain are admitted and
// belong to its (mapped) entity; a bundle change evicts exactly the agents
// it no longer vouches for; an unlisted federated trust domain is refused.
//
// The real SPIRE judges these paths end to end (cmd/meshd's
// TestRealSPIRE… suite, docs/spire.md). This test stays on the double for
// what the real server cannot give: SVIDs of any shape at will — a CN next
// to the SPIFFE ID, a mesh identity's path, an ID of a trust domain it
// does not serve — to pin the default binding's whole table in-process, and
// a federated bundle pruned the instant the test says so.
func TestE2ESPIRE(t *testing.T) {
	meshTD := spiffeid.RequireTrustDomainFromString("mesh.test")
	partnerTD := spiffeid.RequireTrustDomainFromString("partner.test")
	strangerTD := spiffeid.RequireTrustDomainFromString("stranger.test")
	wl := spiffetest.NewServer(t, "")
	wl.SetSVID(spiffeid.RequireFromPath(meshTD, "/meshd"))
	wl.AddFederatedBundle(partnerTD)
	wl.AddFederatedBundle(strangerTD)
	backoff := spiffetest.NewBackoff()

	e := newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "spire"},
		configure: func(c *meshd.Config) {
			c.SPIRE = meshd.SPIREConfig{Socket: wl.SocketPath(), Federated: []spiffeid.TrustDomain{partnerTD},
				Entities: map[spiffeid.TrustDomain]string{partnerTD: "partner"}, ClientOptions: backoff.ClientOptions()}
		}})
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
	observer := e.client(&obsCert)

	// Partner agents name themselves by CN, as MCP Mesh's do.
	svid := func(td spiffeid.TrustDomain, name string) tls.Certificate { return svidCert(wl, td, name) }
	old := svid(partnerTD, "partner-a")
	conn := e.dial(&old)
	if r := conn.mustDo("POST", "/heartbeat", heartbeat("partner-a", 9300)); r.code != http.StatusOK {
		t.Fatalf("partner-a: %s", r)
	}
	if a, ok := e.agents(observer, "").find("partner-a"); !ok || a.EntityID != "partner" {
		t.Fatalf("partner-a listed as %+v", a)
	}
	// SPIRE's own SVIDs carry no CN: with the default binding the SPIFFE
	// ID names the agent. meshd's own trust domain is the mesh's own (no
	// entity, no namespace); a partner's stays inside its namespace.
	cnless := func(id spiffeid.ID) tls.Certificate {
		return tlsCert(wl.CA(id.TrustDomain()).Issue(&x509.Certificate{URIs: []*url.URL{id.URL()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}))
	}
	for _, tc := range []struct {
		id, agent, entity, reason string
	}{
		{"/agent/weather", "weather", "", ""},
		{"/agent/weather", "weather-1a2b3c4d", "", ""},
		{"/agent/weather", "geo", "", "identity_mismatch"},
		{"/mesh-agent", "shared-one", "", ""}, // MCP Mesh's one ID for every agent: the first claim binds
		{"/mesh-registry", "registry", "", "not_agent_cert"},
		{"/agent/ct111/opus", "opus", "", ""}, // the mesh identity opus@ct111's SPIFFE ID
	} {
		c := cnless(spiffeid.RequireFromPath(meshTD, tc.id))
		r := e.do(e.freshClient(&c), "POST", "/heartbeat", heartbeat(tc.agent, 9310))
		if tc.reason != "" {
			if r.code != http.StatusForbidden || r.reason() != tc.reason {
				t.Errorf("%s as %s: %s, want 403 %s", tc.id, tc.agent, r, tc.reason)
			}
			continue
		}
		if r.code != http.StatusOK {
			t.Errorf("%s as %s: %s, want 200", tc.id, tc.agent, r)
		} else if a, _ := e.agents(observer, "").find(tc.agent); a.EntityID != tc.entity {
			t.Errorf("%s as %s: entity %q, want %q", tc.id, tc.agent, a.EntityID, tc.entity)
		}
	}
	partnerC := cnless(spiffeid.RequireFromPath(partnerTD, "/agent/partner-c"))
	if r := e.do(e.freshClient(&partnerC), "POST", "/heartbeat", heartbeat("partner-c", 9311)); r.code != http.StatusOK {
		t.Errorf("CN-less partner SVID inside its namespace: %s", r)
	}
	partnerOpus := cnless(spiffeid.RequireFromPath(partnerTD, "/agent/opus"))
	if r := e.do(e.freshClient(&partnerOpus), "POST", "/heartbeat", heartbeat("opus", 9312)); r.code != http.StatusForbidden || r.reason() != "outside_namespace" {
		t.Errorf("partner SVID naming a mesh id: %s, want 403 outside_namespace", r)
	}
	stranger := svid(strangerTD, "stranger-a")
	if r := e.do(e.freshClient(&stranger), "POST", "/heartbeat", heartbeat("stranger-a", 9301)); r.code != http.StatusForbidden || r.reason() != "unknown_ca" || !strings.Contains(string(r.body), "trust domain stranger.test is not trusted here") {
		t.Errorf("unlisted trust domain: %s, want 403 unknown_ca saying its trust domain is not trusted", r)
	}

	// A federated trust domain whose name cannot be an entity's (dots)
	// must be mapped: meshd refuses to start, saying how.
	bad := e.cfg
	bad.SPIRE.Federated = []spiffeid.TrustDomain{partnerTD, strangerTD}
	if _, err := meshd.New(t.Context(), bad, e.ca.st, e.ca.auth); err == nil || !strings.Contains(err.Error(), "--spire-entities stranger.test=<name>") {
		t.Errorf("unmapped dotted federated trust domain: %v, want a start-up error naming --spire-entities", err)
	}

	// Rotation: a new authority joins; both SVIDs verify. The prune drops
	// the old one: partner-a is evicted, partner-b stays.
	wl.RotateCA(partnerTD)
	fresh := svid(partnerTD, "partner-b")
	eventually.True(t, "partner-b admitted after the rotation", func() bool {
		return e.do(e.freshClient(&fresh), "POST", "/heartbeat", heartbeat("partner-b", 9302)).code == http.StatusOK
	})
	start := time.Now()
	wl.PruneBundle(partnerTD)
	if _, err := conn.awaitClose(); err != nil {
		t.Fatalf("partner-a's connection after the prune: %v", err)
	}
	eventually.True(t, "partner-a evicted", func() bool {
		a, _ := e.agents(observer, "").find("partner-a")
		return a.Status == "evicted"
	})
	t.Logf("bundle pruned: agent evicted after %v", time.Since(start))
	if b, _ := e.agents(observer, "").find("partner-b"); b.Status != "healthy" {
		t.Errorf("partner-b, whose SVID the new authority signed, is %q after the prune", b.Status)
	}
}

// TestE2EMetricsListener: --metrics-listen serves /metrics and nothing
// else of the admin API.
func TestE2EMetricsListener(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict, configure: func(c *meshd.Config) { c.MetricsListen = "127.0.0.1:0" }})
	base := "http://" + e.srv.MetricsAddr()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "meshd_agents") {
		t.Fatalf("GET /metrics: %d\n%.200s", resp.StatusCode, body)
	}
	for _, p := range []string{"/admin/entities", "/admin/agents", "/health"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the metrics listener: %d, want 404", p, resp.StatusCode)
		}
	}
}
