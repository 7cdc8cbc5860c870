package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The feed tests check that a running meshd follows changes it did not
// make itself, through the store's change feed: a CA rotation done by
// meshctl in another process, and registrations and revocations made on
// another meshd over the same store (a replica).

// TestE2EFeedRotationFollowedLive: meshctl prepares and then activates a
// new intermediate while meshd runs. meshd trusts the prepared one as soon
// as it is prepared, signs with it once it is active, keeps admitting the
// old one's certificates, and its CRLs cover both.
func TestE2EFeedRotationFollowedLive(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	n := e.enrollNode(clock, testSecret, "ct800")
	oldInt := e.ca.auth.ActiveIntermediate()
	old, oldB := e.mintAgent(n, "old")
	// Every agent certificate below is presented without its intermediate,
	// so only the intermediates meshd knows can make it verify.
	oldLeaf := feedLeafOnly(old)
	if r := e.do(e.freshClient(&oldLeaf), "POST", "/heartbeat", heartbeat("old", 9800)); r.code != http.StatusOK {
		t.Fatalf("heartbeat before the rotation: %s", r)
	}

	prepared := feedRotate(t, e, false)
	if prepared.Equal(oldInt) {
		t.Fatal("prepare returned the active intermediate")
	}
	// A leaf of the prepared intermediate, as an issuer that already
	// signs with it would present it.
	early := feedSignWith(t, e, prepared, oldB.Certificate, "early@ct800")
	feedEventually(t, "meshd admits a certificate of the prepared intermediate", func() (bool, string) {
		r := e.do(e.freshClient(&early), "POST", "/heartbeat", heartbeat("early", 9801))
		return r.code == http.StatusOK, r.String()
	})
	r := e.do(e.client(nil), "GET", "/bundle", nil)
	if r.code != http.StatusOK {
		t.Fatalf("GET /bundle after prepare: %s", r)
	}
	bundle, err := pemfile.ParseCerts(r.body)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*x509.Certificate{"root": e.ca.auth.Root(), "old intermediate": oldInt, "prepared intermediate": prepared} {
		if !slices.ContainsFunc(bundle, c.Equal) {
			t.Errorf("GET /bundle after prepare lacks the %s (%d certificates)", name, len(bundle))
		}
	}
	// Prepared is not active: meshd still signs with the old one.
	if _, b := e.mintAgent(n, "still-old"); !feedIssuedBy(b.Certificate, oldInt) {
		t.Errorf("after prepare, /agent-cert issued under key id %x, want the old intermediate's %x", b.Certificate.AuthorityKeyId, oldInt.SubjectKeyId)
	}

	active := feedRotate(t, e, true)
	if !active.Equal(prepared) {
		t.Fatalf("activate made %q active, want the prepared %q", active.Subject.CommonName, prepared.Subject.CommonName)
	}
	var fresh tls.Certificate
	feedEventually(t, "meshd signs with the activated intermediate", func() (bool, string) {
		c, b := e.mintAgent(n, "fresh")
		fresh = feedLeafOnly(c)
		return feedIssuedBy(b.Certificate, active) && len(b.Chain) > 0 && b.Chain[0].Equal(active),
			fmt.Sprintf("issued under key id %x with chain %q, want %x", b.Certificate.AuthorityKeyId, b.Chain[0].Subject.CommonName, active.SubjectKeyId)
	})
	if r := e.do(e.freshClient(&fresh), "POST", "/heartbeat", heartbeat("fresh", 9802)); r.code != http.StatusOK {
		t.Errorf("heartbeat of a certificate of the new intermediate: %s", r)
	}
	if r := e.do(e.freshClient(&oldLeaf), "POST", "/heartbeat", heartbeat("old", 9800)); r.code != http.StatusOK {
		t.Errorf("heartbeat of a certificate of the retired intermediate: %s", r)
	}
	if r := e.do(e.freshClient(&n.cert), "GET", "/health", nil); r.code != http.StatusOK {
		t.Errorf("the node's certificate of the retired intermediate on /health: %s", r)
	}

	// Revoked online after the rotation: meshd signs a CRL for each live
	// intermediate, each listing the serials it issued.
	e.revokeAdmin(serialOf(fresh))
	e.revokeAdmin(serialOf(old))
	data, err := os.ReadFile(e.ca.cfg.CRLPath())
	if err != nil {
		t.Fatal(err)
	}
	crls := feedParseCRLs(t, data)
	if len(crls) != 2 {
		t.Errorf("crl.pem holds %d CRLs, want 2 (the active and the retired intermediate)", len(crls))
	}
	for _, tc := range []struct {
		name          string
		issuer        *x509.Certificate
		listed, other *x509.Certificate
	}{
		{"new intermediate", active, fresh.Leaf, old.Leaf},
		{"retired intermediate", oldInt, old.Leaf, fresh.Leaf},
	} {
		i := slices.IndexFunc(crls, func(c *x509.RevocationList) bool { return c.CheckSignatureFrom(tc.issuer) == nil })
		if i < 0 {
			t.Errorf("crl.pem has no CRL signed by the %s", tc.name)
			continue
		}
		if !crlHas(crls[i], tc.listed) || crlHas(crls[i], tc.other) {
			t.Errorf("CRL of the %s: lists its revoked serial %v, lists the other intermediate's %v", tc.name, crlHas(crls[i], tc.listed), crlHas(crls[i], tc.other))
		}
	}
	// GET /crl (DER) is the active intermediate's.
	r = e.do(e.client(nil), "GET", "/crl", nil)
	if r.code != http.StatusOK {
		t.Fatalf("GET /crl: %s", r)
	}
	if crl, err := x509.ParseRevocationList(r.body); err != nil || crl.CheckSignatureFrom(active) != nil || !crlHas(crl, fresh.Leaf) {
		t.Errorf("GET /crl is not the new intermediate's CRL listing the revoked serial (parse error %v)", err)
	}
	for name, c := range map[string]tls.Certificate{"fresh": fresh, "old": oldLeaf} {
		if r := e.do(e.freshClient(&c), "POST", "/heartbeat", heartbeat(name, 9803)); r.code != http.StatusForbidden || r.reason() != "revoked" {
			t.Errorf("heartbeat of revoked %s: %s, want 403 revoked", name, r)
		}
	}
}

