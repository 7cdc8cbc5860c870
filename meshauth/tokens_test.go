package meshauth_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// sessionWorld serves an attach route (mint for the verified caller) and
// whoami behind one Auth that verifies the tokens it mints.
type sessionWorld struct {
	*world
	sessions *meshauth.Sessions
	srv      string
	auth     *meshauth.Auth
	log      *bytes.Buffer
	client   func(*tlsCert) *http.Client
}

func newSessionWorld(t *testing.T) *sessionWorld {
	w := newWorld(t)
	s, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: filepath.Join(t.TempDir(), "session-keys"), Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	a := newAuth(t, w, meshauth.Config{Authorizer: meshauth.AuthorizeAny(), Tokens: s, DecisionLog: slog.New(slog.NewTextHandler(&log, nil))})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /attach", func(rw http.ResponseWriter, r *http.Request) {
		c, _ := meshauth.FromContext(r.Context())
		tok, _, err := s.Mint(c)
		if err != nil {
			http.Error(rw, err.Error(), 400)
			return
		}
		rw.Write([]byte(tok))
	})
	mux.Handle("/", whoami)
	srv := serve(t, a, a.Handler(mux))
	return &sessionWorld{world: w, sessions: s, srv: srv.URL, auth: a, log: &log, client: func(c *tlsCert) *http.Client { return client(srv, c) }}
}

func (sw *sessionWorld) attach(t *testing.T, c *http.Client) string {
	t.Helper()
	r := do(t, c, "POST", sw.srv+"/attach", "")
	if r.code != 200 {
		t.Fatalf("attach: %d %s", r.code, r.body)
	}
	return r.body
}

func (sw *sessionWorld) with(t *testing.T, c *http.Client, token string) response {
	t.Helper()
	return do(t, c, "GET", sw.srv+"/x", "", "Authorization", "Bearer "+token)
}

func wantRefusal(t *testing.T, r response, code int, reason string) {
	t.Helper()
	if r.code != code || !strings.Contains(r.body, `"reason":"`+reason+`"`) {
		t.Fatalf("got %d %s, want %d %s", r.code, r.body, code, reason)
	}
}

func TestSessionToken(t *testing.T) {
	sw := newSessionWorld(t)
	opus, sonnet := agentOf(t, sw.mesh, "opus", "ct111"), agentOf(t, sw.mesh, "sonnet", "ct111")
	co := sw.client(&opus)
	tok := sw.attach(t, co)
	r := sw.with(t, co, tok)
	if r.code != 200 || !strings.HasPrefix(r.body, "opus@ct111|") || strings.HasSuffix(r.body, "|") {
		t.Fatalf("token on its certificate: %d %s", r.code, r.body)
	}
	if again := sw.with(t, sw.client(&opus), tok); again.code != 200 || again.body != r.body {
		t.Fatalf("token on a new connection of its certificate: %d %s", again.code, again.body)
	}
	t.Run("replay on another certificate", func(t *testing.T) {
		r := sw.with(t, sw.client(&sonnet), tok)
		wantRefusal(t, r, 401, meshauth.ReasonTokenBinding)
		if r.header.Get("WWW-Authenticate") == "" {
			t.Error("no WWW-Authenticate on a token refusal")
		}
	})
	t.Run("another certificate of the same identity", func(t *testing.T) {
		twin := agentOf(t, sw.mesh, "opus", "ct111")
		wantRefusal(t, sw.with(t, sw.client(&twin), tok), 401, meshauth.ReasonTokenBinding)
	})
	t.Run("without a certificate", func(t *testing.T) {
		wantRefusal(t, sw.with(t, sw.client(nil), tok), 401, meshauth.ReasonTokenNoCert)
	})
	t.Run("tampered", func(t *testing.T) {
		parts := strings.Split(tok, ".")
		wantRefusal(t, sw.with(t, co, parts[0]+"."+parts[1]+"x."+parts[2]), 401, meshauth.ReasonTokenInvalid)
		wantRefusal(t, sw.with(t, co, "not-a-token"), 401, meshauth.ReasonTokenInvalid)
	})
	t.Run("expired", func(t *testing.T) {
		sw.clock.Advance(meshauth.DefaultSessionTTL + time.Second)
		wantRefusal(t, sw.with(t, co, tok), 401, meshauth.ReasonTokenExpired)
		if r := do(t, co, "GET", sw.srv+"/x", ""); r.code != 200 {
			t.Fatalf("the certificate alone after its token expired: %d", r.code)
		}
	})
	if strings.Contains(sw.log.String(), tok) || strings.Contains(sw.log.String(), strings.Split(tok, ".")[2]) {
		t.Fatalf("the decision log holds a token:\n%s", sw.log.String())
	}
	if !strings.Contains(sw.log.String(), "session=") {
		t.Fatalf("the decision log does not name sessions:\n%s", sw.log.String())
	}
}

