package k8ssecrets_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/kubetest"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/k8ssecrets"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// env is a fresh namespace on the shared API server, with user "meshd"
// granted what the Helm chart's Role grants (and Events when events is
// set).
type env struct {
	ns    string
	admin kubernetes.Interface
	meshd kubernetes.Interface
	c     *kubetest.Cluster
}

func newEnv(t *testing.T, events bool) *env {
	t.Helper()
	c := kubetest.Shared(t)
	e := &env{ns: "t-" + randomSuffix(t), admin: c.Admin(t), meshd: c.Meshd(t), c: c}
	ctx := t.Context()
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.admin.CoreV1().Namespaces().Delete(context.Background(), e.ns, metav1.DeleteOptions{})
	})
	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch"}}}
	if events {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}})
	}
	e.grant(t, rules)
	return e
}

func (e *env) grant(t *testing.T, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "meshd", Namespace: e.ns}, Rules: rules}
	if _, err := e.admin.RbacV1().Roles(e.ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "meshd", Namespace: e.ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "meshd"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "meshd"}},
	}
	if _, err := e.admin.RbacV1().RoleBindings(e.ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC takes effect through the API server's informers: wait until
	// meshd may list.
	eventually.True(t, "RBAC to allow meshd to list Secrets", func() bool {
		_, err := e.meshd.CoreV1().Secrets(e.ns).List(ctx, metav1.ListOptions{})
		return err == nil
	})
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// secret returns an entity CA Secret as MCP Mesh labels it.
func (e *env) secret(name, entity string, ca []byte) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Labels: map[string]string{"mcp-mesh.io/trust": "entity-ca"}},
		Data:       map[string][]byte{k8ssecrets.CAKey: ca},
	}
	if entity != "" {
		s.Annotations = map[string]string{k8ssecrets.EntityAnnotation: entity}
	}
	return s
}