// TestE2EFeedSecondMeshdConverges: two meshd over one store and CA
// directory, as replicas. What an admin does on one (register and revoke
// an entity, revoke and reinstate an identity) takes effect on the other
// within a second.
func TestE2EFeedSecondMeshdConverges(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	b := newFeedReplica(t, e)
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n1")
	observer := e.client(&obsCert)
	listedOnB := func(id string) agentView {
		t.Helper()
		r := b.do(t, observer, "GET", "/agents", nil)
		if r.code != http.StatusOK {
			t.Fatalf("GET /agents on B: %s", r)
		}
		l := agentList{}
		if err := json.Unmarshal(r.body, &l); err != nil {
			t.Fatalf("GET /agents on B: %v: %s", err, r.body)
		}
		a, _ := l.find(id)
		return a
	}

	partner := newTestCA(t, "partner CA")
	partnerCert := partner.leaf(t, "partner-a")
	if r := b.do(t, e.freshClient(&partnerCert), "POST", "/heartbeat", heartbeat("partner-a", 9900)); r.code != http.StatusForbidden {
		t.Fatalf("B before the entity is registered: %s, want 403", r)
	}
	e.registerEntity("partner", partner) // on A
	feedEventually(t, "B admits the agent of an entity registered on A", func() (bool, string) {
		r := b.do(t, e.freshClient(&partnerCert), "POST", "/heartbeat", heartbeat("partner-a", 9900))
		return r.code == http.StatusOK, r.String()
	})
	if a := listedOnB("partner-a"); a.Status != "healthy" || a.EntityID != "partner" {
		t.Errorf("partner-a on B: %+v", a)
	}

	if r := e.adminDo("DELETE", "/admin/entities/partner", nil); r.code != http.StatusOK {
		t.Fatalf("DELETE /admin/entities/partner on A: %s", r)
	}
	feedEventually(t, "B refuses the agent of an entity revoked on A", func() (bool, string) {
		r, err := b.post(e.freshClient(&partnerCert), "/heartbeat", heartbeat("partner-a", 9900))
		if err != nil {
			return false, err.Error()
		}
		return r.code == http.StatusForbidden && r.reason() == "entity_revoked", r.String()
	})
	feedEventually(t, "B lists the agent of the revoked entity evicted", func() (bool, string) {
		a := listedOnB("partner-a")
		return a.Status == "evicted", a.Status
	})
	if r := b.do(t, e.freshClient(&partnerCert), "HEAD", "/heartbeat/partner-a", nil); r.code != http.StatusForbidden {
		t.Errorf("revoked entity's agent's HEAD on B: %d, want 403", r.code)
	}

	n := e.enrollNode(clock, testSecret, "ct700")
	opus, _ := e.mintAgent(n, "opus")
	if r := b.do(t, e.freshClient(&opus), "POST", "/heartbeat", heartbeat("opus", 9901)); r.code != http.StatusOK {
		t.Fatalf("opus registering on B: %s", r)
	}
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": "opus@ct700", "reason": "superseded"}); r.code != http.StatusOK {
		t.Fatalf("revoke opus@ct700 on A: %s", r)
	}
	feedEventually(t, "B refuses an identity revoked on A", func() (bool, string) {
		r, err := b.post(e.freshClient(&opus), "/heartbeat", heartbeat("opus", 9901))
		if err != nil {
			return false, err.Error()
		}
		return r.code == http.StatusForbidden && r.reason() == "revoked", r.String()
	})
	feedEventually(t, "B lists the agent of the revoked identity evicted", func() (bool, string) {
		a := listedOnB("opus")
		return a.Status == "evicted", a.Status
	})

	if r := e.adminDo("POST", "/admin/reinstate", map[string]string{"identity": "opus@ct700"}); r.code != http.StatusOK {
		t.Fatalf("reinstate opus@ct700 on A: %s", r)
	}
	renewed, _ := e.mintAgent(n, "opus") // from A, which has applied the reinstatement
	feedEventually(t, "B admits a new certificate of an identity reinstated on A", func() (bool, string) {
		r, err := b.post(e.freshClient(&renewed), "/heartbeat", heartbeat("opus", 9901))
		if err != nil {
			return false, err.Error()
		}
		return r.code == http.StatusOK, r.String()
	})
	if a := listedOnB("opus"); a.Status != "healthy" {
		t.Errorf("opus on B after reinstatement: %+v", a)
	}
	// Its certificates revoked with the identity stay revoked.
	if r := b.do(t, e.freshClient(&opus), "POST", "/heartbeat", heartbeat("opus", 9901)); r.code != http.StatusForbidden || r.reason() != "revoked" {
		t.Errorf("the certificate revoked with the identity, on B after reinstatement: %s, want 403 revoked", r)
	}
	b.checkLog(t)
}

