// Package enrolltest runs an in-process stand-in for meshd's public PKI
// routes, speaking the wire contract of docs/enrollment.md: POST /enroll,
// POST /agent-cert, POST /renew, GET /crl, GET /bundle,
// GET /revocations/watch and GET /health, over TLS on loopback with a
// throwaway mesh CA. It is for unit tests of clients of that contract
// (package enroll, trust/watch, meshctl); meshd's own tests cover the
// real server.
package enrolltest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Config configures a Server. The zero value is useful.
type Config struct {
	// Secret is the bootstrap secret /enroll accepts; "" accepts none.
	Secret string
	// LeafTTL is the lifetime of issued certificates; 0 means 90 days.
	LeafTTL time.Duration
	// TrustDomain is the SPIFFE trust domain; "" means mesh.local.
	TrustDomain string
	// Now is the server's clock: issued certificates start at Now() - 1
	// min, and client certificates are verified at Now(). nil means
	// time.Now.
	Now func() time.Time
	// PresentRoot makes the server present the root in its handshake,
	// after its leaf and intermediate.
	PresentRoot bool
	// KeepAlive is the interval of the watch stream's ": keep-alive"
	// comments; 0 means 15 s.
	KeepAlive time.Duration
	// RenewAfter, when set, gives the renew_after of every issuance
	// answer (meshd 0.4 and later); nil leaves it out, as an older meshd
	// does.
	RenewAfter func(leaf *x509.Certificate) time.Time
}

// Request is one request the server received.
type Request struct {
	Method, Path string
	// Authorization is the request's Authorization header.
	Authorization string
	// ClientCN is the common name of a verified client certificate.
	ClientCN string
	// LastEventID and After are the resume point a watcher sent.
	LastEventID, After string
	Accept             string
}

// Server is a fake meshd. Its methods are safe for concurrent use.
type Server struct {
	// URL is https://127.0.0.1:port.
	URL string
	// Root and Intermediate are the mesh CA.
	Root, Intermediate *x509.Certificate

	cfg     Config
	rootKey crypto.Signer
	intKey  crypto.Signer
	srv     *httptest.Server

	mu         sync.Mutex
	tokens     map[string]*joinToken
	issued     []*x509.Certificate
	revoked    map[string]bool // serials
	events     []meshapi.RevocationEvent
	subs       map[*sub]struct{}
	fail       map[string][]canned
	streamDown bool
	crl        []byte // PEM served instead of the real CRL
	crlNumber  int64
	requests   []Request
	renewHdr   string // Meshtrust-Renew-After on /health answers
}

type joinToken struct {
	node    string
	expires time.Time
	used    bool
}

type canned struct {
	status     int
	msg        string
	retryAfter string
}

type sub struct {
	notify chan struct{}
	drop   chan struct{}
}

// NewServer starts a Server on loopback; it is closed when the test ends.
func NewServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	if cfg.LeafTTL == 0 {
		cfg.LeafTTL = 90 * 24 * time.Hour
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	s := &Server{cfg: cfg, tokens: map[string]*joinToken{}, revoked: map[string]bool{}, subs: map[*sub]struct{}{}, fail: map[string][]canned{}}
	now := time.Now()
	s.rootKey, s.Root = mustCA(tb, "fake mesh root", nil, nil, now)
	s.intKey, s.Intermediate = mustCA(tb, "fake mesh intermediate", s.Root, s.rootKey, now)

	srvKey := newKey(tb)
	srvCert := s.sign(tb, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "meshd.mesh"},
		DNSNames:    []string{"localhost", "meshd.mesh"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:   now.Add(-5 * 365 * 24 * time.Hour),
		NotAfter:    now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, srvKey.Public())

	mux := http.NewServeMux()
	mux.HandleFunc("POST /enroll", s.enroll)
	mux.HandleFunc("POST /agent-cert", s.agentCert)
	mux.HandleFunc("POST /renew", s.renew)
	mux.HandleFunc("GET /bundle", s.bundle)
	mux.HandleFunc("GET /crl", s.crlHandler)
	mux.HandleFunc("GET /revocations/watch", s.watch)
	mux.HandleFunc("GET /health", s.health)
	s.srv = httptest.NewUnstartedServer(s.record(mux))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	pool := x509.NewCertPool()
	pool.AddCert(s.Root)
	presented := [][]byte{srvCert.Raw, s.Intermediate.Raw}
	if cfg.PresentRoot {
		presented = append(presented, s.Root.Raw)
	}
	s.srv.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: presented, PrivateKey: srvKey, Leaf: srvCert}},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		Time:         cfg.Now,
	}
	s.srv.StartTLS()
	s.URL = s.srv.URL
	tb.Cleanup(s.Close)
	return s
}

