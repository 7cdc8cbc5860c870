package server_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// The enrollment tests drive docs/enrollment.md against the real meshd
// over TLS on loopback, through the client packages nodes run
// (credentials/enroll, trust/watch) where they fit and raw HTTP where a
// test needs the exact status and reason. meshd's clock is a fakeClock,
// so the enrollment rate limit (which every test here, all from
// 127.0.0.1, shares) refills and join tokens expire without sleeping.

// TestE2EEnrollWithSecretThenMTLS: a node enrolls with the bootstrap
// secret, and from then on works over mTLS: its certificate reads /health
// in strict mode and mints an agent certificate that heartbeats.
func TestE2EEnrollWithSecretThenMTLS(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	n := e.enrollNode(clock, testSecret, "ct112")

	leaf := n.bundle.Certificate
	if leaf.Subject.CommonName != "ct112.mesh" || n.bundle.Serial != leaf.SerialNumber.Text(16) {
		t.Errorf("enrolled certificate %q serial %s", leaf.Subject.CommonName, n.bundle.Serial)
	}
	if len(n.bundle.Chain) != 2 || !n.bundle.Chain[1].Equal(e.ca.auth.Root()) || !n.bundle.Chain[0].Equal(e.ca.auth.ActiveIntermediate()) {
		t.Errorf("chain is not [active intermediate, root]: %d certificates", len(n.bundle.Chain))
	}
	if rec, err := e.ca.st.Cert(ctx, n.bundle.Serial); err != nil || rec.CommonName != "ct112.mesh" || rec.Kind != "node" {
		t.Errorf("store record of the enrolled certificate: %+v, %v", rec, err)
	}

	if r := e.do(e.client(nil), "GET", "/health", nil); r.code != http.StatusForbidden {
		t.Errorf("certless GET /health in strict: %s, want 403", r)
	}
	if r := e.do(e.client(&n.cert), "GET", "/health", nil); r.code != http.StatusOK {
		t.Errorf("GET /health with the node certificate in strict: %s", r)
	}
	if err := e.enrollClient().Health(ctx, n.cert); err != nil {
		t.Errorf("enroll.Client.Health with the node certificate: %v", err)
	}

	agent, ab := e.mintAgent(n, "opus")
	if cn := ab.Certificate.Subject.CommonName; cn != "opus@ct112" {
		t.Fatalf("agent certificate for %q, want opus@ct112", cn)
	}
	c := e.client(&agent)
	if r := e.do(c, "POST", "/heartbeat", heartbeat("opus", 9001, "chat")); r.code != http.StatusOK || r.json(t)["status"] != "success" {
		t.Fatalf("POST /heartbeat with the minted agent certificate: %s", r)
	}
	if a, ok := e.agents(c, "").find("opus"); !ok || a.Owner != "opus@ct112" || a.Status != "healthy" {
		t.Errorf("GET /agents: opus = %+v (found %v)", a, ok)
	}
	// The secret may not register that agent id for anyone else, nor may
	// the node's own certificate (it is not opus@ct112).
	if r := e.do(e.client(&n.cert), "POST", "/heartbeat", heartbeat("opus", 9002)); r.code != http.StatusForbidden {
		t.Errorf("POST /heartbeat for opus with the node certificate: %s, want 403", r)
	}
	if got := e.audited(0, "node.enroll", store.OutcomeOK, "via bootstrap secret"); len(got) != 1 || got[0].Identity != "ct112.mesh" ||
		!strings.Contains(got[0].Detail, "serial "+n.bundle.Serial+" ") {
		t.Errorf("audit of the enrollment: %+v, want one entry naming serial %s", got, n.bundle.Serial)
	}
	// The certificate's entry is the enrollment's: no cert.issue beside it.
	for _, a := range e.audit() {
		if a.Action == "cert.issue" && a.Identity == "ct112.mesh" {
			t.Errorf("the enrollment also wrote %+v", a)
		}
	}
	e.checkNotLeaked("bootstrap secret", testSecret)
}

// TestE2ESecretRefusedOutsideEnroll: the bootstrap secret is refused on
// every route but /enroll, with or without a certificate beside it, and
// each attempt is audited without the secret.
func TestE2ESecretRefusedOutsideEnroll(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	n := e.enrollNode(clock, testSecret, "ct1")
	before := e.auditSeq()
	anon, withCert := e.freshClient(nil), e.freshClient(&n.cert)
	renewBody := map[string]string{"csr": csrPEM(t, "ct1.mesh", n.key)}
	cases := []struct {
		name         string
		c            *http.Client
		method, path string
		body         any
	}{
		{"certless heartbeat", anon, "POST", "/heartbeat", heartbeat("a1", 9001)},
		{"certless renew", anon, "POST", "/renew", renewBody},
		{"renew beside a node certificate", withCert, "POST", "/renew", renewBody},
		{"certless agent list", anon, "GET", "/agents", nil},
		{"agent list beside a node certificate", withCert, "GET", "/agents", nil},
		{"agent-cert beside a node certificate", withCert, "POST", "/agent-cert", map[string]string{"agent_id": "x", "csr": csrPEM(t, "x@ct1", n.key)}},
		{"certless HEAD heartbeat", anon, "HEAD", "/heartbeat/a1", nil},
	}
	for _, tc := range cases {
		r := doHeader(t, tc.c, tc.method, e.baseURL()+tc.path, bearerHeader(testSecret), tc.body)
		if r.code != http.StatusUnauthorized {
			t.Errorf("%s: %s, want 401", tc.name, r)
			continue
		}
		if tc.method != "HEAD" && r.reason() != "secret_outside_enroll" {
			t.Errorf("%s: reason %q, want secret_outside_enroll: %s", tc.name, r.reason(), r)
		}
	}
	misuse := e.audited(before, "secret.misuse", store.OutcomeRefused, "")
	if len(misuse) != len(cases) {
		t.Fatalf("%d secret.misuse audit entries, want %d: %+v", len(misuse), len(cases), misuse)
	}
	for i, a := range misuse {
		tc := cases[i]
		if !strings.Contains(a.Detail, tc.method+" "+tc.path) || !strings.Contains(a.Detail, "from 127.0.0.1:") {
			t.Errorf("audit of %s: %q, want the route and the caller's address", tc.name, a.Detail)
		}
	}
	if got := e.audited(before, "cert.renew", store.OutcomeOK, ""); len(got) != 0 {
		t.Errorf("a renewal beside the secret went through: %+v", got)
	}
	if l := e.agents(e.client(&n.cert), ""); len(l.Agents) != 0 {
		t.Errorf("the secret registered agents: %v", l.ids())
	}
	e.checkNotLeaked("bootstrap secret", testSecret)
}