// TestE2EFeedStartFailureClosesListeners: a meshd that cannot start
// leaves nothing open behind it, and does not disturb the meshd that
// holds what it could not get.
func TestE2EFeedStartFailureClosesListeners(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	ctx := context.Background()

	t.Run("admin socket in use", func(t *testing.T) {
		log := &logBuffer{}
		cfg := e.cfg
		cfg.Listen = "127.0.0.1:0"
		cfg.Logger = slog.New(slog.NewJSONHandler(log, nil))
		auth, err := ca.Open(ctx, e.ca.cfg, e.ca.st)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := meshd.New(ctx, cfg, e.ca.st, auth)
		if err != nil {
			t.Fatal(err)
		}
		err = srv.Start(ctx)
		if err == nil {
			srv.Shutdown(ctx)
			t.Fatal("a second meshd started on an admin socket in use")
		}
		if !strings.Contains(err.Error(), e.cfg.AdminSocket) || !strings.Contains(err.Error(), "in use") {
			t.Errorf("Start: %q, want it to name the socket %s as in use", err, e.cfg.AdminSocket)
		}
		addr := srv.AgentAddr()
		if addr == "" {
			t.Fatal("the failed meshd reports no agent port: it never opened one, so this test proves nothing")
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("the failed meshd's agent port %s still accepts connections", addr)
		}
		// The first meshd still has its admin API and its agent port.
		if r := e.adminDo("GET", "/health", nil); r.code != http.StatusOK {
			t.Errorf("A's admin socket after B failed to start: %s", r)
		}
		cert, _ := agentCert(t, e.ca.auth, "a1", "n1")
		if r := e.do(e.freshClient(&cert), "POST", "/heartbeat", heartbeat("a1", 9950)); r.code != http.StatusOK {
			t.Errorf("A's agent port after B failed to start: %s", r)
		}
		log.records(t)
	})

	// A caller that cleans up with Shutdown however Start went must not
	// take the socket away from the meshd that holds it.
	t.Run("Shutdown after a failed Start", func(t *testing.T) {
		cfg := e.cfg
		cfg.Listen = "127.0.0.1:0"
		cfg.Logger = slog.New(slog.NewJSONHandler(&logBuffer{}, nil))
		srv, err := meshd.New(ctx, cfg, e.ca.st, e.ca.auth)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx); err == nil {
			t.Fatal("a second meshd started on an admin socket in use")
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		if _, err := os.Stat(e.cfg.AdminSocket); err != nil {
			t.Errorf("A's admin socket after B's Shutdown: %v", err)
		}
		if c, err := net.DialTimeout("unix", e.cfg.AdminSocket, time.Second); err != nil {
			t.Errorf("A's admin socket after B's Shutdown: %v", err)
		} else {
			c.Close()
		}
	})

	// New starts watching the trust dir early; when a later step fails,
	// the watcher must stop with it.
	closed, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "closed.db"))
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	for _, tc := range []struct {
		name     string
		backends []string
		st       server.Store
	}{
		{"unknown backend after filestore", []string{"filestore", "nope"}, e.ca.st},
		{"filestore listed twice", []string{"filestore", "filestore"}, e.ca.st},
		{"store fails after filestore", []string{"filestore"}, closed},
	} {
		t.Run("New fails: "+tc.name, func(t *testing.T) {
			trustDir := filepath.Join(t.TempDir(), "trust")
			if err := os.MkdirAll(filepath.Join(trustDir, "entities"), 0o700); err != nil {
				t.Fatal(err)
			}
			before := feedWatchers()
			// A leaked watcher stops with this test at the latest.
			nctx, cancel := context.WithCancel(ctx)
			t.Cleanup(cancel)
			cfg := meshd.Config{Config: server.Config{Listen: "127.0.0.1:0", TLSMode: server.TLSOff,
				Logger: slog.New(slog.NewJSONHandler(&logBuffer{}, nil))}, Backends: tc.backends, TrustDir: trustDir}
			srv, err := meshd.New(nctx, cfg, tc.st, nil)
			if err == nil {
				srv.Shutdown(ctx)
				t.Fatal("New succeeded")
			}
			feedEventually(t, "the trust dir watcher stops when New fails ("+err.Error()+")", func() (bool, string) {
				var started []string
				for id := range feedWatchers() {
					if !before[id] {
						started = append(started, id)
					}
				}
				return len(started) == 0, fmt.Sprintf("goroutines %v, started by New, still watch the trust dir", started)
			})
		})
	}
}