// Close drops every watch stream and stops the server.
func (s *Server) Close() {
	s.DropStreams()
	s.srv.Close()
}

// Roots returns a pool holding the mesh root.
func (s *Server) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.Root)
	return p
}

// RootPEM returns the mesh root in PEM.
func (s *Server) RootPEM() []byte {
	return pemfile.EncodeCerts(s.Root)
}

// RootFingerprint returns the lowercase hex SHA-256 of the root.
func (s *Server) RootFingerprint() string {
	sum := sha256.Sum256(s.Root.Raw)
	return hex.EncodeToString(sum[:])
}

// AddToken registers a join token for node, valid until expires.
func (s *Server) AddToken(token, node string, expires time.Time) {
	s.mu.Lock()
	s.tokens[token] = &joinToken{node: node, expires: expires}
	s.mu.Unlock()
}

// FailNext makes the next n requests to path answer status with
// {"error": msg} (and Retry-After when retryAfter is not "").
func (s *Server) FailNext(path string, n, status int, msg, retryAfter string) {
	s.mu.Lock()
	for range n {
		s.fail[path] = append(s.fail[path], canned{status, msg, retryAfter})
	}
	s.mu.Unlock()
}

// Requests returns every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Issued returns every certificate issued so far.
func (s *Server) Issued() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*x509.Certificate(nil), s.issued...)
}

// Revoke revokes a certificate serial (lowercase hex): it is refused from
// now on, listed in the CRL and published on the watch stream.
func (s *Server) Revoke(serial, commonName, reason string) int64 {
	s.mu.Lock()
	s.revoked[serial] = true
	seq := s.publishLocked(meshapi.RevocationEvent{Serial: serial, IssuerKeyID: hex.EncodeToString(s.Intermediate.SubjectKeyId), CommonName: commonName, Reason: reason})
	s.mu.Unlock()
	return seq
}

// RevokeEntity publishes the revocation of a partner entity.
func (s *Server) RevokeEntity(name, reason string) int64 {
	s.mu.Lock()
	seq := s.publishLocked(meshapi.RevocationEvent{Entity: name, Reason: reason})
	s.mu.Unlock()
	return seq
}

func (s *Server) publishLocked(e meshapi.RevocationEvent) int64 {
	e.Seq = int64(len(s.events) + 1)
	e.Time = s.cfg.Now().UTC().Truncate(time.Second)
	s.events = append(s.events, e)
	for sb := range s.subs {
		select {
		case sb.notify <- struct{}{}:
		default:
		}
	}
	return e.Seq
}

// SetStreamDown makes GET /revocations/watch answer 503 while down is set,
// and drops the open streams when it is set.
func (s *Server) SetStreamDown(down bool) {
	s.mu.Lock()
	s.streamDown = down
	s.mu.Unlock()
	if down {
		s.DropStreams()
	}
}

// DropStreams ends every open watch stream, as a restart of meshd would.
func (s *Server) DropStreams() {
	s.mu.Lock()
	for sb := range s.subs {
		close(sb.drop)
		delete(s.subs, sb)
	}
	s.mu.Unlock()
}