// TestE2EEnrollSecretRefusals: a wrong or missing credential is 401; the
// secret cannot enroll a node that holds a live certificate (409) until
// that certificate is revoked.
func TestE2EEnrollSecretRefusals(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSAuto})
	ctx := context.Background()
	key := e.newNodeKey()
	csr := csrPEM(t, "ct7.mesh", key)
	clock.refill()
	before := e.auditSeq()
	wrong := []struct {
		name, cred, reason string
	}{
		{"wrong secret", "wrong-" + testSecret[6:], "bad_credential"},
		{"the secret and more", testSecret + "x", "bad_credential"},
		{"a prefix of the secret", testSecret[:len(testSecret)-1], "bad_credential"},
		{"no credential", "", "no_credential"},
		{"unknown join token", server.TokenPrefix + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "bad_credential"},
	}
	for _, tc := range wrong {
		r := e.enrollRaw(tc.cred, "ct7", csr)
		if r.code != http.StatusUnauthorized || r.reason() != tc.reason {
			t.Errorf("%s: %s, want 401 %s", tc.name, r, tc.reason)
		}
		if tc.reason == "bad_credential" && r.json(t)["error"] != "invalid bootstrap credential" {
			t.Errorf("%s: error %q, want the same answer for every bad credential", tc.name, r.json(t)["error"])
		}
	}
	if got := e.audited(before, "node.enroll", store.OutcomeRefused, "from 127.0.0.1"); len(got) != len(wrong) {
		t.Errorf("%d refused node.enroll audit entries, want %d: %+v", len(got), len(wrong), got)
	}
	clock.refill()
	if _, err := e.enrollClient().Enroll(ctx, "wrong-"+testSecret[6:], "ct7", key); !errors.Is(err, enroll.ErrUnauthorized) {
		t.Errorf("enroll.Client with a wrong secret: %v, want ErrUnauthorized", err)
	}
	if certs, _ := e.ca.st.CertsByName(ctx, "ct7.mesh"); len(certs) != 0 {
		t.Fatalf("refused enrollments issued %d certificate(s)", len(certs))
	}

	first := e.enrollNode(clock, testSecret, "ct7")
	clock.refill()
	_, err := e.enrollClient().Enroll(ctx, testSecret, "ct7", e.newNodeKey())
	var ee *enroll.Error
	if !errors.Is(err, enroll.ErrConflict) || !errors.As(err, &ee) || ee.Status != http.StatusConflict {
		t.Fatalf("secret enrollment of an enrolled node: %v, want 409 ErrConflict", err)
	}
	r := e.enrollRaw(testSecret, "ct7", csr)
	if r.code != http.StatusConflict || r.reason() != "already_enrolled" || !strings.Contains(r.json(t)["error"].(string), first.bundle.Serial) {
		t.Errorf("secret enrollment of an enrolled node: %s, want 409 already_enrolled naming serial %s", r, first.bundle.Serial)
	}
	if certs, _ := e.ca.st.CertsByName(ctx, "ct7.mesh"); len(certs) != 1 {
		t.Errorf("ct7.mesh has %d certificates after the refusals, want 1", len(certs))
	}
	// The first certificate is still the node's: the refusal took nothing.
	if err := e.enrollClient().Health(ctx, first.cert); err != nil {
		t.Errorf("the enrolled certificate after a refused takeover: %v", err)
	}

	// Revoking the name revokes the identity: the secret cannot enroll it
	// again until an operator reinstates it.
	e.revokeAdmin("ct7.mesh")
	if r := e.enrollRaw(testSecret, "ct7", csr); r.code != http.StatusForbidden || r.reason() != "revoked" {
		t.Errorf("secret enrollment of a revoked node: %s, want 403 revoked", r)
	}
	if r := e.adminDo("POST", "/admin/reinstate", map[string]string{"identity": "ct7.mesh"}); r.code != http.StatusOK {
		t.Fatalf("reinstate ct7.mesh: %s", r)
	}
	again := e.enrollNode(clock, testSecret, "ct7")
	if again.bundle.Serial == first.bundle.Serial || !sameKey(again.key.Public(), again.bundle.Certificate.PublicKey) {
		t.Errorf("re-enrollment after revocation: serial %s (first %s)", again.bundle.Serial, first.bundle.Serial)
	}
	if err := e.enrollClient().Health(ctx, again.cert); err != nil {
		t.Errorf("the re-enrolled certificate: %v", err)
	}
	if err := e.enrollClient().Health(ctx, first.cert); err == nil {
		t.Errorf("the revoked certificate still reads /health")
	}
	e.checkNotLeaked("bootstrap secret", testSecret)
}

// TestE2ESecretEnrollmentRace: holders of the secret enrolling one node id
// at the same moment get one certificate between them; the rest are 409.
func TestE2ESecretEnrollmentRace(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSAuto})
	ctx := context.Background()
	for round := range 10 {
		id := fmt.Sprintf("race%d", round)
		csrs := make([]string, 5) // the burst the rate limit allows
		for i := range csrs {
			csrs[i] = csrPEM(t, id+".mesh", e.newNodeKey())
		}
		clock.refill()
		codes := make([]int, len(csrs))
		var wg sync.WaitGroup
		for i, csr := range csrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes[i] = doHeader(t, e.freshClient(nil), "POST", e.baseURL()+"/enroll", bearerHeader(testSecret), map[string]string{"node_id": id, "csr": csr}).code
			}()
		}
		wg.Wait()
		slices.Sort(codes)
		if want := []int{201, 409, 409, 409, 409}; !slices.Equal(codes, want) {
			t.Errorf("%s: concurrent secret enrollments answered %v, want %v", id, codes, want)
		}
		if certs, _ := e.ca.st.CertsByName(ctx, id+".mesh"); len(certs) != 1 {
			t.Errorf("%s: %d certificates issued, want 1", id, len(certs))
		}
	}
}

