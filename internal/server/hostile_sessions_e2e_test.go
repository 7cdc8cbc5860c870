package server_test

import (
	"net/http"
	"testing"

	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// The hostile-input suite for sessions: POST /session/attach and the
// tokens it mints, attacked over real TLS on loopback.

// TestHostileSessionAttachPartnerCN: a partner CA issues a certificate
// with CN "opus" and asks /session/attach for agent "opus". The registry
// would never let that certificate heartbeat as opus (the partner's
// namespace, and opus's first claim by the mesh CA), so no session is
// minted either; the mesh's own opus still gets one.
func TestHostileSessionAttachPartnerCN(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	partner, claimer := newTestCA(t, "partner-corp CA"), newTestCA(t, "claimer CA")
	e.registerEntity("partner-corp", partner)
	// claimer's namespace is first-claim: only an id someone else holds
	// stops it.
	if r := e.adminDo("POST", "/admin/entities", map[string]any{"name": "claimer", "ca_cert": string(claimer.pem), "namespace": "first-claim"}); r.code != http.StatusCreated {
		t.Fatalf("register claimer: %s", r)
	}
	e.extraKeys = append(e.extraKeys, claimer.keyPEM)

	fake := partner.leaf(t, "opus")
	fc := e.client(&fake)
	attach := func(c *http.Client, id string) reply {
		return e.do(c, "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": id})
	}
	// Before the mesh's opus registers: outside partner-corp's namespace.
	if r := attach(fc, "opus"); r.code != http.StatusForbidden || r.reason() != "outside_namespace" {
		t.Fatalf("partner CN opus attaching as opus: %s, want 403 outside_namespace", r)
	}

	opus, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	oc := e.client(&opus)
	if r := e.do(oc, "POST", "/heartbeat", heartbeat("opus", 9100)); r.code != http.StatusOK {
		t.Fatalf("opus heartbeat: %s", r)
	}
	if r := attach(fc, "opus"); r.code != http.StatusForbidden || r.reason() != "outside_namespace" {
		t.Errorf("partner CN opus attaching as a registered opus: %s, want 403 outside_namespace", r)
	}
	// A first-claim partner is stopped by the mesh CA's claim.
	grab := claimer.leaf(t, "opus")
	if r := attach(e.client(&grab), "opus"); r.code != http.StatusForbidden || r.reason() != "owned_by_other_entity" {
		t.Errorf("first-claim partner CN opus attaching as opus: %s, want 403 owned_by_other_entity", r)
	}
	// Inside its namespace the partner is served, as its heartbeat is.
	own := partner.leaf(t, "partner-corp-a")
	if r := attach(e.client(&own), "partner-corp-a"); r.code != http.StatusOK {
		t.Errorf("partner attaching inside its namespace: %s, want 200", r)
	}
	// The mesh's opus is still served, and its agent untouched.
	if r := attach(oc, "opus"); r.code != http.StatusOK || r.json(t)["identity"] != "opus@ct111" {
		t.Errorf("opus attaching: %s, want 200 as opus@ct111", r)
	}
	if a, ok := e.agents(oc, "").find("opus"); !ok || a.Owner != "opus@ct111" || a.Status != "healthy" {
		t.Errorf("opus after the attempts: %+v", a)
	}
}