func (e *env) create(t *testing.T, s *corev1.Secret) {
	t.Helper()
	if _, err := e.admin.CoreV1().Secrets(e.ns).Create(t.Context(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) update(t *testing.T, s *corev1.Secret) {
	t.Helper()
	if _, err := e.admin.CoreV1().Secrets(e.ns).Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) remove(t *testing.T, name string) {
	t.Helper()
	if err := e.admin.CoreV1().Secrets(e.ns).Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) open(t *testing.T) (*k8ssecrets.Backend, *logtest.Buffer, *atomic.Int64) {
	t.Helper()
	logs := &logtest.Buffer{}
	s, err := k8ssecrets.New(t.Context(), k8ssecrets.Config{
		Client: e.meshd, Namespace: e.ns,
		Logger: logs.Logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	changes := &atomic.Int64{}
	s.OnChange(func() { changes.Add(1) })
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("store log:\n%s", logs.String())
		}
	})
	return s, logs, changes
}

// entityOf verifies leaf and returns the entity the store attributes it
// to, or "" and the error.
func entityOf(s *k8ssecrets.Backend, leaf *x509.Certificate) (string, error) {
	p, err := s.Verify(context.Background(), []*x509.Certificate{leaf}, time.Now())
	if err != nil {
		return "", err
	}
	return p.Entity, nil
}

func trusts(s *k8ssecrets.Backend, leaf *x509.Certificate, entity string) func() bool {
	return func() bool { got, err := entityOf(s, leaf); return err == nil && got == entity }
}

func unknown(s *k8ssecrets.Backend, leaf *x509.Certificate) func() bool {
	return func() bool {
		_, err := entityOf(s, leaf)
		return errors.Is(err, trust.ErrUnknownAuthority)
	}
}

func TestSecretsFollowedLive(t *testing.T) {
	e := newEnv(t, false)
	acme, globex, initech, other := pkitest.NewRoot(t, "acme CA"), pkitest.NewRoot(t, "globex CA"), pkitest.NewRoot(t, "initech CA"), pkitest.NewRoot(t, "other CA")
	e.create(t, e.secret("acme", "", acme.PEM()))
	e.create(t, e.secret("globex-ca", "globex", globex.PEM()))
	unlabelled := e.secret("other", "", other.PEM())
	unlabelled.Labels = nil
	e.create(t, unlabelled)

	s, _, changes := e.open(t)
	acmeLeaf, globexLeaf, otherLeaf := acme.Leaf(t, "acme-a1"), globex.Leaf(t, "globex-a1"), other.Leaf(t, "other-a1")
	// Loaded before New returns: the Secret's name, else the annotation.
	if got, err := entityOf(s, acmeLeaf); err != nil || got != "acme" {
		t.Fatalf("acme leaf: entity %q, %v; want acme", got, err)
	}
	if got, err := entityOf(s, globexLeaf); err != nil || got != "globex" {
		t.Fatalf("globex leaf: entity %q, %v; want globex (the annotation)", got, err)
	}
	if !unknown(s, otherLeaf)() {
		t.Fatal("a Secret without the label is trusted")
	}
	if got := strings.Join(s.Entities(), ","); got != "acme,globex" {
		t.Fatalf("Entities = %s, want acme,globex", got)
	}

	// Added.
	before := changes.Load()
	e.create(t, e.secret("initech", "", initech.PEM()))
	eventually.True(t, "the added Secret to be trusted", trusts(s, initech.Leaf(t, "initech-a1"), "initech"))
	if changes.Load() == before {
		t.Error("no change notification for an added Secret")
	}

	// Changed: the old CA is gone, the new one trusted.
	acme2 := pkitest.NewRoot(t, "acme CA 2")
	e.update(t, e.secret("acme", "", acme2.PEM()))
	eventually.True(t, "the changed Secret's new CA", trusts(s, acme2.Leaf(t, "acme-a2"), "acme"))
	if !unknown(s, acmeLeaf)() {
		t.Error("the replaced CA is still trusted")
	}

	// Deleted.
	e.remove(t, "globex-ca")
	eventually.True(t, "the deleted Secret's CA to be dropped", unknown(s, globexLeaf))

	// A label removed takes the Secret out of the set.
	sec := e.secret("initech", "", initech.PEM())
	sec.Labels = map[string]string{"mcp-mesh.io/trust": "something-else"}
	e.update(t, sec)
	eventually.True(t, "the unlabelled Secret's CA to be dropped", unknown(s, initech.Leaf(t, "initech-a2")))
}

func TestBadSecretKeepsLastGood(t *testing.T) {
	for _, events := range []bool{true, false} {
		name := "without events RBAC"
		if events {
			name = "with events RBAC"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, events)
			acme := pkitest.NewRoot(t, "acme CA")
			e.create(t, e.secret("acme", "", acme.PEM()))
			s, logs, _ := e.open(t)
			leaf := acme.Leaf(t, "acme-a1")
			if !trusts(s, leaf, "acme")() {
				t.Fatal("acme not trusted")
			}
			key := []byte("-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n")
			bad := []struct {
				what string
				sec  *corev1.Secret
			}{
				{"damaged PEM", e.secret("acme", "", acme.PEM()[:100])},
				{"no ca.crt", func() *corev1.Secret {
					s := e.secret("acme", "", nil)
					s.Data = map[string][]byte{"tls.crt": acme.PEM()}
					return s
				}()},
				{"a key, no CA", e.secret("acme", "", key)},
				{"bad entity name", e.secret("acme", "Not_An_Id", acme.PEM())},
			}
			for i, b := range bad {
				e.update(t, b.sec)
				eventually.True(t, "the bad version ("+b.what+") to be counted", func() bool { return s.Rejected() == uint64(i+1) })
				if !trusts(s, leaf, "acme")() {
					t.Fatalf("after a bad version (%s) the last good CA is no longer trusted", b.what)
				}
			}
			if !strings.Contains(logs.String(), "keeping its last good version") {
				t.Errorf("no log line for the bad versions:\n%s", logs.String())
			}
			if strings.Contains(logs.String(), "c2VjcmV0IGtleSBtYXRlcmlhbA") {
				t.Error("the log holds the Secret's content")
			}
			if events {
				eventually.True(t, "a Warning Event on the Secret", func() bool {
					evs, err := e.admin.CoreV1().Events(e.ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=acme"})
					if err != nil {
						return false
					}
					for _, ev := range evs.Items {
						if ev.Type == corev1.EventTypeWarning && ev.Reason == "InvalidEntityCA" && ev.InvolvedObject.Kind == "Secret" {
							return true
						}
					}
					return false
				})
			}
			// A good version again takes over.
			acme2 := pkitest.NewRoot(t, "acme CA 2")
			e.update(t, e.secret("acme", "", acme2.PEM()))
			eventually.True(t, "the fixed Secret's CA", trusts(s, acme2.Leaf(t, "acme-a2"), "acme"))

			// A Secret that never parsed is skipped.
			e.create(t, e.secret("broken", "", []byte("not pem")))
			eventually.True(t, "the broken Secret to be counted", func() bool { return s.Rejected() == uint64(len(bad)+1) })
			if strings.Contains(strings.Join(s.Entities(), ","), "broken") {
				t.Error("a Secret that never parsed is trusted")
			}
		})
	}
}

func TestOneCAOneEntity(t *testing.T) {
	e := newEnv(t, false)
	acme := pkitest.NewRoot(t, "acme CA")
	e.create(t, e.secret("a-first", "acme", acme.PEM()))
	e.create(t, e.secret("b-second", "globex", acme.PEM()))
	s, _, _ := e.open(t)
	if got, err := entityOf(s, acme.Leaf(t, "acme-a1")); err != nil || got != "acme" {
		t.Fatalf("a CA in two Secrets: entity %q, %v; want acme (the first Secret by name)", got, err)
	}
}