// TestE2EJoinTokens: a join token enrolls its node once, before it
// expires; every refusal is audited without the token.
func TestE2EJoinTokens(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	before := e.auditSeq()

	tok := e.createToken("ct200", "10m")
	if !strings.HasPrefix(tok.Token, server.TokenPrefix) || tok.NodeID != "ct200" || tok.RootFingerprint != trust.Fingerprint(e.ca.auth.Root()) {
		t.Errorf("token answer: node %q, root %s, token prefix ok %v", tok.NodeID, tok.RootFingerprint, strings.HasPrefix(tok.Token, server.TokenPrefix))
	}
	if d := tok.ExpiresAt.Sub(clock.Now()); d < 9*time.Minute || d > 10*time.Minute {
		t.Errorf("token expires in %s, want 10m", d)
	}
	// A fresh node knows only the root's fingerprint, as `meshctl token
	// create` prints it.
	c := &enroll.Client{Server: e.baseURL(), RootFingerprint: tok.RootFingerprint}
	try := func(cred, node string) (*enroll.Bundle, error) {
		clock.refill()
		return c.Enroll(ctx, cred, node, e.newNodeKey())
	}
	b, err := try(tok.Token, "ct200")
	if err != nil || b.Certificate.Subject.CommonName != "ct200.mesh" {
		t.Fatalf("enroll with a join token: %v", err)
	}
	if got := e.audited(before, "node.enroll", store.OutcomeOK, "via join token"); len(got) != 1 {
		t.Errorf("audit of the token enrollment: %+v", got)
	}

	other := e.createToken("ct201", "")
	short := e.createToken("ct203", "1m")
	clock.advance(2 * time.Minute) // past short's expiry, not the others'
	for _, tc := range []struct {
		name, cred, node string
		status           int
		sentinel         error
	}{
		{"replay", tok.Token, "ct200", http.StatusUnauthorized, enroll.ErrUnauthorized},
		{"token of another node", other.Token, "ct202", http.StatusForbidden, enroll.ErrForbidden},
		{"expired token", short.Token, "ct203", http.StatusUnauthorized, enroll.ErrUnauthorized},
	} {
		_, err := try(tc.cred, tc.node)
		var ee *enroll.Error
		if !errors.Is(err, tc.sentinel) || !errors.As(err, &ee) || ee.Status != tc.status {
			t.Errorf("%s: %v, want %d", tc.name, err, tc.status)
		}
	}
	// A CSR the CA's policy refuses (it asks for a SAN the node profile does
	// not grant) is refused before the token is spent.
	key := e.newNodeKey()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct201.mesh"}, DNSNames: []string{"evil.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	clock.refill()
	if r := e.enrollRaw(other.Token, "ct201", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))); r.code != http.StatusBadRequest {
		t.Errorf("a CSR asking for an ungranted SAN: %s, want 400", r)
	}
	// A refusal spends nothing: the token of ct201 still enrolls ct201.
	if _, err := try(other.Token, "ct201"); err != nil {
		t.Errorf("the token refused for another node, for its own: %v", err)
	}
	// A join token re-enrolls a node that holds a live certificate: that
	// is the operator's explicit act the secret cannot stand in for.
	if _, err := try(e.createToken("ct200", "").Token, "ct200"); err != nil {
		t.Errorf("a new join token for the enrolled ct200: %v", err)
	}

	refused := e.audited(before, "node.enroll", store.OutcomeRefused, "join token ")
	wantDetails := []string{"already used", "for another node", "expired", "not spent"}
	if len(refused) != len(wantDetails) {
		t.Fatalf("%d refused token enrollments audited, want %d: %+v", len(refused), len(wantDetails), refused)
	}
	for i, a := range refused {
		if !strings.Contains(a.Detail, wantDetails[i]) || !strings.Contains(a.Detail, "from 127.0.0.1") {
			t.Errorf("refusal %d audited as %q, want %q and the address", i, a.Detail, wantDetails[i])
		}
	}
	if got := e.audited(before, "token.create", store.OutcomeOK, ""); len(got) != 4 {
		t.Errorf("%d token.create entries, want 4", len(got))
	}
	if got := e.audited(before, "token.use", store.OutcomeOK, ""); len(got) != 3 {
		t.Errorf("%d token.use entries, want 3", len(got))
	}
	for _, tk := range []string{tok.Token, other.Token, short.Token} {
		e.checkNotLeaked("join token", tk)
		e.checkNotLeaked("join token's random part", strings.TrimPrefix(tk, server.TokenPrefix))
	}

	for _, bad := range []map[string]string{{"node_id": "not a node!"}, {"node_id": "ct9", "ttl": "forever"}, {"node_id": "ct9", "ttl": "-1m"}, {"node_id": "ct9", "ttl": "800h"}} {
		if r := e.adminDo("POST", "/admin/tokens", bad); r.code != http.StatusBadRequest {
			t.Errorf("POST /admin/tokens %v: %s, want 400", bad, r)
		}
	}
}

// TestE2EEnrollRateLimit: past a burst of 5 attempts from one address,
// /enroll answers 429 with Retry-After, whatever the credential, until the
// bucket refills.
func TestE2EEnrollRateLimit(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSAuto})
	ctx := context.Background()
	key := e.newNodeKey()
	csr := csrPEM(t, "ct9.mesh", key)
	before := e.auditSeq()
	for i := 1; i <= 5; i++ {
		if r := e.enrollRaw("wrong-secret-0123456789", "ct9", csr); r.code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %s, want 401", i, r)
		}
	}
	r := e.enrollRaw(testSecret, "ct9", csr)
	if r.code != http.StatusTooManyRequests || r.reason() != "rate_limited" {
		t.Fatalf("attempt 6, with the right secret: %s, want 429 rate_limited", r)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 12 {
		t.Errorf("Retry-After %q, want 1 to 12 seconds", r.header.Get("Retry-After"))
	}
	_, err := e.enrollClient().Enroll(ctx, testSecret, "ct9", key)
	var ee *enroll.Error
	if !errors.Is(err, enroll.ErrRateLimited) || !errors.As(err, &ee) || ee.RetryAfter <= 0 {
		t.Errorf("enroll.Client over the limit: %v, want ErrRateLimited with RetryAfter", err)
	}
	// Refusals are audited once a minute per source, not once each: the
	// audit log must not be the amplifier of a flood.
	if got := e.audited(before, "node.enroll", store.OutcomeRefused, "rate limited from this address: 127.0.0.1"); len(got) != 1 {
		t.Errorf("%d rate-limit refusals audited, want 1 for the minute", len(got))
	}
	if certs, _ := e.ca.st.CertsByName(ctx, "ct9.mesh"); len(certs) != 0 {
		t.Fatalf("a rate-limited enrollment issued a certificate")
	}
	clock.advance(12 * time.Second) // one attempt's worth
	if _, err := e.enrollClient().Enroll(ctx, testSecret, "ct9", key); err != nil {
		t.Errorf("after 12 s: %v", err)
	}
	if r := e.enrollRaw(testSecret, "ct10", csrPEM(t, "", key)); r.code != http.StatusTooManyRequests {
		t.Errorf("the attempt after: %s, want 429", r)
	}
}

