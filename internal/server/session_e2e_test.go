package server_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// TestE2ESessionAttach: an agent attaches a session over mTLS with its
// certificate; another service verifies the token with meshd's JWKS
// alone, accepts it only with that certificate, and keeps accepting it
// across a rotation of meshd's signing key.
func TestE2ESessionAttach(t *testing.T) {
	e := newEnv(t, envOptions{mode: "strict"})
	opus, _ := agentCert(t, e.ca.auth, "opus", "ct111")
	twin, _ := agentCert(t, e.ca.auth, "opus", "ct111") // the same identity, another certificate
	c := e.client(&opus)

	if r := e.do(c, "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "sonnet"}); r.code != 403 || r.reason() != "identity_mismatch" {
		t.Fatalf("attach as another agent: %s", r)
	}
	if r := e.do(c, "POST", meshapi.PathSessionAttach, "nonsense"); r.code != 400 {
		t.Fatalf("attach with a bad body: %s", r)
	}
	r := e.do(c, "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "opus"})
	if r.code != 200 {
		t.Fatalf("attach: %s", r)
	}
	att := r.json(t)
	tok, _ := att["token"].(string)
	if tok == "" || att["identity"] != "opus@ct111" || att["token_type"] != "Bearer" || att["session_id"] == "" {
		t.Fatalf("attach answer: %s", r)
	}

	// The keys live in the CA dir, private.
	keyDir := filepath.Join(e.ca.cfg.Dir, "session-keys")
	if fi, err := os.Stat(keyDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("session key dir: %v %v", fi, err)
	}

	// Another service, trusting the mesh CA and meshd's JWKS.
	jwks := e.do(e.freshClient(nil), "GET", meshapi.PathSessionJWKS, nil)
	if jwks.code != 200 {
		t.Fatalf("jwks: %s", jwks)
	}
	keys, err := meshauth.ParseJWKS(jwks.body)
	if err != nil {
		t.Fatal(err)
	}
	revs := &trust.RevocationSet{}
	chain := trust.NewChain(revs, []trust.Backend{trust.NewLocalCA(e.ca.auth.TrustDomain(), e.ca.auth.Root(), e.ca.auth.Intermediates())})
	a, err := meshauth.New(meshauth.Config{Chain: chain, Authorizer: meshauth.AuthorizeAny(), Tokens: keys})
	if err != nil {
		t.Fatal(err)
	}
	svc := httptest.NewUnstartedServer(a.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := meshauth.FromContext(r.Context())
		if caller.Session == nil {
			fmt.Fprint(w, caller.Name)
			return
		}
		fmt.Fprint(w, caller.Name+" "+caller.Session.ID)
	})))
	svc.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	a.Serve(svc.Config)
	svc.StartTLS()
	defer svc.Close()
	call := func(cert *tls.Certificate, token string) (int, string) {
		tr := svc.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		req, _ := http.NewRequest("GET", svc.URL, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := call(&opus, tok); code != 200 || body != "opus@ct111 "+att["session_id"].(string) {
		t.Fatalf("the token on its certificate: %d %s", code, body)
	}
	if code, body := call(&twin, tok); code != 401 || !strings.Contains(body, meshauth.ReasonTokenBinding) {
		t.Fatalf("the token on another certificate of the same identity: %d %s", code, body)
	}

	// Rotation: the previous key stays in the JWKS for the overlap.
	rot := e.adminDo("POST", meshapi.PathAdminSessionKeys+"/rotate", nil)
	if rot.code != 200 {
		t.Fatalf("rotate: %s", rot)
	}
	jwks = e.do(e.freshClient(nil), "GET", meshapi.PathSessionJWKS, nil)
	if strings.Count(string(jwks.body), `"kid"`) != 2 || !strings.Contains(string(jwks.body), rot.json(t)["key_id"].(string)) {
		t.Fatalf("jwks after rotation: %s", jwks)
	}
	if err := keys.Update(jwks.body); err != nil {
		t.Fatal(err)
	}
	if code, _ := call(&opus, tok); code != 200 {
		t.Fatalf("the token of the previous key during the overlap: %d", code)
	}
	fresh := e.do(c, "POST", meshapi.PathSessionAttach, map[string]string{"agent_id": "opus"}).json(t)["token"].(string)
	if code, _ := call(&opus, fresh); code != 200 {
		t.Fatalf("a token of the new key: %d", code)
	}

	// Revoking the identity ends the session everywhere the revocation
	// reaches (here the service's own set, as trust/watch would fill it).
	revs.AddIdentity(trust.Revoked{Identity: "opus@ct111"})
	if code, body := call(&opus, fresh); code != 401 || !strings.Contains(body, `"reason":"revoked"`) {
		t.Fatalf("after revocation: %d %s", code, body)
	}
	if strings.Contains(e.log.String(), tok) || strings.Contains(e.log.String(), fresh) {
		t.Fatal("meshd's log holds a session token")
	}
}
