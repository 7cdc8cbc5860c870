package server_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/watch"
)

// testSecret is the bootstrap secret of the enrollment tests; distinctive
// enough that finding it in a log cannot be a coincidence.
const testSecret = "bootstrap-Qx7Z9pLmN4vR2tY8-secret"

// fakeClock is meshd's clock in the enrollment tests: the real time plus
// an offset the test moves, so that join tokens expire and the enrollment
// rate limit refills without sleeping.
type fakeClock struct{ off atomic.Int64 }

func (c *fakeClock) Now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

func (c *fakeClock) advance(d time.Duration) { c.off.Add(int64(d)) }

// refill moves the clock past the time the enrollment rate limit takes to
// refill its whole burst (5 attempts, one per 12 s).
func (c *fakeClock) refill() { c.advance(time.Minute) }

// enrollOptions configures meshd for an enrollment test.
type enrollOptions struct {
	mode   server.TLSMode
	legacy bool // LegacySecretCompat
}

// newEnrollEnv starts meshd with the bootstrap secret testSecret and a
// fake clock.
func newEnrollEnv(t testing.TB, o enrollOptions) (*env, *fakeClock) {
	t.Helper()
	clock := &fakeClock{}
	e := newEnv(t, envOptions{mode: o.mode, configure: func(c *meshd.Config) {
		c.BootstrapSecret = testSecret
		c.LegacySecretCompat = o.legacy
		c.Now = clock.Now
	}})
	return e, clock
}

// enrollClient is the client a node runs, trusting the mesh root.
func (e *env) enrollClient() *enroll.Client {
	return &enroll.Client{Server: e.baseURL(), Roots: e.roots}
}

// newNodeKey generates a key as a node does, and has the log check look
// for it.
func (e *env) newNodeKey() crypto.Signer {
	e.t.Helper()
	key, err := enroll.GenerateKey()
	if err != nil {
		e.t.Fatal(err)
	}
	e.extraKeys = append(e.extraKeys, keyPEM(e.t, key))
	return key
}

// node is an enrolled node as the tests hold it.
type node struct {
	id     string
	key    crypto.Signer
	bundle *enroll.Bundle
	cert   tls.Certificate
}

// enrollNode enrolls id with cred through the enrollment client, after
// refilling the rate limit.
func (e *env) enrollNode(clock *fakeClock, cred, id string) *node {
	e.t.Helper()
	clock.refill()
	key := e.newNodeKey()
	b, err := e.enrollClient().Enroll(context.Background(), cred, id, key)
	if err != nil {
		e.t.Fatalf("enroll %s: %v", id, err)
	}
	return &node{id: id, key: key, bundle: b, cert: b.TLSCertificate(key)}
}

// mintAgent obtains agent's certificate over mTLS with n's certificate.
func (e *env) mintAgent(n *node, agent string) (tls.Certificate, *enroll.Bundle) {
	e.t.Helper()
	key := e.newNodeKey()
	b, err := e.enrollClient().AgentCert(context.Background(), n.cert, agent, key)
	if err != nil {
		e.t.Fatalf("agent-cert %s@%s: %v", agent, n.id, err)
	}
	return b.TLSCertificate(key), b
}

// sameKey reports whether a and b are the same public key.
func sameKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// csrPEM is a certificate request for cn signed with key.
func csrPEM(t testing.TB, cn string, key crypto.Signer) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func bearerHeader(cred string) http.Header {
	return http.Header{"Authorization": {"Bearer " + cred}}
}

// enrollRaw posts {node_id, csr} to /enroll with cred, without a client
// certificate, as a node that has none yet.
func (e *env) enrollRaw(cred, nodeID, csr string) reply {
	e.t.Helper()
	var hdr http.Header
	if cred != "" {
		hdr = bearerHeader(cred)
	}
	return doHeader(e.t, e.freshClient(nil), "POST", e.baseURL()+"/enroll", hdr, map[string]string{"node_id": nodeID, "csr": csr})
}