// Streams returns the number of open watch streams.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

// SetCRL makes GET /crl answer data (PEM) instead of the CRL of the
// revocations; nil restores it.
func (s *Server) SetCRL(data []byte) {
	s.mu.Lock()
	s.crl = data
	s.mu.Unlock()
}

// CRL returns a CRL of the revocations so far, signed by the
// intermediate, in DER.
func (s *Server) CRL(tb testing.TB) []byte {
	tb.Helper()
	der, err := s.buildCRL()
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func (s *Server) buildCRL() ([]byte, error) {
	s.mu.Lock()
	s.crlNumber++
	n := s.crlNumber
	var entries []x509.RevocationListEntry
	for serial := range s.revoked {
		sn, ok := new(big.Int).SetString(serial, 16)
		if !ok {
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: s.cfg.Now().Add(-time.Minute), ReasonCode: 1})
	}
	s.mu.Unlock()
	now := s.cfg.Now()
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(n), ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(7 * 24 * time.Hour),
		RevokedCertificateEntries: entries,
	}, s.Intermediate, s.intKey)
}

// Issue returns a certificate for cn ("ct111.mesh", "opus@ct111") with a
// fresh key, signed by the intermediate under its profile.
func (s *Server) Issue(tb testing.TB, cn string) tls.Certificate {
	tb.Helper()
	id, err := identity.Parse(cn)
	if err != nil {
		tb.Fatal(err)
	}
	key := newKey(tb)
	c, err := s.issue(id, key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, s.Intermediate.Raw}, PrivateKey: key, Leaf: c}
}

// record logs each request and serves canned failures.
func (s *Server) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := Request{
			Method: r.Method, Path: r.URL.Path, Authorization: r.Header.Get("Authorization"),
			LastEventID: r.Header.Get("Last-Event-ID"), After: r.URL.Query().Get("after"), Accept: r.Header.Get("Accept"),
		}
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			rec.ClientCN = r.TLS.VerifiedChains[0][0].Subject.CommonName
		}
		s.mu.Lock()
		s.requests = append(s.requests, rec)
		var c *canned
		if q := s.fail[r.URL.Path]; len(q) > 0 {
			c, s.fail[r.URL.Path] = &q[0], q[1:]
		}
		s.mu.Unlock()
		if c != nil {
			if c.retryAfter != "" {
				w.Header().Set("Retry-After", c.retryAfter)
			}
			writeError(w, c.status, c.msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, meshapi.ErrorResponse{Error: msg})
}

// SetRenewHeader makes the answers to GET /health carry
// Meshtrust-Renew-After: v, as meshd's do for a certificate of a tainted
// intermediate; "" drops it.
func (s *Server) SetRenewHeader(v string) {
	s.mu.Lock()
	s.renewHdr = v
	s.mu.Unlock()
}

// renewHeader sets the header SetRenewHeader asked for.
func (s *Server) renewHeader(w http.ResponseWriter) {
	s.mu.Lock()
	v := s.renewHdr
	s.mu.Unlock()
	if v != "" {
		w.Header().Set(meshapi.HeaderRenewAfter, v)
	}
}

