package server_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
)

// The hostile-input suite: meshd started for real, attacked over real TLS
// on loopback, each attack bounded in count and time. Each test asserts
// what the attack may cost meshd and that a real caller is still served.
// Each topic's cases are in hostile_<topic>_e2e_test.go beside this file
// (auto, canonical, feed, keyrev, principals, sessions, smaller); attacks
// that need several replicas on one PostgreSQL run against real meshd
// processes in cmd/meshd (replica_ownership_test.go), and meshauth's in
// front of a service in meshauth/hostile_test.go.

// TestHostileWatchStreamsCapped: revocation streams are capped per source
// and in all; a refused one is answered at once and costs no stream.
func TestHostileWatchStreamsCapped(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto, configure: func(c *meshd.Config) {
		c.MaxWatchStreams, c.MaxWatchStreamsPerSource, c.MaxCertlessWatchStreams = 5, 3, 3
	}})
	var subs []*sseSub
	for i := range 3 {
		sub, code := e.trySubscribe("", nil)
		if sub == nil {
			t.Fatalf("anonymous stream %d: %d, want 200", i+1, code)
		}
		subs = append(subs, sub)
	}
	if sub, code := e.trySubscribe("", nil); sub != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("a 4th anonymous stream from one address: %d, want 503", code)
	}
	// A verified caller is another source; the total still holds.
	for i := range 2 {
		if sub, code := e.trySubscribe("", e.watchCert()); sub == nil {
			t.Fatalf("stream %d with a certificate: %d, want 200", i+1, code)
		}
	}
	if sub, code := e.trySubscribe("", e.watchCert()); sub != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("a 6th stream past the total of 5: %d, want 503", code)
	}
	if got := e.metrics()["meshd_revocation_watchers"]; got != 5 {
		t.Errorf("meshd_revocation_watchers = %v, want 5", got)
	}
	// A stream that ends frees its slot.
	subs[0].close()
	eventually.True(t, "a slot freed by a closed stream", func() bool {
		sub, _ := e.trySubscribe("", nil)
		if sub != nil {
			sub.close()
		}
		return sub != nil
	})
}