// feedReplica is a second meshd over an env's store and CA directory.
type feedReplica struct {
	srv *meshd.Meshd
	log *logBuffer
}

func newFeedReplica(t *testing.T, e *env) *feedReplica {
	t.Helper()
	return newFeedReplicaOver(t, e, e.ca.st)
}

// newFeedReplicaOver is newFeedReplica whose meshd reads and writes the
// env's store through st.
func newFeedReplicaOver(t *testing.T, e *env, st server.Store) *feedReplica {
	t.Helper()
	ctx := context.Background()
	auth, err := ca.Open(ctx, e.ca.cfg, e.ca.st)
	if err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "meshd-b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	r := &feedReplica{log: &logBuffer{}}
	cfg := meshd.Config{
		Config: server.Config{
			Listen:      "127.0.0.1:0",
			AdminSocket: filepath.Join(sockDir, "admin.sock"),
			TLSMode:     e.cfg.TLSMode,
			CertFile:    e.cfg.CertFile,
			KeyFile:     e.cfg.KeyFile,
			Logger:      slog.New(slog.NewJSONHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
		RevocationPoll: 20 * time.Millisecond,
	}
	if r.srv, err = meshd.New(ctx, cfg, st, auth); err != nil {
		t.Fatal(err)
	}
	if err := r.srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Registered after the env's cleanup, so it runs first: B stops before
	// the store closes.
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := r.srv.Shutdown(sctx); err != nil {
			t.Errorf("B's shutdown: %v", err)
		}
	})
	return r
}

// do sends a request to the replica's agent port.
func (r *feedReplica) do(t testing.TB, c *http.Client, method, path string, body any) reply {
	t.Helper()
	return do(t, c, method, "https://"+r.srv.AgentAddr()+path, body)
}