func (s *Server) issuedJSON(c *x509.Certificate, withChain bool) meshapi.IssuedCert {
	out := meshapi.IssuedCert{Certificate: string(pemfile.EncodeCerts(c)), Serial: c.SerialNumber.Text(16), NotAfter: c.NotAfter.UTC()}
	if s.cfg.RenewAfter != nil {
		out.RenewAfter = s.cfg.RenewAfter(c).UTC()
	}
	if withChain {
		out.Chain = string(pemfile.EncodeCerts(s.Intermediate, s.Root))
	}
	return out
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	var body meshapi.EnrollRequest
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "malformed body: "+err.Error())
		return
	}
	id, err := identity.NewNode(body.NodeID)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cred, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || cred == "" {
		writeError(w, http.StatusUnauthorized, "invalid bootstrap credential")
		return
	}
	csr, err := parseCSR(body.CSR, id.CommonName())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.mu.Lock()
	tok := s.tokens[cred]
	switch {
	case tok != nil && (tok.used || s.cfg.Now().After(tok.expires)):
		s.mu.Unlock()
		writeError(w, http.StatusUnauthorized, "invalid bootstrap credential")
		return
	case tok != nil && tok.node != body.NodeID:
		s.mu.Unlock()
		writeError(w, http.StatusForbidden, fmt.Sprintf("this join token is for another node, not %q", body.NodeID))
		return
	case tok != nil:
		tok.used = true
	case s.cfg.Secret != "" && subtle.ConstantTimeCompare([]byte(cred), []byte(s.cfg.Secret)) == 1:
		if s.liveLocked(id.CommonName()) {
			s.mu.Unlock()
			writeError(w, http.StatusConflict, fmt.Sprintf("node %q already holds a valid certificate; revoke it first or use a join token", body.NodeID))
			return
		}
	default:
		s.mu.Unlock()
		writeError(w, http.StatusUnauthorized, "invalid bootstrap credential")
		return
	}
	s.mu.Unlock()
	c, err := s.issue(id, csr.PublicKey)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, s.issuedJSON(c, true))
}

// liveLocked reports whether cn holds an unrevoked, unexpired certificate.
func (s *Server) liveLocked(cn string) bool {
	now := s.cfg.Now()
	for _, c := range s.issued {
		if c.Subject.CommonName == cn && now.Before(c.NotAfter) && !s.revoked[c.SerialNumber.Text(16)] {
			return true
		}
	}
	return false
}

// caller returns the identity of the verified, unrevoked client
// certificate, or answers 403.
func (s *Server) caller(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		writeError(w, http.StatusForbidden, "client certificate required")
		return identity.Identity{}, false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	s.mu.Lock()
	revoked := s.revoked[leaf.SerialNumber.Text(16)]
	s.mu.Unlock()
	if revoked {
		writeError(w, http.StatusForbidden, fmt.Sprintf("certificate %q (serial %s) was revoked", leaf.Subject.CommonName, leaf.SerialNumber.Text(16)))
		return identity.Identity{}, false
	}
	id, err := identity.FromCertificate(leaf, mustTD(s.cfg.TrustDomain))
	if err != nil {
		writeError(w, http.StatusForbidden, err.Error())
		return identity.Identity{}, false
	}
	return id, true
}

func (s *Server) agentCert(w http.ResponseWriter, r *http.Request) {
	node, ok := s.caller(w, r)
	if !ok {
		return
	}
	var body meshapi.AgentCertRequest
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "malformed body: "+err.Error())
		return
	}
	if node.Kind != identity.KindNode {
		writeError(w, http.StatusForbidden, "only a node certificate mints agent certificates")
		return
	}
	id, err := identity.NewAgent(body.AgentID, node.Node)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	csr, err := parseCSR(body.CSR, id.CommonName())
	if err != nil {
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	c, err := s.issue(id, csr.PublicKey)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, s.issuedJSON(c, true))
}

func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	self, ok := s.caller(w, r)
	if !ok {
		return
	}
	var body meshapi.RenewRequest
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "malformed body: "+err.Error())
		return
	}
	// No CSR keeps the key of the certificate the handshake presented.
	pub := r.TLS.VerifiedChains[0][0].PublicKey
	if body.CSR != "" {
		csr, err := parseCSR(body.CSR, self.CommonName())
		if err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		pub = csr.PublicKey
	}
	if len(body.Agents) > 0 && self.Kind != identity.KindNode {
		writeError(w, http.StatusForbidden, "only a node renews agents")
		return
	}
	c, err := s.issue(self, pub)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := meshapi.RenewResponse{IssuedCert: s.issuedJSON(c, true), Agents: []meshapi.IssuedCert{}}
	for _, a := range body.Agents {
		id, err := identity.NewAgent(a.AgentID, self.Node)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		acsr, err := parseCSR(a.CSR, id.CommonName())
		if err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		ac, err := s.issue(id, acsr.PublicKey)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		j := s.issuedJSON(ac, false)
		j.AgentID = a.AgentID
		out.Agents = append(out.Agents, j)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.caller(w, r); !ok {
		return
	}
	s.renewHeader(w)
	writeJSON(w, http.StatusOK, map[string]string{"service": "meshd", "status": "healthy"})
}