// TestHostileSlowBody: a client that trickles its request body is cut off
// once ReadTimeout passes, not held for minutes.
func TestHostileSlowBody(t *testing.T) {
	e, _ := newEnrollEnv(t, enrollOptions{mode: server.TLSAuto})
	e.stop()
	e.cfg.ReadTimeout = 500 * time.Millisecond
	e.restart()
	conn, err := tls.Dial("tcp", e.srv.AgentAddr(), e.tlsConfig(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a byte every 100 ms: 100,000 bytes would take hours
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	// The trickle would take hours: a connection meshd has neither answered
	// nor closed within eventually.Bound is one the read timeout did not cut off.
	conn.SetReadDeadline(time.Now().Add(eventually.Bound))
	_, err = bufio.NewReader(conn).ReadString('\n') // meshd's answer, or the close
	if took := time.Since(start); isTimeout(err) {
		t.Errorf("a trickled body held its connection for %v (%v), want it cut off by the 500ms read timeout", took, err)
	} else {
		t.Logf("a trickled body cut off after %v", took)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// fromAddress is a client whose connections come from the loopback
// address ip (any 127.0.0.0/8 address is this machine).
func (e *env) fromAddress(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(nil), DisableKeepAlives: true, DialContext: d.DialContext}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestHostileEnrollGuesses: many addresses together get no more secret
// guesses than the global ceiling, and a flood of rate-limited attempts
// writes an audit entry per source and minute, not one each.
func TestHostileEnrollGuesses(t *testing.T) {
	e, _ := newEnrollEnv(t, enrollOptions{mode: server.TLSAuto})
	before := e.auditSeq()
	csr := csrPEM(t, "ct9.mesh", e.newNodeKey())
	const addrs, each = 60, 8
	var (
		mu      sync.Mutex
		guesses int
		wg      sync.WaitGroup
	)
	start := time.Now()
	for a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.fromAddress(fmt.Sprintf("127.0.1.%d", a+1))
			for range each {
				r := doHeader(t, c, "POST", e.baseURL()+"/enroll", bearerHeader("wrong-secret-0123456789"), map[string]string{"node_id": "ct9", "csr": csr})
				if r.code == http.StatusUnauthorized {
					mu.Lock()
					guesses++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	// 60 addresses × a burst of 5 would be 300; the global ceiling is a
	// burst of 50 plus 2 a second for as long as the attempts took (long,
	// on a busy machine).
	if ceiling := 50 + 2*int(time.Since(start).Seconds()+1); guesses > ceiling {
		t.Errorf("%d addresses got %d secret guesses, want at most the global ceiling (%d)", addrs, guesses, ceiling)
	}
	limited := e.audited(before, "node.enroll", store.OutcomeRefused, "rate limited")
	if len(limited) > addrs+1 {
		t.Errorf("%d rate-limited attempts wrote %d audit entries, want at most one per source and minute", addrs*each-guesses, len(limited))
	}
	// One address hammering: one entry for the minute.
	before = e.auditSeq()
	c := e.fromAddress("127.0.2.1")
	for range 200 {
		doHeader(t, c, "POST", e.baseURL()+"/enroll", bearerHeader("wrong-secret-0123456789"), map[string]string{"node_id": "ct9", "csr": csr})
	}
	if got := e.audited(before, "node.enroll", store.OutcomeRefused, "rate limited"); len(got) > 2 {
		t.Errorf("200 attempts from one address wrote %d rate-limit audit entries, want at most 2", len(got))
	}
}

// TestHostileAgentCertFlood: one node certificate cannot mint agent
// certificates without bound: past its burst it is told to wait, and past
// its cap on agent identities it is refused, audited, while renewing an
// agent it holds still works.
func TestHostileAgentCertFlood(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	e.stop()
	e.cfg.AgentCertBurst, e.cfg.AgentCertInterval, e.cfg.MaxAgentsPerNode = 6, time.Hour, 3
	e.restart()
	ctx := context.Background()
	c := e.enrollClient()
	n := e.enrollNode(clock, testSecret, "ct600")
	key := e.newNodeKey()
	for _, id := range []string{"a1", "a2", "a3"} {
		if _, err := c.AgentCert(ctx, n.cert, id, key); err != nil {
			t.Fatalf("agent %s: %v", id, err)
		}
	}
	before := e.auditSeq()
	r := e.do(e.freshClient(&n.cert), "POST", "/agent-cert", map[string]string{"agent_id": "a4", "csr": csrPEM(t, "a4@ct600", key)})
	if r.code != http.StatusForbidden || r.reason() != "agent_limit" {
		t.Errorf("a 4th agent identity past the cap of 3: %s, want 403 agent_limit", r)
	}
	if got := e.audited(before, "cert.agent", store.OutcomeRefused, "agent_limit"); len(got) != 1 {
		t.Errorf("the cap refusal was audited %d times, want once", len(got))
	}
	if _, err := c.AgentCert(ctx, n.cert, "a1", key); err != nil {
		t.Errorf("renewing agent a1, which the node holds: %v", err)
	}
	// Five tokens are spent (a4's refusal took one); the sixth passes, the
	// seventh waits an hour.
	c.AgentCert(ctx, n.cert, "a2", key)
	r = e.do(e.freshClient(&n.cert), "POST", "/agent-cert", map[string]string{"agent_id": "a3", "csr": csrPEM(t, "a3@ct600", key)})
	if r.code != http.StatusTooManyRequests || r.reason() != "agent_cert_rate" || r.header.Get("Retry-After") == "" {
		t.Errorf("past the burst of 6: %s, want 429 agent_cert_rate with Retry-After", r)
	}
	// A renewal naming more agents than a node may hold is refused before
	// any CSR is looked at.
	agents := make([]map[string]string, 4)
	for i := range agents {
		agents[i] = map[string]string{"agent_id": fmt.Sprintf("x%d", i), "csr": "not even a CSR"}
	}
	r = e.do(e.freshClient(&n.cert), "POST", "/renew", map[string]any{"csr": csrPEM(t, "ct600.mesh", n.key), "agents": agents})
	if r.code != http.StatusBadRequest || r.reason() != "too_many_agents" {
		t.Errorf("a renewal of 4 agents past the cap of 3: %s, want 400 too_many_agents", r)
	}
	if strings.Contains(e.log.String(), "not even a CSR") {
		t.Error("the refused renewal's CSRs reached the log")
	}
	// The node's own renewal draws on the same allowance, spent by now:
	// a valid certificate cannot mint certificates without bound.
	certs, _ := e.ca.st.CertsByName(ctx, "ct600.mesh")
	r = e.do(e.freshClient(&n.cert), "POST", "/renew", map[string]any{})
	if r.code != http.StatusTooManyRequests || r.reason() != "agent_cert_rate" || r.header.Get("Retry-After") == "" {
		t.Errorf("a renewal past the node's allowance: %s, want 429 agent_cert_rate with Retry-After", r)
	}
	if after, _ := e.ca.st.CertsByName(ctx, "ct600.mesh"); len(after) != len(certs) {
		t.Errorf("a refused renewal recorded a certificate")
	}
	// An operator lowers the cap below what the node holds: its agents
	// still renew, whichever way the held agents are counted, and only a
	// new identity is refused.
	e.stop()
	e.cfg.AgentCertBurst, e.cfg.MaxAgentsPerNode = 100, 2
	e.restart()
	c = e.enrollClient()
	for _, id := range []string{"a1", "a3"} {
		if _, err := c.AgentCert(ctx, n.cert, id, key); err != nil {
			t.Errorf("renewing agent %s, held, past a lowered cap of 2: %v", id, err)
		}
	}
	r = e.do(e.freshClient(&n.cert), "POST", "/agent-cert", map[string]string{"agent_id": "a5", "csr": csrPEM(t, "a5@ct600", key)})
	if r.code != http.StatusForbidden || r.reason() != "agent_limit" {
		t.Errorf("a new agent identity past a lowered cap: %s, want 403 agent_limit", r)
	}
}

// TestHostileEntityNamespaceOverlap: entity names whose namespaces overlap
// (acme owns acme-*, so acme-corp-* would be both's) are refused at
// registration, in either order.
func TestHostileEntityNamespaceOverlap(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	e.registerEntity("acme", newTestCA(t, "acme CA"))
	for _, name := range []string{"acme-corp", "acme-x-y"} {
		r := e.adminDo("POST", "/admin/entities", map[string]any{"name": name, "ca_cert": string(newTestCA(t, name+" CA").pem)})
		if r.code != http.StatusBadRequest || !strings.Contains(r.json(t)["error"].(string), "overlaps entity \"acme\"") {
			t.Errorf("registering %s beside acme: %s, want 400 naming the overlap", name, r)
		}
	}
	e.registerEntity("globex-corp", newTestCA(t, "globex-corp CA"))
	r := e.adminDo("POST", "/admin/entities", map[string]any{"name": "globex", "ca_cert": string(newTestCA(t, "globex CA").pem)})
	if r.code != http.StatusBadRequest {
		t.Errorf("registering globex beside globex-corp: %s, want 400", r)
	}
	// Names that only share letters are fine.
	e.registerEntity("acmex", newTestCA(t, "acmex CA"))
}

// TestHostileHalfWrittenEntityFile: a half-written file in the trust dir's
// entities/ neither evicts that entity's agents nor closes their
// connections; the last good version stays in force until the file is
// whole again.
func TestHostileHalfWrittenEntityFile(t *testing.T) {
	e, partner, file := newPartnerFileEnv(t)
	cert := partner.leaf(t, "partner-a")
	var conn *rawConn
	eventually.True(t, "partner admitted", func() bool {
		c := e.dial(&cert)
		if r, err := c.do("POST", "/heartbeat", heartbeat("partner-a", 9200)); err == nil && r.code == http.StatusOK {
			conn = c
			return true
		}
		c.conn.Close()
		return false
	})
	// Written in place, not atomically: a reader sees it cut short.
	if err := os.WriteFile(file, partner.pem[:len(partner.pem)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the damaged file noticed", func() bool {
		return strings.Contains(e.log.String(), "keeping its last good version")
	})
	if r, err := conn.do("HEAD", "/heartbeat/partner-a", nil); err != nil || (r.code != http.StatusOK && r.code != http.StatusAccepted) {
		t.Errorf("partner's open connection after its file was damaged: %v %v, want it served", r, err)
	}
	if a, _ := e.agents(e.client(e.watchCert()), "").find("partner-a"); a.Status == "evicted" {
		t.Errorf("partner-a evicted by a damaged file: %+v", a)
	}
}

// TestHostilePartnerChainsBelowTheFloor: a partner CA's chain with a weak
// key, or restricted to server use, does not admit a client, over TLS.
func TestHostilePartnerChainsBelowTheFloor(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	weak := newTestCA(t, "weak partner CA")
	e.registerEntity("weak", weak)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: randSerial(t), Subject: pkix.Name{CommonName: "weak-a"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, weak.cert, rsaKey.Public(), weak.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	weakCert := tls.Certificate{Certificate: [][]byte{der, weak.cert.Raw}, PrivateKey: rsaKey, Leaf: leaf}
	if r := e.do(e.freshClient(&weakCert), "POST", "/heartbeat", heartbeat("weak-a", 1)); r.code != http.StatusForbidden || r.reason() != "weak_key" {
		t.Errorf("an RSA-1024 client certificate: %s, want 403 weak_key", r)
	}

	// An intermediate restricted to serverAuth vouches for no client.
	root := newTestCA(t, "serveronly root")
	e.registerEntity("serveronly", root)
	interKey := pkitest.NewKey(t)
	ider, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: randSerial(t), Subject: pkix.Name{CommonName: "serveronly issuing"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root.cert, interKey.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(ider)
	c := signLeaf(t, inter, interKey, &x509.Certificate{Subject: pkix.Name{CommonName: "serveronly-a"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	c.Certificate = append(c.Certificate[:1], inter.Raw)
	if r := e.do(e.freshClient(&c), "POST", "/heartbeat", heartbeat("serveronly-a", 1)); r.code != http.StatusForbidden || r.reason() != "not_client_cert" {
		t.Errorf("a client certificate under a serverAuth-only intermediate: %s, want 403 not_client_cert", r)
	}
}

// TestHostileForgedCSRSignature: a CSR whose signature does not verify
// proves no possession of its key, and is refused wherever meshd signs one
// without a handshake by that key: /enroll (with the bootstrap secret or a
// join token) and the agents of a /renew. Nothing is recorded.
func TestHostileForgedCSRSignature(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	forged := func(cn string) string {
		block, _ := pem.Decode([]byte(csrPEM(t, cn, e.newNodeKey())))
		block.Bytes[len(block.Bytes)-1] ^= 0x01 // inside the signature's s
		return string(pem.EncodeToMemory(block))
	}
	ctx := context.Background()
	if r := e.enrollRaw(testSecret, "ct700", forged("ct700.mesh")); r.code != http.StatusBadRequest || r.reason() != "bad_csr" {
		t.Errorf("/enroll with the secret and a forged CSR: %s, want 400 bad_csr", r)
	}
	token := e.createToken("ct701", "1h").Token
	if r := e.enrollRaw(token, "ct701", forged("ct701.mesh")); r.code != http.StatusBadRequest || r.reason() != "bad_csr" {
		t.Errorf("/enroll with a join token and a forged CSR: %s, want 400 bad_csr", r)
	}
	n := e.enrollNode(clock, testSecret, "ct702")
	agents := []map[string]string{{"agent_id": "a1", "csr": forged("a1@ct702")}}
	if r := e.do(e.freshClient(&n.cert), "POST", "/renew", map[string]any{"agents": agents}); r.code != http.StatusBadRequest {
		t.Errorf("/renew with a forged agent CSR: %s, want 400", r)
	}
	for _, cn := range []string{"ct700.mesh", "ct701.mesh", "a1@ct702"} {
		if certs, _ := e.ca.st.CertsByName(ctx, cn); len(certs) != 0 {
			t.Errorf("%s: %d certificates recorded for a forged CSR", cn, len(certs))
		}
	}
}