// TestE2ERenew: /renew re-issues the caller's own identity, for the same
// key or a new one, and nothing else; a revoked or expired certificate
// cannot renew.
func TestE2ERenew(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	c := e.enrollClient()
	n := e.enrollNode(clock, testSecret, "ct300")
	old := n.bundle.Certificate
	before := e.auditSeq()

	same, err := c.Renew(ctx, n.cert, n.key, nil)
	if err != nil {
		t.Fatalf("renew with the same key: %v", err)
	}
	got := same.Node.Certificate
	if same.Node.Serial == n.bundle.Serial || got.Subject.CommonName != old.Subject.CommonName ||
		!slices.Equal(got.DNSNames, old.DNSNames) || fmt.Sprint(got.URIs) != fmt.Sprint(old.URIs) || !slices.Equal(got.ExtKeyUsage, old.ExtKeyUsage) {
		t.Errorf("renewed: serial %s (was %s), %q %v %v", same.Node.Serial, n.bundle.Serial, got.Subject.CommonName, got.DNSNames, got.URIs)
	}
	if !sameKey(n.key.Public(), got.PublicKey) {
		t.Errorf("renewal with the same key changed the key")
	}
	renewed := same.Node.TLSCertificate(n.key)
	if err := c.Health(ctx, renewed); err != nil {
		t.Errorf("the renewed certificate over mTLS: %v", err)
	}

	newKey := e.newNodeKey()
	rekeyed, err := c.Renew(ctx, renewed, newKey, nil)
	if err != nil {
		t.Fatalf("renew with a new key: %v", err)
	}
	if !sameKey(newKey.Public(), rekeyed.Node.Certificate.PublicKey) ||
		rekeyed.Node.Certificate.Subject.CommonName != "ct300.mesh" || rekeyed.Node.Serial == same.Node.Serial {
		t.Errorf("renewal with a new key: %q serial %s", rekeyed.Node.Certificate.Subject.CommonName, rekeyed.Node.Serial)
	}
	if got := e.audited(before, "cert.renew", store.OutcomeOK, n.bundle.Serial+" -> "+same.Node.Serial); len(got) != 1 || got[0].Identity != "ct300.mesh" {
		t.Errorf("audit of the renewal: %+v", got)
	}
	current := rekeyed.Node.TLSCertificate(newKey)

	for _, cn := range []string{"ct301.mesh", "opus@ct300", "admin@external"} {
		r := doHeader(t, e.freshClient(&current), "POST", e.baseURL()+"/renew", nil, map[string]string{"csr": csrPEM(t, cn, newKey)})
		if r.code != http.StatusForbidden || r.reason() != "identity_change" || !strings.Contains(r.json(t)["error"].(string), cn) {
			t.Errorf("renew ct300.mesh as %s: %s, want 403 identity_change", cn, r)
		}
		if certs, _ := e.ca.st.CertsByName(ctx, cn); len(certs) != 0 {
			t.Errorf("an identity-changing renewal issued %s", cn)
		}
	}

	e.revokeAdmin(rekeyed.Node.Serial)
	r := doHeader(t, e.freshClient(&current), "POST", e.baseURL()+"/renew", nil, map[string]string{"csr": csrPEM(t, "ct300.mesh", newKey)})
	if r.code != http.StatusForbidden || r.reason() != "revoked" {
		t.Errorf("renew a revoked certificate: %s, want 403 revoked", r)
	}
	if _, err := c.Renew(ctx, current, newKey, nil); !errors.Is(err, enroll.ErrForbidden) {
		t.Errorf("enroll.Client renewing a revoked certificate: %v, want ErrForbidden", err)
	}

	past := e.ca.shifted(t, -caPast, 24*time.Hour)
	if _, err := past.Sign(ctx, ca.NodeRequest("ct302"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	expired, err := tls.LoadX509KeyPair(past.Config().IssuedCertPath("ct302.mesh"), past.Config().IssuedKeyPath("ct302.mesh"))
	if err != nil {
		t.Fatal(err)
	}
	r = doHeader(t, e.freshClient(&expired), "POST", e.baseURL()+"/renew", nil, map[string]string{"csr": csrPEM(t, "ct302.mesh", expired.PrivateKey.(crypto.Signer))})
	if r.code != http.StatusForbidden || r.reason() != "expired" {
		t.Errorf("renew an expired certificate: %s, want 403 expired", r)
	}
	if certs, _ := e.ca.st.CertsByName(ctx, "ct302.mesh"); len(certs) != 1 {
		t.Errorf("ct302.mesh has %d certificates, want only the expired one", len(certs))
	}
}

// TestE2EAgentCertScope: a node obtains certificates for its own agents
// only, and only a node certificate obtains them.
func TestE2EAgentCertScope(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	n := e.enrollNode(clock, testSecret, "ct400")
	key := e.newNodeKey()
	nc := e.freshClient(&n.cert)
	for _, tc := range []struct {
		name, agentID, cn string
		code              int
		mention           string
	}{
		{"CSR for another node's agent", "opus", "opus@othernode", http.StatusForbidden, "opus@othernode"},
		{"CSR for another agent of the node", "opus", "haiku@ct400", http.StatusForbidden, "haiku@ct400"},
		{"CSR for a node", "opus", "othernode.mesh", http.StatusForbidden, "othernode.mesh"},
		{"CSR for an external user", "opus", "admin@external", http.StatusForbidden, "admin@external"},
		{"agent id naming another node", "opus@othernode", "opus@othernode", http.StatusBadRequest, "opus@othernode"},
	} {
		r := e.do(nc, "POST", "/agent-cert", map[string]string{"agent_id": tc.agentID, "csr": csrPEM(t, tc.cn, key)})
		if r.code != tc.code || !strings.Contains(r.json(t)["error"].(string), tc.mention) {
			t.Errorf("%s: %s, want %d naming %q", tc.name, r, tc.code, tc.mention)
		}
	}
	for _, cn := range []string{"opus@othernode", "haiku@ct400", "othernode.mesh", "admin@external", "opus@ct400"} {
		if certs, _ := e.ca.st.CertsByName(ctx, cn); len(certs) != 0 {
			t.Errorf("a refused request issued %s", cn)
		}
	}
	// The client refuses to ask for another node's agent before sending.
	if _, err := e.enrollClient().AgentCert(ctx, n.cert, "opus@othernode", key); err == nil {
		t.Errorf("enroll.Client asked for opus@othernode")
	}

	agent, _ := e.mintAgent(n, "opus")
	r := e.do(e.freshClient(&agent), "POST", "/agent-cert", map[string]string{"agent_id": "opus2", "csr": csrPEM(t, "opus2@ct400", key)})
	if r.code != http.StatusForbidden || r.reason() != "not_node_cert" {
		t.Errorf("an agent certificate asking /agent-cert: %s, want 403 not_node_cert", r)
	}
	// An empty CN is the agent the request names.
	r = e.do(nc, "POST", "/agent-cert", map[string]string{"agent_id": "haiku", "csr": csrPEM(t, "", key)})
	if r.code != http.StatusCreated {
		t.Fatalf("agent-cert with an empty CN: %s", r)
	}
	certs, err := pemfile.ParseCerts([]byte(r.json(t)["certificate"].(string)))
	if err != nil || certs[0].Subject.CommonName != "haiku@ct400" {
		t.Errorf("agent-cert with an empty CN issued %v (%v)", certs, err)
	}
}

// TestE2ERenewRotatesAgents: a node's /renew re-issues its agents' certificates in
// the same call, and the Renewer does so on its own once 2/3 of the
// lifetime has passed, writing the files.
func TestE2ERenewRotatesAgents(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	n := e.enrollNode(clock, testSecret, "ct500")
	opus, opusB := e.mintAgent(n, "opus")
	haiku, haikuB := e.mintAgent(n, "haiku")
	before := e.auditSeq()

	res, err := e.enrollClient().Renew(ctx, n.cert, n.key, []enroll.AgentKey{
		{ID: "opus", Key: opus.PrivateKey.(crypto.Signer)}, {ID: "haiku", Key: haiku.PrivateKey.(crypto.Signer)},
	})
	if err != nil {
		t.Fatalf("renew with agents: %v", err)
	}
	if res.Node.Serial == n.bundle.Serial || len(res.Agents) != 2 {
		t.Fatalf("renewal: node serial %s (was %s), %d agents", res.Node.Serial, n.bundle.Serial, len(res.Agents))
	}
	for id, oldB := range map[string]*enroll.Bundle{"opus": opusB, "haiku": haikuB} {
		b := res.Agents[id]
		if b == nil || b.Serial == oldB.Serial || b.Certificate.Subject.CommonName != id+"@ct500" ||
			!sameKey(b.Certificate.PublicKey, oldB.Certificate.PublicKey) {
			t.Errorf("renewed agent %s: %+v (old serial %s)", id, b, oldB.Serial)
		}
	}
	renewedOpus := res.Agents["opus"].TLSCertificate(opus.PrivateKey.(crypto.Signer))
	if r := e.do(e.client(&renewedOpus), "POST", "/heartbeat", heartbeat("opus", 9001)); r.code != http.StatusOK {
		t.Errorf("heartbeat with the renewed agent certificate: %s", r)
	}
	if got := e.audited(before, "cert.renew", store.OutcomeOK, "2 agent certificate(s)"); len(got) != 1 {
		t.Errorf("audit of the renewal: %+v", got)
	}
	// An agent certificate renews itself, not other agents.
	r := e.do(e.freshClient(&renewedOpus), "POST", "/renew", map[string]any{"csr": csrPEM(t, "opus@ct500", opus.PrivateKey.(crypto.Signer)),
		"agents": []map[string]string{{"agent_id": "haiku", "csr": csrPEM(t, "haiku@ct500", haiku.PrivateKey.(crypto.Signer))}}})
	if r.code != http.StatusForbidden || r.reason() != "not_node_cert" {
		t.Errorf("an agent renewing another agent: %s, want 403 not_node_cert", r)
	}
	self, err := e.enrollClient().Renew(ctx, renewedOpus, opus.PrivateKey.(crypto.Signer), nil)
	if err != nil || self.Node.Certificate.Subject.CommonName != "opus@ct500" {
		t.Errorf("an agent renewing itself: %v", err)
	}

	t.Run("Renewer", func(t *testing.T) {
		// Credentials issued an hour ago, as if enrolled then; the
		// Renewer's clock stands 2/3 of their lifetime later.
		past := e.ca.shifted(t, -time.Hour, 0)
		ni, err := past.Sign(ctx, ca.NodeRequest("ct600"), ca.WithGeneratedKey())
		if err != nil {
			t.Fatal(err)
		}
		ai, err := past.Sign(ctx, ca.AgentRequest("opus", "ct600"), ca.WithGeneratedKey())
		if err != nil {
			t.Fatal(err)
		}
		chain := []*x509.Certificate{e.ca.auth.ActiveIntermediate(), e.ca.auth.Root()}
		dir := enroll.Dir(t.TempDir() + "/node")
		for _, w := range []struct {
			agent string
			is    *ca.Issued
		}{{"", ni}, {"opus", ai}} {
			key, err := pemfile.ReadKey(past.Config().IssuedKeyPath(w.is.Cert.Subject.CommonName))
			if err != nil {
				t.Fatal(err)
			}
			b := &enroll.Bundle{Certificate: w.is.Cert, Chain: chain, Serial: w.is.Record.Serial, NotAfter: w.is.Cert.NotAfter}
			if w.agent == "" {
				err = dir.WriteNode(key, b)
			} else {
				err = dir.WriteAgent(w.agent, key, b)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		due := enroll.RenewAt(ni.Cert, 2.0/3)
		rc := &stoppedClock{now: due.Add(time.Second)}
		rn, err := enroll.NewRenewer(e.enrollClient(), dir, enroll.RenewerConfig{Clock: rc, Jitter: -1})
		if err != nil {
			t.Fatal(err)
		}
		if rn.Due() != due {
			t.Fatalf("Renewer due at %s, want %s", rn.Due(), due)
		}
		// Changed is closed at the renewal (or an adoption from the Dir,
		// which this test makes none of).
		changed := rn.Changed()
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); rn.Run(rctx) }()
		select {
		case <-changed:
		case <-time.After(eventually.Bound):
			t.Fatal("the Renewer did not renew past 2/3 of the lifetime")
		}
		cancel()
		wg.Wait()

		disk, err := dir.Load()
		if err != nil {
			t.Fatal(err)
		}
		nodeLeaf := disk.Certificate.Leaf
		served, err := rn.Current()
		if err != nil {
			t.Fatal(err)
		}
		if nodeLeaf.SerialNumber.Cmp(ni.Cert.SerialNumber) == 0 || !nodeLeaf.Equal(served.Certificate.Leaf) || !nodeLeaf.NotBefore.After(ni.Cert.NotBefore) {
			t.Errorf("node.crt after the renewal: serial %s (was %s)", nodeLeaf.SerialNumber.Text(16), ni.Record.Serial)
		}
		if len(disk.Agents) != 1 || disk.Agents[0].Certificate.Leaf.SerialNumber.Cmp(ai.Cert.SerialNumber) == 0 {
			t.Fatalf("agents/ after the renewal: %+v", disk.Agents)
		}
		opus, err := rn.AgentSource("opus")
		if err != nil {
			t.Fatal(err)
		}
		servedAgent, err := opus.Current()
		if err != nil || !servedAgent.Certificate.Leaf.Equal(disk.Agents[0].Certificate.Leaf) {
			t.Errorf("the Renewer serves another agent certificate than it wrote")
		}
		if rn.Due().Before(rc.now) {
			t.Errorf("after the renewal the Renewer is due again at %s", rn.Due())
		}
		if got := e.audited(0, "cert.renew", store.OutcomeOK, ni.Record.Serial+" -> "); len(got) != 1 || !strings.Contains(got[0].Detail, "1 agent certificate(s)") {
			t.Errorf("audit of the Renewer's renewal: %+v", got)
		}
		if err := e.enrollClient().Health(ctx, served.Certificate); err != nil {
			t.Errorf("the Renewer's certificate over mTLS: %v", err)
		}
	})
}

// stoppedClock is a Renewer clock that stands still at now and never
// fires.
type stoppedClock struct{ now time.Time }

func (c *stoppedClock) Now() time.Time                       { return c.now }
func (c *stoppedClock) After(time.Duration) <-chan time.Time { return nil }

// TestE2ECRLAndBundle: the CRL and the bundle are public, in strict mode
// too, and say what they must.
func TestE2ECRLAndBundle(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	victim, leaf := agentCert(t, e.ca.auth, "victim", "n1")
	_, kept := agentCert(t, e.ca.auth, "kept", "n1")
	e.revokeAdmin(serialOf(victim))
	active := e.ca.auth.ActiveIntermediate()
	anon := e.client(nil)

	r := e.do(anon, "GET", "/crl", nil)
	if r.code != http.StatusOK || r.header.Get("Content-Type") != "application/pkix-crl" {
		t.Fatalf("certless GET /crl: %d %s", r.code, r.header.Get("Content-Type"))
	}
	crl, err := x509.ParseRevocationList(r.body)
	if err != nil {
		t.Fatalf("GET /crl is not a DER CRL: %v", err)
	}
	if err := crl.CheckSignatureFrom(active); err != nil {
		t.Errorf("the CRL is not signed by the active intermediate: %v", err)
	}
	if !crlHas(crl, leaf) || crlHas(crl, kept) {
		t.Errorf("DER CRL: lists the revoked serial %v, lists the kept one %v", crlHas(crl, leaf), crlHas(crl, kept))
	}

	r = doHeader(t, anon, "GET", e.baseURL()+"/crl", http.Header{"Accept": {"application/x-pem-file"}}, nil)
	if r.code != http.StatusOK || r.header.Get("Content-Type") != "application/x-pem-file" {
		t.Fatalf("GET /crl as PEM: %d %s", r.code, r.header.Get("Content-Type"))
	}
	var crls []*x509.RevocationList
	for rest := r.body; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "X509 CRL" {
			t.Errorf("PEM block %q in GET /crl", block.Type)
			continue
		}
		c, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		crls = append(crls, c)
	}
	if len(crls) != len(e.ca.auth.Intermediates()) || !slices.ContainsFunc(crls, func(c *x509.RevocationList) bool { return c.CheckSignatureFrom(active) == nil && crlHas(c, leaf) }) {
		t.Errorf("PEM CRLs: %d (intermediates %d), none of the active intermediate listing the serial", len(crls), len(e.ca.auth.Intermediates()))
	}

	r = e.do(anon, "GET", "/bundle", nil)
	if r.code != http.StatusOK {
		t.Fatalf("certless GET /bundle: %s", r)
	}
	certs, err := pemfile.ParseCerts(r.body)
	if err != nil {
		t.Fatal(err)
	}
	hasRoot := slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return c.Equal(e.ca.auth.Root()) })
	hasActive := slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return c.Equal(active) })
	if !hasRoot || !hasActive || len(certs) != 1+len(e.ca.auth.Intermediates()) || slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return !c.IsCA }) {
		t.Errorf("GET /bundle: %d certificates, root %v, active intermediate %v", len(certs), hasRoot, hasActive)
	}
	// Strict still holds for everything else.
	if r := e.do(anon, "GET", "/agents", nil); r.code != http.StatusForbidden {
		t.Errorf("certless GET /agents in strict: %s", r)
	}
}