// audit returns the store's audit log.
func (e *env) audit() []store.AuditEntry {
	e.t.Helper()
	entries, err := e.ca.st.AuditLog(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	if err := store.VerifyAuditChain(entries); err != nil {
		e.t.Errorf("audit chain: %v", err)
	}
	return entries
}

// audited returns the audit entries of action with outcome whose detail
// contains detail, after entry number after (Seq).
func (e *env) audited(after int64, action, outcome, detail string) []store.AuditEntry {
	e.t.Helper()
	var out []store.AuditEntry
	for _, a := range e.audit() {
		if a.Seq > after && a.Action == action && a.Outcome == outcome && strings.Contains(a.Detail, detail) {
			out = append(out, a)
		}
	}
	return out
}

// auditSeq is the Seq of the last audit entry.
func (e *env) auditSeq() int64 {
	e.t.Helper()
	entries := e.audit()
	if len(entries) == 0 {
		return 0
	}
	return entries[len(entries)-1].Seq
}

// checkNotLeaked fails if s appears in the log or in any field of the
// audit log.
func (e *env) checkNotLeaked(what, s string) {
	e.t.Helper()
	if strings.Contains(e.log.String(), s) {
		e.t.Errorf("the log holds the %s", what)
	}
	for _, a := range e.audit() {
		if strings.Contains(a.Action+a.Identity+a.Outcome+a.Detail, s) {
			e.t.Errorf("audit entry %d (%s) holds the %s", a.Seq, a.Action, what)
		}
	}
}

// createToken creates a join token for nodeID through the admin API.
func (e *env) createToken(nodeID, ttl string) meshapi.TokenResponse {
	e.t.Helper()
	r := e.adminDo("POST", "/admin/tokens", map[string]string{"node_id": nodeID, "ttl": ttl})
	if r.code != http.StatusCreated {
		e.t.Fatalf("POST /admin/tokens for %s: %s", nodeID, r)
	}
	var tok meshapi.TokenResponse
	if err := json.Unmarshal(r.body, &tok); err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// revokeAdmin revokes target (a serial or a name) through the admin API.
func (e *env) revokeAdmin(target string) {
	e.t.Helper()
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": target, "reason": "keyCompromise"}); r.code != http.StatusOK {
		e.t.Fatalf("revoke %s: %s", target, r)
	}
}

// sseEvent is one event of /revocations/watch, with its frame as sent.
type sseEvent struct {
	id, event, data string
	frame           []byte
}

// payload is the event's data, parsed.
func (ev sseEvent) payload(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
		t.Fatalf("event %s data is not JSON: %v: %q", ev.id, err, ev.data)
	}
	return m
}

// sseSub is a raw subscription to /revocations/watch: the frames as they
// arrive, without the Watcher's interpretation.
type sseSub struct {
	t      testing.TB
	resp   *http.Response
	events chan sseEvent
	done   chan struct{}
	cancel context.CancelFunc
}

// watchCert is a client certificate for the revocation stream, which
// strict mode serves to verified callers only.
func (e *env) watchCert() *tls.Certificate {
	e.t.Helper()
	if e.watcherCert == nil {
		c, _ := agentCert(e.t, e.ca.auth, "watcher", "n0")
		e.watcherCert = &c
	}
	return e.watcherCert
}

// subscribe opens /revocations/watch with the Last-Event-ID header when
// lastID is not empty, with watchCert.
func (e *env) subscribe(lastID string) *sseSub {
	e.t.Helper()
	sub, code := e.trySubscribe(lastID, e.watchCert())
	if sub == nil {
		e.t.Fatalf("GET /revocations/watch: %d", code)
	}
	return sub
}

// trySubscribe opens /revocations/watch with cert (nil: none), or returns
// the status it was refused with.
func (e *env) trySubscribe(lastID string, cert *tls.Certificate) (*sseSub, int) {
	e.t.Helper()
	return e.trySubscribeFrom(lastID, cert, "")
}

// trySubscribeFrom is trySubscribe from the local address from (any of
// 127.0.0.0/8 reaches meshd on 127.0.0.1), so that one test can be many
// callers' addresses; "" lets the system choose.
func (e *env) trySubscribeFrom(lastID string, cert *tls.Certificate, from string) (*sseSub, int) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", e.baseURL()+"/revocations/watch", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(cert)}
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		tr.DialContext = d.DialContext
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		cancel()
		e.t.Fatalf("GET /revocations/watch: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	s := &sseSub{t: e.t, resp: resp, events: make(chan sseEvent, 256), done: make(chan struct{}), cancel: cancel}
	go s.read()
	e.t.Cleanup(s.close)
	return s, resp.StatusCode
}

func (s *sseSub) read() {
	defer close(s.done)
	br := bufio.NewReader(s.resp.Body)
	var ev sseEvent
	var frame []byte
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		frame = append(frame, line...)
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.event != "" || ev.data != "" {
				ev.frame = frame
				s.events <- ev
			}
			ev, frame = sseEvent{}, nil
		case strings.HasPrefix(line, ":"):
			frame = nil // a comment (keep-alive) is not part of an event
		default:
			field, value, _ := strings.Cut(line, ": ")
			switch field {
			case "id":
				ev.id = value
			case "event":
				ev.event = value
			case "data":
				ev.data = value
			}
		}
	}
}

// next returns the next event, failing the test if none arrives within
// eventually.Bound.
func (s *sseSub) next() sseEvent {
	s.t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-s.done:
		s.t.Fatal("the revocation stream ended")
	case <-time.After(eventually.Bound):
		s.t.Fatalf("no revocation event within %s", eventually.Bound)
	}
	return sseEvent{}
}

// close disconnects and waits for the reader to stop.
func (s *sseSub) close() {
	s.cancel()
	s.resp.Body.Close()
	<-s.done
}

// watcher runs a trust/watch Watcher against meshd until the test ends.
type watcher struct {
	w    *watch.Watcher
	set  *trust.RevocationSet
	stop func()
}

func (e *env) watcher(lastID int64) *watcher {
	e.t.Helper()
	set := &trust.RevocationSet{}
	cert := e.watchCert()
	w, err := watch.New(set, watch.Config{Server: e.baseURL(), Roots: e.roots, LastEventID: lastID,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.Run(ctx); !errors.Is(err, context.Canceled) {
			e.t.Errorf("watcher: %v", err)
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	e.t.Cleanup(stop)
	return &watcher{w: w, set: set, stop: stop}
}
