package server_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestE2ERevokedCallerRefusedOnEveryRoute: once a node is revoked (by
// name, so the identity ct410.mesh and with it every agent identity
// *@ct410, as only the mesh CA vouches for those names), neither the
// node's certificate nor its agent's is served on any authenticated route
// of the agent port: heartbeat POST and HEAD, the agent list and delete,
// agent-cert issuance, renewal, session attach and the revocation stream
// each answer 403 "revoked" and record nothing; the streams both had open
// end while a bystander's stays; and the node enrolls again neither with
// the bootstrap secret it used nor with a join token, which is not spent
// by the refusal.
func TestE2ERevokedCallerRefusedOnEveryRoute(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	n := e.enrollNode(clock, testSecret, "ct410")
	opus, _ := e.mintAgent(n, "opus")
	if r := e.heartbeatAs(opus, "opus"); r.code != http.StatusOK {
		t.Fatalf("opus@ct410's heartbeat before the revocation: %s", r)
	}
	if r := e.do(e.freshClient(&opus), "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "opus"}); r.code != http.StatusOK {
		t.Fatalf("opus@ct410's session attach before the revocation: %s", r)
	}
	callers := []struct {
		name string
		cert tls.Certificate
	}{{"node ct410.mesh", n.cert}, {"agent opus@ct410", opus}}
	open := make([]*sseSub, len(callers))
	for i, c := range callers {
		s, code := e.trySubscribe("", &c.cert)
		if s == nil {
			t.Fatalf("%s's revocation stream before the revocation: %d", c.name, code)
		}
		open[i] = s
	}
	bystander := e.subscribe("")

	e.revokeName("ct410.mesh")

	for i, c := range callers {
		select {
		case <-open[i].done:
		case <-time.After(eventually.Bound):
			t.Errorf("%s's revocation stream still open %s after its revocation", c.name, eventually.Bound)
		}
	}
	if ev := bystander.next(); ev.event == "" {
		t.Errorf("the bystander's stream carried %+v, want the revocation", ev)
	}

	nodeCerts, agentCerts := e.certCount("ct410.mesh"), e.certCount("sage@ct410")
	agentCert := meshapi.AgentCertRequest{AgentID: "sage", CSR: csrPEM(t, "sage@ct410", e.newNodeKey())}
	for _, c := range callers {
		e.requireRevokedOnRoutes(c.name, c.cert, routeCall{"POST", meshapi.PathAgentCert, agentCert})
	}
	if got := e.certCount("ct410.mesh"); got != nodeCerts {
		t.Errorf("refusals recorded %d certificates of ct410.mesh", got-nodeCerts)
	}
	if got := e.certCount("sage@ct410"); got != agentCerts {
		t.Errorf("refusals recorded %d certificates of sage@ct410", got-agentCerts)
	}
	// opus@ct410 is evicted, not deleted: the revoked callers' DELETEs
	// changed nothing.
	lister := e.enrollNode(clock, testSecret, "ct411")
	if v, ok := e.agents(e.freshClient(&lister.cert), "").find("opus"); !ok || v.Status != "evicted" {
		t.Errorf("opus@ct410 is listed %+v (present %v), want evicted", v, ok)
	}

	// Enrolling again: with the bootstrap secret the node used, and with
	// a join token (refused before it is spent: the CA's dry run sees
	// the revoked identity).
	clock.refill()
	if r := e.enrollRaw(testSecret, "ct410", csrPEM(t, "ct410.mesh", e.newNodeKey())); r.code != http.StatusForbidden || r.reason() != "revoked" {
		t.Errorf("revoked ct410 enrolling with the bootstrap secret: %s, want 403 revoked", r)
	}
	tok := e.createToken("ct410", "1h")
	clock.refill()
	if r := e.enrollRaw(tok.Token, "ct410", csrPEM(t, "ct410.mesh", e.newNodeKey())); r.code != http.StatusForbidden || r.reason() != "revoked" {
		t.Errorf("revoked ct410 enrolling with a join token: %s, want 403 revoked", r)
	}
	if got := e.certCount("ct410.mesh"); got != nodeCerts {
		t.Errorf("refused enrollments recorded %d certificates of ct410.mesh", got-nodeCerts)
	}
	// Only an operator's reinstatement lets the node back, with the
	// token the refusal did not spend.
	if r := e.adminDo("POST", "/admin/reinstate", map[string]string{"identity": "ct410.mesh"}); r.code != http.StatusOK {
		t.Fatalf("reinstate ct410.mesh: %s", r)
	}
	clock.refill()
	if _, err := e.enrollClient().Enroll(context.Background(), tok.Token, "ct410", e.newNodeKey()); err != nil {
		t.Errorf("ct410 enrolling after its reinstatement with the join token refused before: %v", err)
	}
}

// TestE2ERevokedCertificateRefusedOnEveryRoute: revoking one agent
// certificate by serial (superseded: its key and identity stay good) ends
// the revocation stream it had open and refuses it on every route it
// could call, while the same agent's next certificate and its node are
// served.
func TestE2ERevokedCertificateRefusedOnEveryRoute(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	n := e.enrollNode(clock, testSecret, "ct420")
	old, _ := e.mintAgent(n, "opus")
	stream, code := e.trySubscribe("", &old)
	if stream == nil {
		t.Fatalf("opus@ct420's revocation stream before the revocation: %d", code)
	}
	// The serial names one certificate of the mesh CA, the only issuer
	// meshd revokes serials of; the CA resolves it in lower-case hex
	// without leading zeros (trust.NormalizeSerial), as serialOf gives it.
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": serialOf(old), "reason": "superseded"}); r.code != http.StatusOK {
		t.Fatalf("revoke %s: %s", serialOf(old), r)
	}
	select {
	case <-stream.done:
	case <-time.After(eventually.Bound):
		t.Errorf("the revoked certificate's revocation stream still open %s after its revocation", eventually.Bound)
	}
	e.requireRevokedOnRoutes("the revoked certificate", old)
	next, _ := e.mintAgent(n, "opus")
	if r := e.heartbeatAs(next, "opus"); r.code != http.StatusOK {
		t.Errorf("opus@ct420's next certificate: %s, want 200", r)
	}
	if r := e.do(e.freshClient(&next), "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "opus"}); r.code != http.StatusOK {
		t.Errorf("session attach with opus@ct420's next certificate: %s", r)
	}
}