func crlHas(crl *x509.RevocationList, c *x509.Certificate) bool {
	return slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(c.SerialNumber) == 0 })
}

// frameRE is one revocation event on the wire.
var frameRE = regexp.MustCompile(`^id: (\d+)\nevent: revocation\ndata: (\{[^\n]*\})\n\n$`)

// TestE2ERevocationWatch: subscribers of /revocations/watch receive
// certificate and entity revocations, including those made offline, and a
// subscriber that reconnects with Last-Event-ID gets exactly what it
// missed, in order.
func TestE2ERevocationWatch(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	issue := func(name string) *x509.Certificate {
		_, leaf := agentCert(t, e.ca.auth, name, "n1")
		return leaf
	}
	w := e.watcher(0)
	raw := e.subscribe("")
	eventually.True(t, "watcher connected", w.w.Connected)

	acme := newTestCA(t, "acme CA")
	e.registerEntity("acme", acme)
	v1 := issue("v1")
	e.revokeAdmin(v1.SerialNumber.Text(16))
	eventually.True(t, "watcher holds v1", func() bool {
		_, ok := w.set.Serial(hex.EncodeToString(v1.AuthorityKeyId), v1.SerialNumber.Text(16))
		return ok
	})
	ev1 := raw.next()
	m := frameRE.FindSubmatch(ev1.frame)
	if m == nil || string(m[1]) != ev1.id {
		t.Fatalf("event frame %q does not read id/event/data", ev1.frame)
	}
	p := ev1.payload(t)
	if p["serial"] != v1.SerialNumber.Text(16) || p["common_name"] != "v1@n1" || p["reason"] != "keyCompromise" || fmt.Sprint(p["seq"]) != ev1.id {
		t.Errorf("certificate revocation event: %s", ev1.data)
	}
	if want := hex.EncodeToString(v1.AuthorityKeyId); want == "" || p["issuer_key_id"] != want {
		t.Errorf("certificate revocation event %s: issuer_key_id, want %q", ev1.data, want)
	}
	if r, _ := w.set.Serial(hex.EncodeToString(v1.AuthorityKeyId), v1.SerialNumber.Text(16)); r.IssuerKeyID != hex.EncodeToString(v1.AuthorityKeyId) {
		t.Errorf("watcher's revocation of v1 has issuer key id %q, want %x", r.IssuerKeyID, v1.AuthorityKeyId)
	}
	if r := e.adminDo("DELETE", "/admin/entities/acme", nil); r.code != http.StatusOK {
		t.Fatalf("revoke entity acme: %s", r)
	}
	eventually.True(t, "watcher holds acme", func() bool { _, ok := w.set.Entity("acme"); return ok })
	ev2 := raw.next()
	if p := ev2.payload(t); p["entity"] != "acme" || p["serial"] != nil || ev2.id != next(t, ev1.id) {
		t.Errorf("entity revocation event %s: %s (previous id %s)", ev2.id, ev2.data, ev1.id)
	}
	if w.w.LastEventID() != atoi(t, ev2.id) {
		t.Errorf("watcher's LastEventID %d, want %s", w.w.LastEventID(), ev2.id)
	}

	// Disconnect; revoke through the admin API and offline meanwhile.
	raw.close()
	w.stop()
	missed := []*x509.Certificate{issue("v2"), issue("v3"), issue("v4")}
	e.revokeAdmin(missed[0].SerialNumber.Text(16))
	e.revokeOffline(missed[1].SerialNumber.Text(16))
	e.revokeAdmin(missed[2].SerialNumber.Text(16))

	again := e.subscribe(ev2.id)
	prev := ev2.id
	for _, c := range missed {
		ev := again.next()
		if ev.payload(t)["serial"] != c.SerialNumber.Text(16) || ev.id != next(t, prev) {
			t.Errorf("resumed after %s: event %s %s, want serial %s", ev2.id, ev.id, ev.data, c.SerialNumber.Text(16))
		}
		prev = ev.id
	}
	// Nothing else is pending: the next event is the next revocation.
	v5 := issue("v5")
	e.revokeAdmin(v5.SerialNumber.Text(16))
	if ev := again.next(); ev.payload(t)["serial"] != v5.SerialNumber.Text(16) || ev.id != next(t, prev) {
		t.Errorf("live event after the replay: %s %s, want v5", ev.id, ev.data)
	}

	// ?after= resumes the same way, and a Watcher resuming from ev2 holds
	// exactly what it missed.
	q := e.do(e.client(e.watchCert()), "GET", "/revocations/watch?after=x", nil)
	if q.code != http.StatusBadRequest {
		t.Errorf("GET /revocations/watch?after=x: %s, want 400", q)
	}
	// In strict mode the stream names revoked agents to verified callers
	// only.
	if sub, code := e.trySubscribe("", nil); sub != nil || code != http.StatusForbidden {
		t.Errorf("GET /revocations/watch without a certificate in strict mode: %d, want 403", code)
	}
	w2 := e.watcher(atoi(t, ev2.id))
	all := append(slices.Clone(missed), v5)
	eventually.True(t, "resumed watcher holds v2..v5", func() bool {
		for _, c := range all {
			if _, ok := w2.set.Serial(hex.EncodeToString(c.AuthorityKeyId), c.SerialNumber.Text(16)); !ok {
				return false
			}
		}
		return true
	})
	if _, ok := w2.set.Serial(hex.EncodeToString(v1.AuthorityKeyId), v1.SerialNumber.Text(16)); ok {
		t.Errorf("the resumed watcher replayed v1, before its Last-Event-ID")
	}
	if _, ok := w2.set.Entity("acme"); ok {
		t.Errorf("the resumed watcher replayed acme, before its Last-Event-ID")
	}

	// A revocation made offline while subscribers are connected reaches
	// them through meshd's poll.
	v6 := issue("v6")
	e.revokeOffline(v6.SerialNumber.Text(16))
	eventually.True(t, "offline revocation reaches the watcher", func() bool {
		_, ok := w2.set.Serial(hex.EncodeToString(v6.AuthorityKeyId), v6.SerialNumber.Text(16))
		return ok
	})
	if ev := again.next(); ev.payload(t)["serial"] != v6.SerialNumber.Text(16) {
		t.Errorf("offline revocation on the raw stream: %s", ev.data)
	}
}

