package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// revokeName revokes target through the admin API with a reason that does
// not block keys, so what is refused afterwards is refused for the
// identity, not the key.
func (e *env) revokeName(target string) map[string]any {
	e.t.Helper()
	r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": target, "reason": "superseded"})
	if r.code != http.StatusOK {
		e.t.Fatalf("revoke %s: %s", target, r)
	}
	return r.json(e.t)
}

// heartbeatAs posts a heartbeat for agent with cert on a fresh connection.
func (e *env) heartbeatAs(cert tls.Certificate, agent string) reply {
	e.t.Helper()
	return e.do(e.freshClient(&cert), "POST", "/heartbeat", heartbeat(agent, 9000))
}

// certCount is how many certificates the store holds for cn.
func (e *env) certCount(cn string) int {
	e.t.Helper()
	certs, err := e.ca.st.CertsByName(context.Background(), cn)
	if err != nil {
		e.t.Fatal(err)
	}
	return len(certs)
}

// TestE2ERevokedIdentityStaysRevoked: `ca revoke opus@ct112` revokes the
// identity. The node cannot mint opus again (not with a new key, not by
// /agent-cert, not by /renew), nothing is recorded for the refusals, and
// only `ca reinstate` lifts it. On the old code the node's renewal handed
// out a fresh opus@ct112 and meshd admitted it.
func TestE2ERevokedIdentityStaysRevoked(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	c := e.enrollClient()
	n := e.enrollNode(clock, testSecret, "ct112")
	opus, _ := e.mintAgent(n, "opus")
	if r := e.heartbeatAs(opus, "opus"); r.code != http.StatusOK {
		t.Fatalf("opus heartbeat: %s", r)
	}

	out := e.revokeName("opus@ct112")
	if out["identity"] != "opus@ct112" || out["evicted_agents"] != float64(1) {
		t.Errorf("revoke answer %v, want identity opus@ct112 and one agent evicted", out)
	}
	if r := e.heartbeatAs(opus, "opus"); r.code != http.StatusForbidden || r.reason() != "revoked" {
		t.Errorf("the revoked certificate's heartbeat: %s, want 403 revoked", r)
	}
	before := e.certCount("opus@ct112")
	if _, err := c.AgentCert(ctx, n.cert, "opus", e.newNodeKey()); !refusedRevoked(err) {
		t.Errorf("agent-cert for revoked opus@ct112 with a new key: %v, want 403 revoked", err)
	}
	nodeBefore := e.certCount("ct112.mesh")
	if _, err := c.Renew(ctx, n.cert, n.key, []enroll.AgentKey{{ID: "opus", Key: e.newNodeKey()}}); !refusedRevoked(err) {
		t.Errorf("renew with revoked opus@ct112: %v, want 403 revoked", err)
	}
	if got := e.certCount("opus@ct112"); got != before {
		t.Errorf("refusals recorded %d certificates of opus@ct112", got-before)
	}
	if got := e.certCount("ct112.mesh"); got != nodeBefore {
		t.Errorf("a refused renewal recorded %d node certificates nobody received", got-nodeBefore)
	}
	// Issuing offline, as `meshctl ca issue-agent` does, is refused too.
	if _, err := e.ca.auth.Sign(ctx, ca.AgentRequest("opus", "ct112"), ca.WithGeneratedKey()); err == nil {
		t.Error("ca issue-agent issued revoked opus@ct112")
	}
	// Other agents of the node are not affected.
	if sage, _ := e.mintAgent(n, "sage"); e.heartbeatAs(sage, "sage").code != http.StatusOK {
		t.Error("sage@ct112 refused after opus@ct112 was revoked")
	}

	if r := e.adminDo("POST", "/admin/reinstate", map[string]string{"identity": "opus@ct112"}); r.code != http.StatusOK {
		t.Fatalf("reinstate: %s", r)
	}
	if got := e.audited(0, "identity.reinstate", store.OutcomeOK, ""); len(got) != 1 || got[0].Identity != "opus@ct112" {
		t.Errorf("reinstatement audit: %+v", got)
	}
	again, _ := e.mintAgent(n, "opus")
	if r := e.heartbeatAs(again, "opus"); r.code != http.StatusOK {
		t.Errorf("opus with a certificate issued after reinstatement: %s", r)
	}
	if r := e.heartbeatAs(opus, "opus"); r.code != http.StatusForbidden {
		t.Errorf("the certificate revoked with the identity after reinstatement: %s, want 403", r)
	}
}

// refusedRevoked reports whether err is meshd's 403 for a revoked identity.
func refusedRevoked(err error) bool {
	var ee *enroll.Error
	return errors.As(err, &ee) && ee.Status == http.StatusForbidden && strings.Contains(ee.Error(), "revoked")
}

