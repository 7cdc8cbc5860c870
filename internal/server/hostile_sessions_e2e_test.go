package server_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
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

// forgeToken signs claims with meshd's current session key (read from its
// key directory, as only an insider could) under JWT header typ: a token
// whose signature verifies but whose type or audience is not a session
// for the verifier.
func forgeToken(t *testing.T, keyDir, typ string, claims map[string]any) string {
	t.Helper()
	var st struct{ Current string }
	data, err := os.ReadFile(filepath.Join(keyDir, "keys.json"))
	if err != nil || json.Unmarshal(data, &st) != nil {
		t.Fatalf("session keys.json: %v", err)
	}
	key, err := pemfile.ReadKey(filepath.Join(keyDir, st.Current+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return pkitest.SignJWT(t, key, st.Current, typ, claims)
}

// TestHostileSessionTokens: meshd's agent port, and a service verifying
// from meshd's JWKS, refuse a token of another type or audience even
// when meshd's own key signed it, and the tokens of a rotated-out key an
// operator dropped: meshd at once, even on a connection that already
// used the token, the service once it fetches the JWKS again.
func TestHostileSessionTokens(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	opus, leaf := agentCert(t, e.ca.auth, "opus", "ct111")
	c := e.client(&opus)
	attach := func() string {
		t.Helper()
		r := e.do(c, "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "opus"})
		if r.code != http.StatusOK {
			t.Fatalf("attach: %s", r)
		}
		return r.json(t)["token"].(string)
	}
	withToken := func(c *http.Client, url, tok string) reply {
		t.Helper()
		return doHeader(t, c, "GET", url, http.Header{"Authorization": {"Bearer " + tok}}, nil)
	}
	agents := e.baseURL() + "/agents"
	tok := attach()
	if r := withToken(c, agents, tok); r.code != http.StatusOK {
		t.Fatalf("meshd with its own token: %s", r)
	}

	keyDir := filepath.Join(e.ca.cfg.Dir, "session-keys")
	now := time.Now()
	claims := func(aud any) map[string]any {
		c := map[string]any{"iss": meshauth.DefaultSessionIssuer, "sub": "opus@ct111", "sid": "forged",
			"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(5 * time.Minute).Unix(),
			"cnf": map[string]string{"x5t#S256": meshauth.Thumbprint(leaf.Raw)}}
		if aud != nil {
			c["aud"] = aud
		}
		return c
	}
	for _, tc := range []struct {
		name, typ string
		aud       any
		reason    string
	}{
		{"a plain JWT", "JWT", meshauth.DefaultSessionAudience, meshauth.ReasonTokenInvalid},
		{"an access token", "at+jwt", meshauth.DefaultSessionAudience, meshauth.ReasonTokenInvalid},
		{"another audience", meshauth.SessionTokenType, "billing", meshauth.ReasonTokenAudience},
		{"no audience", meshauth.SessionTokenType, nil, meshauth.ReasonTokenAudience},
	} {
		forged := forgeToken(t, keyDir, tc.typ, claims(tc.aud))
		if r := withToken(c, agents, forged); r.code != http.StatusForbidden || r.reason() != tc.reason {
			t.Errorf("%s signed by meshd's key: %s, want 403 %s", tc.name, r, tc.reason)
		}
	}

	// A service of audience "billing", verifying from meshd's JWKS,
	// refuses meshd's tokens for the mesh audience.
	keys, err := meshauth.ParseJWKS(e.do(e.freshClient(nil), "GET", meshapi.PathSessionJWKS, nil).body)
	if err != nil {
		t.Fatal(err)
	}
	chain := trust.NewChain(&trust.RevocationSet{}, []trust.Backend{trust.NewLocalCA(e.ca.auth.TrustDomain(), e.ca.auth.Root(), e.ca.auth.Intermediates())})
	svcURL := func(audience string) string {
		a, err := meshauth.New(meshauth.Config{Chain: chain, Authorizer: meshauth.AuthorizeAny(), Tokens: keys, TokenAudience: audience})
		if err != nil {
			t.Fatal(err)
		}
		svc := httptest.NewUnstartedServer(a.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			caller, _ := meshauth.FromContext(r.Context())
			if caller.Session == nil {
				http.Error(w, "no session", http.StatusTeapot)
			}
		})))
		svc.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
		a.Serve(svc.Config)
		svc.StartTLS()
		t.Cleanup(svc.Close)
		return svc.URL
	}
	meshSvc, billing := svcURL(""), svcURL("billing")
	svcClient := e.client(&opus)
	svcClient.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify = true // httptest's own certificate
	if r := withToken(svcClient, meshSvc, tok); r.code != http.StatusOK {
		t.Fatalf("a mesh-audience service with meshd's token: %s", r)
	}
	if r := withToken(svcClient, billing, tok); r.code != http.StatusUnauthorized || !strings.Contains(string(r.body), meshauth.ReasonTokenAudience) {
		t.Errorf("the billing service with a mesh-audience token: %s, want 401 %s", r, meshauth.ReasonTokenAudience)
	}

	// Rotate, then drop the rotated-out key: meshd refuses its token at
	// once on the connection that used it; the service once it updates.
	rot := e.adminDo("POST", meshapi.PathAdminSessionKeys+"/rotate", nil)
	if rot.code != http.StatusOK {
		t.Fatalf("rotate: %s", rot)
	}
	if r := withToken(c, agents, tok); r.code != http.StatusOK {
		t.Fatalf("the rotated-out key's token in its overlap: %s", r)
	}
	list := e.adminDo("GET", meshapi.PathAdminSessionKeys, nil)
	var ks meshapi.SessionKeysResponse
	if list.code != http.StatusOK || json.Unmarshal(list.body, &ks) != nil || len(ks.Keys) != 2 || !ks.Keys[0].Current || ks.Keys[1].Current {
		t.Fatalf("session keys after a rotation: %s", list)
	}
	old, current := ks.Keys[1].KeyID, ks.Keys[0].KeyID
	if r := e.adminDo("DELETE", meshapi.PathAdminSessionKeys+"/"+current, nil); r.code != http.StatusConflict {
		t.Errorf("dropping the current key: %s, want 409", r)
	}
	if r := e.adminDo("DELETE", meshapi.PathAdminSessionKeys+"/no-such-key", nil); r.code != http.StatusNotFound {
		t.Errorf("dropping an unknown key: %s, want 404", r)
	}
	if r := withToken(c, agents, tok); r.code != http.StatusOK {
		t.Fatalf("refused drops changed nothing, yet the token is refused: %s", r)
	}
	if r := e.adminDo("DELETE", meshapi.PathAdminSessionKeys+"/"+old, nil); r.code != http.StatusOK {
		t.Fatalf("drop the rotated-out key: %s", r)
	}
	if r := withToken(c, agents, tok); r.code != http.StatusForbidden || r.reason() != meshauth.ReasonTokenInvalid {
		t.Errorf("meshd with a dropped key's token: %s, want 403 %s", r, meshauth.ReasonTokenInvalid)
	}
	if r := withToken(svcClient, meshSvc, tok); r.code != http.StatusOK {
		t.Fatalf("the service before it fetches the JWKS again: %s", r)
	}
	jwks := e.do(e.freshClient(nil), "GET", meshapi.PathSessionJWKS, nil)
	if strings.Contains(string(jwks.body), old) {
		t.Fatalf("the JWKS still lists the dropped key: %s", jwks)
	}
	if err := keys.Update(jwks.body); err != nil {
		t.Fatal(err)
	}
	if r := withToken(svcClient, meshSvc, tok); r.code != http.StatusUnauthorized || !strings.Contains(string(r.body), meshauth.ReasonTokenInvalid) {
		t.Errorf("the service with a dropped key's token after updating: %s, want 401 %s", r, meshauth.ReasonTokenInvalid)
	}
	fresh := attach()
	if r := withToken(c, agents, fresh); r.code != http.StatusOK {
		t.Errorf("a token of the current key: %s", r)
	}
	if r := withToken(svcClient, meshSvc, fresh); r.code != http.StatusOK {
		t.Errorf("the service with a token of the current key: %s", r)
	}
	if a := e.audited(0, "session_key.drop", store.OutcomeOK, ""); len(a) != 1 || a[0].Identity != "session-key:"+old {
		t.Errorf("audit entries of the drop: %+v, want one naming session-key:%s", a, old)
	}
}