func (s *Server) bundle(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(pemfile.EncodeCerts(s.Root, s.Intermediate))
}

func (s *Server) crlHandler(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	override := s.crl
	s.mu.Unlock()
	pemWanted := strings.Contains(r.Header.Get("Accept"), "application/x-pem-file")
	if override != nil && pemWanted {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(override)
		return
	}
	der, err := s.buildCRL()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if pemWanted {
		w.Header().Set("Content-Type", "application/x-pem-file")
		pem.Encode(w, &pem.Block{Type: "X509 CRL", Bytes: der})
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Write(der)
}

// watch serves the revocation feed as server-sent events, resuming after
// Last-Event-ID or ?after.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	after := r.Header.Get("Last-Event-ID")
	if after == "" {
		after = r.URL.Query().Get("after")
	}
	var seq int64
	if after != "" {
		n, err := strconv.ParseInt(after, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "Last-Event-ID / after: want a sequence number")
			return
		}
		seq = n
	}
	sb := &sub{notify: make(chan struct{}, 1), drop: make(chan struct{})}
	s.mu.Lock()
	if s.streamDown {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "revocation feed unavailable")
		return
	}
	s.subs[sb] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, sb)
		s.mu.Unlock()
	}()
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	tick := time.NewTicker(s.cfg.KeepAlive)
	defer tick.Stop()
	for {
		s.mu.Lock()
		var pending []meshapi.RevocationEvent
		if seq < int64(len(s.events)) {
			pending = append(pending, s.events[seq:]...)
		}
		s.mu.Unlock()
		for _, e := range pending {
			data, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, meshapi.EventRevocation, data)
			seq = e.Seq
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-sb.drop:
			return
		case <-sb.notify:
		case <-tick.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		}
	}
}

// issue signs a certificate for id under its profile.
func (s *Server) issue(id identity.Identity, pub crypto.PublicKey) (*x509.Certificate, error) {
	sid, err := id.SPIFFEID(mustTD(s.cfg.TrustDomain))
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	u, _ := url.Parse(sid.String())
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: id.CommonName()},
		URIs:         []*url.URL{u},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(s.cfg.LeafTTL),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if id.Kind == identity.KindNode {
		tmpl.DNSNames = identity.NodeDNSNames(id.Node)
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.Intermediate, pub, s.intKey)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.issued = append(s.issued, c)
	s.mu.Unlock()
	return c, nil
}

func (s *Server) sign(tb testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	tb.Helper()
	tmpl.SerialNumber = randSerial()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.Intermediate, pub, s.intKey)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// parseCSR parses a PEM CSR, checks its signature, and requires its CN to
// be empty or want.
func parseCSR(data, want string) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode([]byte(data))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("bad CSR: no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bad CSR: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("bad CSR: %v", err)
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != want {
		return nil, fmt.Errorf("the request names %q but is being signed for %q", cn, want)
	}
	return csr, nil
}

func mustCA(tb testing.TB, cn string, parent *x509.Certificate, parentKey crypto.Signer, now time.Time) (crypto.Signer, *x509.Certificate) {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-5 * 365 * 24 * time.Hour), // wide, for tests that move Now
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	} else {
		tmpl.MaxPathLenZero = true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return key, c
}

func newKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func randSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

func mustTD(name string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(name) }