// TestE2ERevokeNodeCutsOffAgents: revoking a node revokes every agent it
// minted and blocks their issuance; on the old code the agents kept
// heartbeating and renewing. Offline (meshctl against the CA directory)
// as well as through meshd.
func TestE2ERevokeNodeCutsOffAgents(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	online := e.enrollNode(clock, testSecret, "ct200")
	offline := e.enrollNode(clock, testSecret, "ct201")
	lister := e.enrollNode(clock, testSecret, "ct299") // lists /agents throughout
	a, _ := e.mintAgent(online, "a")
	b, _ := e.mintAgent(offline, "b")
	for id, cert := range map[string]tls.Certificate{"a": a, "b": b} {
		if r := e.heartbeatAs(cert, id); r.code != http.StatusOK {
			t.Fatalf("%s heartbeat: %s", id, r)
		}
	}

	out := e.revokeName("ct200.mesh")
	if revoked, _ := out["revoked"].([]any); len(revoked) != 2 {
		t.Errorf("revoking ct200.mesh revoked %v, want the node's and a@ct200's certificates", out["revoked"])
	}
	if r := e.heartbeatAs(a, "a"); r.code != http.StatusForbidden {
		t.Errorf("a@ct200 after its node was revoked: %s, want 403", r)
	}
	if v, ok := e.agents(e.client(&lister.cert), "").find("a"); !ok || v.Status != "evicted" {
		t.Errorf("a@ct200 is listed %+v, want evicted", v)
	}
	// Nothing mints a@ct200 or another agent of ct200 again.
	if _, err := e.ca.auth.Sign(ctx, ca.AgentRequest("new", "ct200"), ca.WithGeneratedKey()); err == nil {
		t.Error("issued an agent of revoked node ct200")
	}
	if _, err := e.enrollClient().Enroll(ctx, testSecret, "ct200", e.newNodeKey()); !refusedRevoked(err) {
		t.Errorf("re-enrolling revoked ct200 with the secret: %v, want 403 revoked", err)
	}

	// Offline, as `meshctl ca revoke ct201.mesh` without meshd.
	e.revokeOffline("ct201.mesh")
	eventually.True(t, "b@ct201 refused after an offline revocation of its node", func() bool {
		return e.heartbeatAs(b, "b").code == http.StatusForbidden
	})
	// The CRL was re-signed for the revocation; its age is a metric.
	if age, ok := e.metrics()["meshd_crl_age_seconds"]; !ok || age < 0 || age > 600 { // meshd's test clock runs minutes ahead
		t.Errorf("meshd_crl_age_seconds = %v (present %v), want a fresh CRL's age", age, ok)
	}
	eventually.True(t, "b@ct201 listed evicted", func() bool {
		v, _ := e.agents(e.client(&lister.cert), "").find("b")
		return v.Status == "evicted"
	})
}

// TestE2ERenewRacesRevocation: holders renewing in a loop while their
// identity is revoked. Once revoke returns, every certificate of the
// identity ever issued is refused by meshd and listed in the CRL, and no
// renewal in flight gets a usable one. On the old code a renewal verified
// before the revocation signed after it and escaped.
func TestE2ERenewRacesRevocation(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	c := e.enrollClient()
	n := e.enrollNode(clock, testSecret, "ct300")
	agent, _ := e.mintAgent(n, "opus")

	const renewers = 6
	var (
		mu     sync.Mutex
		issued []tls.Certificate
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	keep := func(cert tls.Certificate) {
		mu.Lock()
		issued = append(issued, cert)
		mu.Unlock()
	}
	keys := make([]crypto.Signer, renewers)
	for i := range keys {
		keys[i] = e.newNodeKey() // newNodeKey is not safe for concurrent use
	}
	for i := range renewers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cur := n.cert
			if i%2 == 1 {
				cur = agent
			}
			for k := 0; k < 200; k++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keys[i]
				if i%2 == 0 {
					rn, err := c.Renew(ctx, cur, n.key, []enroll.AgentKey{{ID: "opus", Key: key}})
					if err != nil {
						continue // refused once the node is revoked
					}
					cur = rn.Node.TLSCertificate(n.key)
					keep(cur)
					keep(rn.Agents["opus"].TLSCertificate(key))
				} else {
					b, err := c.AgentCert(ctx, n.cert, "opus", key)
					if err != nil {
						continue
					}
					keep(b.TLSCertificate(key))
				}
			}
		}()
	}
	// Let some renewals land first.
	eventually.True(t, "renewals before the revocation", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(issued) >= 3*renewers
	})
	e.revokeName("ct300.mesh")
	revokedAt := time.Now()
	close(stop)
	wg.Wait()

	mu.Lock()
	got := slices.Clone(issued)
	mu.Unlock()
	crl := e.crlSerials()
	for _, cert := range got {
		serial := serialOf(cert)
		if !crl[serial] {
			t.Errorf("certificate %s (%s) is not in the CRL after the revocation of its node", serial, cert.Leaf.Subject.CommonName)
		}
		if r := e.do(e.freshClient(&cert), "GET", "/agents", nil); r.code != http.StatusForbidden {
			t.Errorf("certificate %s (%s) still admitted after revoke returned: %s", serial, cert.Leaf.Subject.CommonName, r)
		}
	}
	// The store agrees: every certificate of the node or its agents
	// recorded at any time is revoked.
	revs, err := e.ca.st.Revocations(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	revoked := map[string]bool{}
	for _, r := range revs {
		revoked[r.Serial] = true
	}
	all, err := e.ca.st.Certs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range all {
		if (rec.CommonName == "ct300.mesh" || strings.HasSuffix(rec.CommonName, "@ct300")) && !revoked[rec.Serial] {
			t.Errorf("certificate %s of %s recorded (at %s, revoke returned at %s) but not revoked", rec.Serial, rec.CommonName, rec.IssuedAt, revokedAt)
		}
	}
	t.Logf("%d certificates issued while racing the revocation", len(got))
}