func TestSessionEndsWithRevocation(t *testing.T) {
	for _, tt := range []struct {
		name   string
		revoke func(w *world, c *tlsCert)
		reason string
	}{
		{"entity", func(w *world, _ *tlsCert) { w.revs.AddEntity(trust.Revoked{Entity: "partner-corp", At: time.Now()}) }, trust.ReasonEntityRevoked},
		{"identity", func(w *world, _ *tlsCert) { w.revs.AddIdentity(trust.Revoked{Identity: "bob@ct200", At: time.Now()}) }, trust.ReasonRevoked},
		{"node", func(w *world, _ *tlsCert) { w.revs.AddIdentity(trust.Revoked{Identity: "ct200.mesh", At: time.Now()}) }, trust.ReasonRevoked},
		{"certificate", func(w *world, c *tlsCert) {
			w.revs.AddSerial(trust.Revoked{Serial: c.Leaf.SerialNumber.Text(16), At: time.Now()})
		}, trust.ReasonRevoked},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sw := newSessionWorld(t)
			bob := leafOf(t, sw.partner, "bob@ct200", "") // a partner's agent, named in the mesh's way
			c := sw.client(&bob)
			tok := sw.attach(t, c)
			if r := sw.with(t, c, tok); r.code != 200 || !strings.Contains(r.body, "partner-corp") {
				t.Fatalf("before: %d %s", r.code, r.body)
			}
			tt.revoke(sw.world, &bob)
			wantRefusal(t, sw.with(t, c, tok), 401, tt.reason)
		})
	}
}

func TestSessionKeyRotation(t *testing.T) {
	sw := newSessionWorld(t)
	opus := agentOf(t, sw.mesh, "opus", "ct111")
	c := sw.client(&opus)
	old := sw.attach(t, c)
	sw.clock.Advance(5 * time.Minute)
	kid, err := sw.sessions.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if r := sw.with(t, c, old); r.code != 200 {
		t.Fatalf("a token of the previous key during the overlap: %d %s", r.code, r.body)
	}
	fresh := sw.attach(t, c)
	if r := sw.with(t, c, fresh); r.code != 200 {
		t.Fatalf("a token of the new key: %d %s", r.code, r.body)
	}
	jwks, _ := json.Marshal(sw.sessions.JWKS())
	if n := strings.Count(string(jwks), `"kid"`); n != 2 || !strings.Contains(string(jwks), kid) || strings.Contains(string(jwks), `"d"`) {
		t.Fatalf("JWKS during the overlap: %s", jwks)
	}

	// Another service verifies with the JWKS alone.
	ks, err := meshauth.ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	other := newAuth(t, sw.world, meshauth.Config{Authorizer: meshauth.AuthorizeAny(), Tokens: ks})
	osrv := serve(t, other, other.Handler(whoami))
	if r := do(t, client(osrv, &opus), "GET", osrv.URL+"/", "", "Authorization", "Bearer "+fresh); r.code != 200 || strings.HasSuffix(r.body, "|") {
		t.Fatalf("another service with the JWKS: %d %s", r.code, r.body)
	}

	// The keys persist; a second rotation drops the first key at once.
	reopened, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: sw.sessionsDir(t), Now: sw.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if j, _ := json.Marshal(reopened.JWKS()); string(j) != string(jwks) {
		t.Fatalf("reopened keys differ:\n%s\n%s", j, jwks)
	}
	if _, err := sw.sessions.Rotate(); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, sw.with(t, c, old), 401, meshauth.ReasonTokenInvalid)
	if r := sw.with(t, c, fresh); r.code != 200 {
		t.Fatalf("the token of the now previous key: %d %s", r.code, r.body)
	}
	sw.clock.Advance(meshauth.DefaultSessionTTL + time.Second)
	if j, _ := json.Marshal(sw.sessions.JWKS()); strings.Count(string(j), `"kid"`) != 1 {
		t.Fatalf("JWKS after the overlap: %s", j)
	}
}