func TestForbiddenIsAClearError(t *testing.T) {
	c := kubetest.Shared(t)
	admin := c.Admin(t)
	ns := "t-" + randomSuffix(t)
	if _, err := admin.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	_, err := k8ssecrets.New(t.Context(), k8ssecrets.Config{Client: c.Meshd(t), Namespace: ns})
	if err == nil || !strings.Contains(err.Error(), "get, list and watch on secrets") {
		t.Fatalf("New without RBAC: %v; want an error saying what to grant", err)
	}
	if _, err := k8ssecrets.New(t.Context(), k8ssecrets.Config{Client: c.Meshd(t), Namespace: ns, LabelSelector: "a=(b"}); err == nil {
		t.Fatal("a malformed label selector was accepted")
	}
}

// TestAPIServerOutage stops the API server: the last good set stays, and
// once it is back the informer catches up by itself, deletions made
// through the outage's relist included.
func TestAPIServerOutage(t *testing.T) {
	e := newEnv(t, false)
	acme, globex := pkitest.NewRoot(t, "acme CA"), pkitest.NewRoot(t, "globex CA")
	e.create(t, e.secret("acme", "", acme.PEM()))
	s, _, _ := e.open(t)
	leaf := acme.Leaf(t, "acme-a1")

	e.c.StopAPIServer(t)
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			e.c.StartAPIServer(t)
		}
	})
	eventually.True(t, "the API server to be gone", func() bool {
		_, err := e.meshd.CoreV1().Secrets(e.ns).List(t.Context(), metav1.ListOptions{})
		return err != nil
	})
	if !trusts(s, leaf, "acme")() {
		t.Fatal("the API server going away dropped the trusted set")
	}
	e.c.StartAPIServer(t)
	restarted = true

	e.create(t, e.secret("globex", "", globex.PEM()))
	eventually.True(t, "a Secret added after the outage", trusts(s, globex.Leaf(t, "globex-a1"), "globex"))
	e.remove(t, "acme")
	eventually.True(t, "a Secret deleted after the outage", unknown(s, leaf))
}

// TestConcurrentVerifyDuringChurn verifies from several goroutines while
// Secrets are added and deleted, under the race detector, and checks what
// every verification returned: acme, whose Secret never changes, is always
// trusted as acme; a churned CA's leaf is trusted as its own Secret's
// entity or refused as unknown, never attributed elsewhere; Entities and
// Certificates only ever show what some Secret held.
func TestConcurrentVerifyDuringChurn(t *testing.T) {
	e := newEnv(t, false)
	acme := pkitest.NewRoot(t, "acme CA")
	e.create(t, e.secret("acme", "", acme.PEM()))
	s, _, _ := e.open(t)
	leaf := acme.Leaf(t, "acme-a1")
	type churned struct {
		name string
		ca   *pkitest.CA
		leaf *x509.Certificate
	}
	churn := make([]churned, 10)
	names := map[string]bool{"acme": true}
	for i := range churn {
		ca := pkitest.NewRoot(t, "churn CA")
		churn[i] = churned{name: "churn-" + strings.Repeat("x", i%3+1), ca: ca, leaf: ca.Leaf(t, "churn-a1")}
		names[churn[i].name] = true
	}
	// check returns what was wrong with one round of reads, or "".
	check := func(round int) string {
		if got, err := entityOf(s, leaf); err != nil || got != "acme" {
			return fmt.Sprintf("the acme leaf: entity %q, error %v; want acme", got, err)
		}
		c := churn[round%len(churn)]
		switch got, err := entityOf(s, c.leaf); {
		case err == nil && got != c.name:
			return fmt.Sprintf("a leaf of %s's CA was attributed to %q", c.name, got)
		case err != nil && !errors.Is(err, trust.ErrUnknownAuthority):
			return fmt.Sprintf("a leaf of %s's CA: %v, want trusted or unknown authority", c.name, err)
		}
		ents := s.Entities()
		if !slices.Contains(ents, "acme") {
			return fmt.Sprintf("Entities = %v, without acme", ents)
		}
		for _, n := range ents {
			if !names[n] {
				return fmt.Sprintf("Entities = %v: %q was never a Secret", ents, n)
			}
		}
		if certs := s.Certificates("acme"); len(certs) != 1 || !certs[0].Equal(acme.Cert) {
			return fmt.Sprintf("Certificates(acme) = %d certificates, want acme's CA", len(certs))
		}
		return ""
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	rounds := make([]int, 4)
	for g := range rounds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ; ; rounds[g]++ {
				select {
				case <-stop:
					return
				default:
				}
				if bad := check(rounds[g] + g); bad != "" {
					t.Errorf("goroutine %d, round %d: %s", g, rounds[g], bad)
					return
				}
			}
		}()
	}
	for _, c := range churn {
		e.create(t, e.secret(c.name, "", c.ca.PEM()))
		e.remove(t, c.name)
	}
	eventually.True(t, "the churned Secrets to be gone", func() bool { return strings.Join(s.Entities(), ",") == "acme" })
	close(stop)
	wg.Wait()
	for g, n := range rounds {
		if n == 0 && !t.Failed() {
			t.Errorf("goroutine %d verified nothing", g)
		}
	}
}