// routeCall is one request to the agent port.
type routeCall struct {
	method, path string
	body         any
}

// requireRevokedOnRoutes fails the test unless cert, revoked, gets 403
// revoked on every authenticated route an agent opus or its node calls
// (heartbeat POST and HEAD, the agent list and delete, renewal, session
// attach), on extra, and on the revocation stream.
func (e *env) requireRevokedOnRoutes(name string, cert tls.Certificate, extra ...routeCall) {
	e.t.Helper()
	routes := append([]routeCall{
		{"POST", meshapi.PathHeartbeat, heartbeat("opus", 9000)},
		{"HEAD", meshapi.PathHeartbeat + "/opus", nil},
		{"GET", "/agents", nil},
		{"DELETE", "/agents/opus", nil},
		{"POST", meshapi.PathRenew, meshapi.RenewRequest{}}, // keeps the caller's key
		{"POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "opus"}},
	}, extra...)
	for _, rq := range routes {
		// A fresh connection each time: meshd closed the ones the
		// revoked certificate held.
		r := e.do(e.freshClient(&cert), rq.method, rq.path, rq.body)
		// HEAD carries no body, so no reason to read.
		if r.code != http.StatusForbidden || (rq.method != "HEAD" && r.reason() != "revoked") {
			e.t.Errorf("%s %s by %s: %s, want 403 revoked", rq.method, rq.path, name, r)
		}
	}
	if s, code := e.trySubscribe("", &cert); s != nil || code != http.StatusForbidden {
		e.t.Errorf("GET %s by %s: %d, want 403", meshapi.PathRevocationsWatch, name, code)
	}
}