func atoi(t testing.TB, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("event id %q: %v", s, err)
	}
	return n
}

// next is the id after id.
func next(t testing.TB, id string) string { return strconv.FormatInt(atoi(t, id)+1, 10) }

// TestE2EShutdownWithSubscribers: open revocation streams do not hold
// meshd's shutdown up.
func TestE2EShutdownWithSubscribers(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	sub := e.subscribe("")
	w := e.watcher(0)
	eventually.True(t, "watcher connected", w.w.Connected)
	// Shutdown waits for its handlers until ctx ends: an error is a stream
	// that held it up.
	ctx, cancel := context.WithTimeout(context.Background(), eventually.Bound)
	defer cancel()
	start := time.Now()
	err := e.srv.Shutdown(ctx)
	e.srv = nil
	if err != nil {
		t.Errorf("Shutdown with two subscribers: %v after %s", err, time.Since(start).Round(time.Millisecond))
	}
	select {
	case <-sub.done:
	case <-time.After(eventually.Bound):
		t.Errorf("the stream is still open after Shutdown")
	}
}

// TestE2ELegacySecretCompat: with LegacySecretCompat, the secret stands in
// for a certificate on the agent routes, counted and logged with the
// caller's address; without it, it is refused.
func TestE2ELegacySecretCompat(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("compat=%v", on), func(t *testing.T) {
			// strict: in auto a caller without a certificate is admitted
			// to the agent routes with or without the secret.
			e, _ := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict, legacy: on})
			var mu sync.Mutex
			var local []string
			tr := &http.Transport{TLSClientConfig: e.tlsConfig(nil), DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err == nil {
					mu.Lock()
					local = append(local, c.LocalAddr().String())
					mu.Unlock()
				}
				return c, err
			}}
			t.Cleanup(tr.CloseIdleConnections)
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			before := e.auditSeq()
			r := doHeader(t, c, "POST", e.baseURL()+"/heartbeat", bearerHeader(testSecret), heartbeat("legacy1", 9001))
			uses := e.metrics()["meshd_legacy_secret_uses_total"]
			if !on {
				if r.code != http.StatusUnauthorized || r.reason() != "secret_outside_enroll" || uses != 0 {
					t.Errorf("legacy secret without compat: %s (uses %v), want 401", r, uses)
				}
				if len(e.audited(before, "secret.misuse", store.OutcomeRefused, "POST /heartbeat")) != 1 {
					t.Errorf("the refused legacy secret is not audited")
				}
				e.checkNotLeaked("bootstrap secret", testSecret)
				return
			}
			if r.code != http.StatusOK || r.json(t)["status"] != "success" || uses != 1 {
				t.Fatalf("legacy secret with compat: %s (uses %v), want 200 and 1 use", r, uses)
			}
			l := doHeader(t, c, "GET", e.baseURL()+"/agents", bearerHeader(testSecret), nil)
			if l.code != http.StatusOK || !strings.Contains(string(l.body), `"legacy1"`) || e.metrics()["meshd_legacy_secret_uses_total"] != 2 {
				t.Errorf("GET /agents with the legacy secret: %s", l)
			}
			// Compat covers the agent routes only, never the PKI ones.
			if r := doHeader(t, c, "POST", e.baseURL()+"/renew", bearerHeader(testSecret), map[string]string{"csr": "x"}); r.code != http.StatusUnauthorized {
				t.Errorf("POST /renew with the legacy secret: %s, want 401", r)
			}
			// A wrong secret is no certificate either.
			if r := doHeader(t, c, "POST", e.baseURL()+"/heartbeat", bearerHeader("wrong-"+testSecret), heartbeat("legacy2", 9002)); r.code != http.StatusForbidden {
				t.Errorf("POST /heartbeat with a wrong legacy secret: %s, want 403", r)
			}
			mu.Lock()
			addrs := slices.Clone(local)
			mu.Unlock()
			logged := 0
			for _, rec := range e.log.records(t) {
				if rec["msg"] == "legacy shared secret used instead of a certificate" {
					logged++
					if !slices.Contains(addrs, fmt.Sprint(rec["remote"])) || rec["level"] != "WARN" {
						t.Errorf("legacy use logged with remote %v, want one of the caller's addresses %v", rec["remote"], addrs)
					}
				}
			}
			if logged != 2 {
				t.Errorf("%d legacy uses logged, want 2", logged)
			}
			e.checkNotLeaked("bootstrap secret", testSecret)
		})
	}
}