func (sw *sessionWorld) sessionsDir(t *testing.T) string {
	t.Helper()
	// The only session-keys dir under the test's temp dirs.
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(t.TempDir()), "*", "session-keys"))
	if len(matches) != 1 {
		t.Fatalf("session-keys dirs: %v", matches)
	}
	dir := matches[0]
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("session key dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	keys, _ := filepath.Glob(filepath.Join(dir, "*.key"))
	for _, k := range keys {
		if fi, _ := os.Stat(k); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", k, fi.Mode().Perm())
		}
	}
	return dir
}

// TestSessionKeyDrop: an operator drops a rotated-out key before its
// overlap ends; its tokens are refused at once, on a connection that
// already used one too, after a restart, and by a service whose KeySet
// is updated from the JWKS. The current key and unknown ids are refused
// and change nothing.
func TestSessionKeyDrop(t *testing.T) {
	sw := newSessionWorld(t)
	opus := agentOf(t, sw.mesh, "opus", "ct111")
	c := sw.client(&opus)
	old := sw.attach(t, c)
	ks, err := meshauth.ParseJWKS(mustJSON(t, sw.sessions.JWKS()))
	if err != nil {
		t.Fatal(err)
	}
	other := newAuth(t, sw.world, meshauth.Config{Authorizer: meshauth.AuthorizeAny(), Tokens: ks})
	osrv := serve(t, other, other.Handler(whoami))
	oc := client(osrv, &opus)
	viaJWKS := func(tok string) response {
		return do(t, oc, "GET", osrv.URL+"/", "", "Authorization", "Bearer "+tok)
	}
	if _, err := sw.sessions.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := ks.Update(mustJSON(t, sw.sessions.JWKS())); err != nil {
		t.Fatal(err)
	}
	keys := sw.sessions.Keys()
	if len(keys) != 2 || !keys[0].Current || keys[1].Current || keys[1].Until.IsZero() {
		t.Fatalf("keys after a rotation: %+v", keys)
	}
	current, retired := keys[0].ID, keys[1].ID
	if r := sw.with(t, c, old); r.code != 200 {
		t.Fatalf("the retired key's token in its overlap: %d %s", r.code, r.body)
	}
	if r := viaJWKS(old); r.code != 200 {
		t.Fatalf("the retired key's token via the JWKS in its overlap: %d %s", r.code, r.body)
	}
	if err := sw.sessions.Drop(current); !errors.Is(err, meshauth.ErrKeyCurrent) {
		t.Fatalf("drop the current key: %v, want ErrKeyCurrent", err)
	}
	if err := sw.sessions.Drop("no-such-key"); !errors.Is(err, meshauth.ErrKeyUnknown) {
		t.Fatalf("drop an unknown key: %v, want ErrKeyUnknown", err)
	}
	if r := sw.with(t, c, old); r.code != 200 || len(sw.sessions.Keys()) != 2 {
		t.Fatalf("refused drops changed something: %d %s, keys %+v", r.code, r.body, sw.sessions.Keys())
	}

	if err := sw.sessions.Drop(retired); err != nil {
		t.Fatal(err)
	}
	// On the very connection that used it (its verification cached).
	wantRefusal(t, sw.with(t, c, old), 401, meshauth.ReasonTokenInvalid)
	wantRefusal(t, sw.with(t, sw.client(&opus), old), 401, meshauth.ReasonTokenInvalid)
	if err := sw.sessions.Drop(retired); !errors.Is(err, meshauth.ErrKeyUnknown) {
		t.Fatalf("drop a dropped key again: %v, want ErrKeyUnknown", err)
	}
	jwks := mustJSON(t, sw.sessions.JWKS())
	if strings.Contains(string(jwks), retired) || len(sw.sessions.Keys()) != 1 {
		t.Fatalf("after the drop: JWKS %s, keys %+v", jwks, sw.sessions.Keys())
	}
	dir := sw.sessionsDir(t)
	if _, err := os.Stat(filepath.Join(dir, retired+".key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dropped key's file: %v, want it deleted", err)
	}
	reopened, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: dir, Now: sw.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := reopened.VerificationKey(retired, sw.clock.Now()); ok {
		t.Fatal("the dropped key is accepted again after a restart")
	}

	// The service refuses it once it fetches the JWKS again.
	if r := viaJWKS(old); r.code != 200 {
		t.Fatalf("the service before its update: %d %s", r.code, r.body)
	}
	if err := ks.Update(jwks); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, viaJWKS(old), 401, meshauth.ReasonTokenInvalid)
	fresh := sw.attach(t, c)
	if r := viaJWKS(fresh); r.code != 200 {
		t.Fatalf("a token of the current key via the JWKS: %d %s", r.code, r.body)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