// TestE2ERefusedRenewChangesNothing: a renewal refused for one of its
// agents records no certificate at all; on the old code the node's new
// certificate was signed and recorded before the agents were checked.
func TestE2ERefusedRenewChangesNothing(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	n := e.enrollNode(clock, testSecret, "ct500")
	nodeBefore, agentBefore := e.certCount("ct500.mesh"), e.certCount("good@ct500")
	key := e.newNodeKey()
	r := doHeader(t, e.freshClient(&n.cert), "POST", e.baseURL()+"/renew", nil, map[string]any{
		"csr": csrPEM(t, "ct500.mesh", n.key),
		"agents": []map[string]string{
			{"agent_id": "good", "csr": csrPEM(t, "good@ct500", key)},
			{"agent_id": "bad", "csr": csrPEM(t, "bad@othernode", key)},
		},
	})
	if r.code != http.StatusForbidden {
		t.Fatalf("renewal with an agent of another node: %s, want 403", r)
	}
	if got := e.certCount("ct500.mesh"); got != nodeBefore {
		t.Errorf("the refused renewal recorded %d node certificate(s)", got-nodeBefore)
	}
	if got := e.certCount("good@ct500"); got != agentBefore {
		t.Errorf("the refused renewal recorded %d agent certificate(s)", got-agentBefore)
	}
}

// crlSerials returns every serial the CRLs meshd serves list.
func (e *env) crlSerials() map[string]bool {
	e.t.Helper()
	r := doHeader(e.t, e.freshClient(nil), "GET", e.baseURL()+"/crl", http.Header{"Accept": {"application/x-pem-file"}}, nil)
	if r.code != http.StatusOK {
		e.t.Fatalf("GET /crl: %s", r)
	}
	out := map[string]bool{}
	rest := r.body
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return out
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, entry := range crl.RevokedCertificateEntries {
			out[entry.SerialNumber.Text(16)] = true
		}
	}
}

// TestE2EAuditCheckpointed: meshd anchors the audit log it writes (an
// online revocation's entries) in the CA's checkpoints file, so a rewrite
// of the store is caught by the CA's verification.
func TestE2EAuditCheckpointed(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	n := e.enrollNode(clock, testSecret, "ct800")
	e.revokeName(n.id + ".mesh")
	e.stop() // the last checkpoint is written at shutdown
	data, err := os.ReadFile(filepath.Join(e.ca.cfg.Dir, "audit.checkpoints"))
	if err != nil {
		t.Fatalf("no checkpoints file after meshd ran: %v", err)
	}
	st, err := sqlstore.OpenSQLite(context.Background(), e.ca.cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log, err := st.AuditLog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	signers, err := ca.CheckpointSigners(e.ca.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.VerifyAudit(log, bytes.NewReader(data), signers, nil); err != nil {
		t.Errorf("meshd's audit log against its checkpoints: %v", err)
	}
	if last := lastLine(data); !strings.Contains(last, fmt.Sprintf(`"seq":%d`, len(log))) {
		t.Errorf("the last checkpoint %s does not cover the %d entries meshd wrote", last, len(log))
	}
}

func lastLine(data []byte) string {
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return lines[len(lines)-1]
}