// TestE2ERenewKeepsKey: a renewal without a CSR re-issues for the key the
// handshake proved, and a CSR for that same key is not asked to prove it
// again; a CSR for any other key still must.
func TestE2ERenewKeepsKey(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	n := e.enrollNode(clock, testSecret, "ct310")
	nc := e.freshClient(&n.cert)

	r := e.do(nc, "POST", "/renew", map[string]any{})
	if r.code != http.StatusOK {
		t.Fatalf("renew without a CSR: %s", r)
	}
	certs, err := pemfile.ParseCerts([]byte(r.json(t)["certificate"].(string)))
	if err != nil || certs[0].Subject.CommonName != "ct310.mesh" || !sameKey(n.key.Public(), certs[0].PublicKey) {
		t.Fatalf("renew without a CSR issued %v (%v), want ct310.mesh with the node's key", certs, err)
	}
	if !slices.Equal(certs[0].DNSNames, n.bundle.Certificate.DNSNames) {
		t.Errorf("renew without a CSR: DNS names %v, want %v", certs[0].DNSNames, n.bundle.Certificate.DNSNames)
	}
	if recs, _ := e.ca.st.CertsByName(ctx, "ct310.mesh"); len(recs) != 2 {
		t.Errorf("ct310.mesh has %d recorded certificates, want 2", len(recs))
	}

	// A CSR whose signature no longer verifies: for the proven key the
	// handshake stands in for it, for another key it is refused.
	if r := e.do(nc, "POST", "/renew", map[string]string{"csr": brokenCSR(t, "ct310.mesh", n.key)}); r.code != http.StatusOK {
		t.Errorf("renew with the proven key's CSR, its signature broken: %s, want 200", r)
	}
	other := e.newNodeKey()
	if r := e.do(nc, "POST", "/renew", map[string]string{"csr": brokenCSR(t, "ct310.mesh", other)}); r.code != http.StatusBadRequest && r.code != http.StatusForbidden {
		t.Errorf("renew with another key's CSR, its signature broken: %s, want a refusal", r)
	}
	if recs, _ := e.ca.st.CertsByName(ctx, "ct310.mesh"); len(recs) != 3 {
		t.Errorf("ct310.mesh has %d recorded certificates, want 3", len(recs))
	}
}

// brokenCSR is csrPEM with the last byte of its signature flipped.
func brokenCSR(t *testing.T, cn string, key crypto.Signer) string {
	t.Helper()
	block, _ := pem.Decode([]byte(csrPEM(t, cn, key)))
	block.Bytes[len(block.Bytes)-1] ^= 0xff
	return string(pem.EncodeToMemory(block))
}