// post sends a JSON body to the replica's agent port and returns a
// transport error instead of failing the test: B closes the connections of
// a caller whose trust it is revoking, and a request on one of them sees
// EOF while the revocation is applied; a wait asks again.
func (r *feedReplica) post(c *http.Client, path string, body any) (reply, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return reply{}, err
	}
	resp, err := c.Post("https://"+r.srv.AgentAddr()+path, "application/json", bytes.NewReader(data))
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{code: resp.StatusCode, body: got, header: resp.Header}, nil
}

// checkLog asserts that the replica logged JSON and no private key.
func (r *feedReplica) checkLog(t testing.TB) {
	t.Helper()
	r.log.records(t)
	if strings.Contains(r.log.String(), "PRIVATE KEY") {
		t.Errorf("B's log mentions a PRIVATE KEY")
	}
}

// feedRotate runs `meshctl ca rotate-intermediate prepare` (or activate)
// as meshctl does, with its own store handle and CA configuration, and
// returns the intermediate it made prepared (or active).
func feedRotate(t testing.TB, e *env, activate bool) *x509.Certificate {
	t.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, e.ca.cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := ca.Config{RootDir: e.ca.cfg.RootDir, Dir: e.ca.cfg.Dir}
	step := ca.PrepareIntermediate
	if activate {
		step = ca.ActivateIntermediate
	}
	c, err := step(ctx, cfg, st)
	if err != nil {
		t.Fatalf("rotate the intermediate (activate %v): %v", activate, err)
	}
	return c
}

// feedSignWith issues cn, with like's identity fields, under the
// intermediate inter with its key from the CA directory. The result
// carries no chain.
func feedSignWith(t testing.TB, e *env, inter, like *x509.Certificate, cn string) tls.Certificate {
	t.Helper()
	key, err := pemfile.ReadKey(filepath.Join(e.ca.cfg.Dir, "intermediate", "keys", hex.EncodeToString(inter.SubjectKeyId)+".key"))
	if err != nil {
		t.Fatal(err)
	}
	// like is agent@node: swap the agent in its CN and SPIFFE ID.
	oldAgent, _, _ := strings.Cut(like.Subject.CommonName, "@")
	newAgent, _, _ := strings.Cut(cn, "@")
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(t),
		Subject:      like.Subject,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     like.KeyUsage,
		ExtKeyUsage:  like.ExtKeyUsage,
		DNSNames:     like.DNSNames,
	}
	tmpl.Subject.CommonName = cn
	tmpl.Subject.Names = nil
	for _, u := range like.URIs {
		v := *u
		v.Path = strings.TrimSuffix(v.Path, "/"+oldAgent) + "/" + newAgent // spiffe://td/agent/<node>/<agent>
		tmpl.URIs = append(tmpl.URIs, &v)
	}
	leafKey := pkitest.NewKey(t)
	e.extraKeys = append(e.extraKeys, keyPEM(t, leafKey))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, leafKey.Public(), key.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: leafKey, Leaf: leaf}
}

// feedLeafOnly is c without its intermediates.
func feedLeafOnly(c tls.Certificate) tls.Certificate {
	leaf := c.Leaf
	if leaf == nil {
		leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	return tls.Certificate{Certificate: c.Certificate[:1], PrivateKey: c.PrivateKey, Leaf: leaf}
}

func feedIssuedBy(c, inter *x509.Certificate) bool {
	return slices.Equal(c.AuthorityKeyId, inter.SubjectKeyId) && c.CheckSignatureFrom(inter) == nil
}

// feedParseCRLs parses every PEM block of data as a CRL.
func feedParseCRLs(t testing.TB, data []byte) []*x509.RevocationList {
	t.Helper()
	var out []*x509.RevocationList
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return out
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			t.Fatalf("crl.pem block %q: %v", block.Type, err)
		}
		out = append(out, crl)
	}
}

// feedWatchers returns the ids of the goroutines filestore.New started
// (its trust dir watcher), whether or not they have begun to run.
func feedWatchers() map[string]bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	ids := map[string]bool{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "created by github.com/meshtrust/meshtrust/trust/filestore.New ") {
			id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
			ids[id] = true
		}
	}
	return ids
}

// feedEventually is eventually, naming what cond saw last when it fails.
func feedEventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("%s: last seen: %s", what, last)
		}
	}()
	eventually.True(t, what, func() bool {
		ok, got := cond()
		last = got
		return ok
	})
}
