package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/ca/catest"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// logBuffer is the servers' log sink (the server writes from many
// goroutines), read back as JSON records.
type logBuffer struct{ logtest.Buffer }

// records returns the log as parsed JSON records, failing on a line that
// is not one.
func (b *logBuffer) records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for i, line := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line %d is not a JSON record: %v\n%s", i+1, err, line)
			continue
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("log line %d has no %q: %s", i+1, k, line)
			}
		}
		out = append(out, rec)
	}
	return out
}

// hasRecord reports whether some record has level and a msg containing msg.
func (b *logBuffer) hasRecord(t testing.TB, level, msg string) bool {
	for _, r := range b.records(t) {
		if r["level"] == level && strings.Contains(fmt.Sprint(r["msg"]), msg) {
			return true
		}
	}
	return false
}

// meshCA is the mesh CA of one test, with its root and intermediate made
// 30 days in the past so that shifted clocks can mint expired and
// not-yet-valid leaves under it.
type meshCA struct {
	cfg  ca.Config
	st   *sqlstore.Store
	auth *ca.CA
}

var caPast = 30 * 24 * time.Hour

func newMeshCA(t testing.TB, dir string) *meshCA {
	t.Helper()
	cfg, st, auth := catest.New(t, dir, time.Now().Add(-caPast))
	return &meshCA{cfg: cfg, st: st, auth: auth}
}

// shifted opens the same CA with its clock at now+d and leaf lifetime ttl
// (0: the default).
func (m *meshCA) shifted(t testing.TB, d, ttl time.Duration) *ca.CA {
	t.Helper()
	cfg := m.cfg
	at := time.Now().Add(d)
	cfg.Now = func() time.Time { return at }
	cfg.LeafTTL = ttl
	c, err := ca.Open(context.Background(), cfg, m.st)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// agentCert issues agent@node with c and loads it for a TLS client.
func agentCert(t testing.TB, c *ca.CA, agent, node string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	is, err := c.Sign(context.Background(), ca.AgentRequest(agent, node), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	cn := agent + "@" + node
	cert, err := tls.LoadX509KeyPair(c.Config().IssuedCertPath(cn), c.Config().IssuedKeyPath(cn))
	if err != nil {
		t.Fatal(err)
	}
	return cert, is.Cert
}

// intermediate returns the CA's active intermediate and its key.
func (m *meshCA) intermediate(t testing.TB) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	cert, err := pemfile.ReadCert(filepath.Join(m.cfg.Dir, "intermediate", "int.crt"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pemfile.ReadKey(filepath.Join(m.cfg.Dir, "intermediate", "int.key"))
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// testCA is a small CA made with crypto/x509, standing for a partner
// entity's CA.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	// keyPEM is the key's PEM, kept so the log check can look for it.
	keyPEM []byte
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	return newTestCAUntil(t, cn, time.Now().Add(24*time.Hour))
}

// newTestCAUntil is newTestCA with a CA certificate valid until notAfter.
func newTestCAUntil(t testing.TB, cn string, notAfter time.Time) *testCA {
	t.Helper()
	key := pkitest.NewKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{cn}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pemfile.EncodeCerts(cert), keyPEM: keyPEM(t, key)}
}

// leaf issues a client certificate with common name cn.
func (c *testCA) leaf(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	return signLeaf(t, c.cert, c.key, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// signLeaf signs tmpl (validity and serial filled in when unset) with
// parent's key over a fresh key and returns it with the parent as its
// chain.
func signLeaf(t testing.TB, parent *x509.Certificate, parentKey crypto.Signer, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key := pkitest.NewKey(t)
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = randSerial(t)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(12 * time.Hour)
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, parent.Raw}, PrivateKey: key, Leaf: leaf}
}

func keyPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	b, err := pemfile.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func serialOf(c tls.Certificate) string {
	leaf := c.Leaf
	if leaf == nil {
		leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	return leaf.SerialNumber.Text(16)
}

// envOptions configures one meshd under test.
type envOptions struct {
	mode     server.TLSMode
	backends []string
	// trustDir makes a trust directory (with an empty entities/) for the
	// filestore backend.
	trustDir bool
	// poll is the revocation poll interval; default 20ms.
	poll time.Duration
	// configure, if set, adjusts meshd's Config before it starts.
	configure func(*meshd.Config)
	// store, if set, wraps the store meshd is given (a replica's link to
	// it, which a test cuts).
	store func(server.Store) server.Store
}

// env is one meshd over a real CA and SQLite store in a temporary
// directory, with a JSON log captured in memory.
type env struct {
	t        testing.TB
	dir      string
	opts     envOptions
	ca       *meshCA
	srv      *meshd.Meshd
	cfg      meshd.Config
	log      *logBuffer
	roots    *x509.CertPool
	trustDir string
	// extraKeys are private keys made outside the CA directory, for the
	// log check.
	extraKeys [][]byte
	// watcherCert is watchCert's certificate, once made.
	watcherCert *tls.Certificate
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, opts: o, log: &logBuffer{}}
	e.ca = newMeshCA(t, dir)
	if o.poll == 0 {
		o.poll = 20 * time.Millisecond
	}
	if o.trustDir {
		e.trustDir = filepath.Join(dir, "trust")
		if err := os.MkdirAll(filepath.Join(e.trustDir, "entities"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A unix socket path must stay short; the test's temp dir may not be.
	sockDir, err := os.MkdirTemp("", "meshd-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.cfg = meshd.Config{
		Config: server.Config{
			Listen:      "127.0.0.1:0",
			AdminSocket: filepath.Join(sockDir, "admin.sock"),
			TLSMode:     o.mode,
			Logger:      slog.New(slog.NewJSONHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
		Backends:       o.backends,
		TrustDir:       e.trustDir,
		RevocationPoll: o.poll,
	}
	if o.mode != server.TLSOff {
		if _, err := e.ca.auth.Sign(context.Background(), ca.NodeRequest("meshd", "localhost", "IP:127.0.0.1"), ca.WithGeneratedKey()); err != nil {
			t.Fatal(err)
		}
		e.cfg.CertFile = e.ca.cfg.IssuedCertPath("meshd.mesh")
		e.cfg.KeyFile = e.ca.cfg.IssuedKeyPath("meshd.mesh")
	}
	if o.configure != nil {
		o.configure(&e.cfg)
	}
	e.roots = x509.NewCertPool()
	e.roots.AddCert(e.ca.auth.Root())
	e.start()
	t.Cleanup(func() {
		e.stop()
		e.checkLog()
	})
	return e
}

func (e *env) start() {
	e.t.Helper()
	var st server.Store = e.ca.st
	if e.opts.store != nil {
		st = e.opts.store(st)
	}
	srv, err := meshd.New(context.Background(), e.cfg, st, e.ca.auth)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.srv = srv
}

// stop shuts meshd down and closes the store; it is idempotent.
func (e *env) stop() {
	e.t.Helper()
	if e.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			e.t.Errorf("shutdown: %v", err)
		}
		e.srv = nil
	}
	if e.ca.st != nil {
		if err := e.ca.st.Close(); err != nil {
			e.t.Errorf("close store: %v", err)
		}
		e.ca.st = nil
	}
}

// restart stops meshd and opens store, CA and server again on the same
// directories, as a process restart would; whileDown runs in between.
func (e *env) restart(whileDown ...func()) {
	e.t.Helper()
	e.stop()
	for _, f := range whileDown {
		f()
	}
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, e.ca.cfg.StorePath())
	if err != nil {
		e.t.Fatal(err)
	}
	auth, err := ca.Open(ctx, e.ca.cfg, st)
	if err != nil {
		e.t.Fatal(err)
	}
	e.ca.st, e.ca.auth = st, auth
	e.start()
}

// revokeOffline revokes serial as `meshctl ca revoke` does without meshd:
// its own store handle and CA.
func (e *env) revokeOffline(serial string) {
	e.t.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, e.ca.cfg.StorePath())
	if err != nil {
		e.t.Fatal(err)
	}
	defer st.Close()
	auth, err := ca.Open(ctx, ca.Config{RootDir: e.ca.cfg.RootDir, Dir: e.ca.cfg.Dir}, st)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := auth.Revoke(ctx, serial, 1); err != nil {
		e.t.Fatal(err)
	}
}

// checkLog asserts that the log is JSON lines and that no private key of
// the test reached it, in PEM or as its base64 body.
func (e *env) checkLog() {
	e.t.Helper()
	log := e.log.String()
	e.log.records(e.t)
	if strings.Contains(log, "PRIVATE KEY") {
		e.t.Errorf("the log mentions a PRIVATE KEY")
	}
	keys := append([][]byte{}, e.extraKeys...)
	filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".key") {
			if b, err := os.ReadFile(p); err == nil {
				keys = append(keys, b)
			}
		}
		return nil
	})
	if len(keys) < 3 {
		e.t.Errorf("found only %d private keys to look for in the log", len(keys))
	}
	for _, k := range keys {
		block, _ := pem.Decode(k)
		if block == nil {
			e.t.Errorf("a key file does not hold PEM")
			continue
		}
		body := strings.Join(strings.Fields(string(k[bytes.Index(k, []byte("-----\n"))+6:bytes.LastIndex(k, []byte("-----END"))])), "")
		// The whole body, and two slices past the ASN.1 header every key
		// of a type shares, where the secret scalar lies.
		n := len(body)
		for _, needle := range []string{body, body[n/3 : n/3+24], body[n/2 : n/2+24]} {
			if strings.Contains(strings.ReplaceAll(log, "\\n", ""), needle) {
				e.t.Errorf("the log holds part of a private key's base64 body (%q…)", needle[:8])
			}
		}
	}
}

func (e *env) baseURL() string {
	scheme := "https"
	if e.opts.mode == server.TLSOff {
		scheme = "http"
	}
	return scheme + "://" + e.srv.AgentAddr()
}

// tlsConfig presents cert (none when nil) and trusts the mesh root.
func (e *env) tlsConfig(cert *tls.Certificate) *tls.Config {
	return &tls.Config{
		RootCAs: e.roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		},
	}
}

// client returns an agent-port client presenting cert (none when nil) that
// keeps its connections alive.
func (e *env) client(cert *tls.Certificate) *http.Client {
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(cert)}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// freshClient opens a new connection for every request.
func (e *env) freshClient(cert *tls.Certificate) *http.Client {
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(cert), DisableKeepAlives: true}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// admin returns a client of the admin unix socket.
func (e *env) admin() *http.Client {
	sock := e.cfg.AdminSocket
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// reply is an HTTP answer.
type reply struct {
	code   int
	body   []byte
	header http.Header
}

func (r reply) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("answer %d is not a JSON object: %v: %s", r.code, err, r.body)
	}
	return m
}

// reason is the refusal reason of a JSON answer, or the X-Reason header of
// a HEAD.
func (r reply) reason() string {
	if h := r.header.Get("X-Reason"); h != "" {
		return h
	}
	var m struct{ Reason string }
	json.Unmarshal(r.body, &m)
	return m.Reason
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.code, bytes.TrimSpace(r.body)) }

func do(t testing.TB, c *http.Client, method, u string, body any) reply {
	t.Helper()
	return doHeader(t, c, method, u, nil, body)
}

// doHeader is do with request headers. A string or []byte body is sent as
// it is; anything else as JSON.
func doHeader(t testing.TB, c *http.Client, method, u string, hdr http.Header, body any) reply {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return reply{code: resp.StatusCode, body: data, header: resp.Header}
}

// do sends a request to the agent port.
func (e *env) do(c *http.Client, method, path string, body any) reply {
	e.t.Helper()
	return do(e.t, c, method, e.baseURL()+path, body)
}

func (e *env) adminDo(method, path string, body any) reply {
	e.t.Helper()
	return do(e.t, e.admin(), method, "http://meshd"+path, body)
}

// registerEntity registers a partner entity through the admin API.
func (e *env) registerEntity(name string, c *testCA) {
	e.t.Helper()
	r := e.adminDo("POST", "/admin/entities", map[string]any{"name": name, "ca_cert": string(c.pem)})
	if r.code != http.StatusCreated {
		e.t.Fatalf("register entity %s: %s", name, r)
	}
	e.extraKeys = append(e.extraKeys, c.keyPEM)
}

// heartbeat is a registration body.
func heartbeat(id string, port int, caps ...string) map[string]any {
	var tools []map[string]any
	for _, c := range caps {
		tools = append(tools, map[string]any{"function_name": "fn_" + c, "capability": c, "tags": []string{"t1"}})
	}
	return map[string]any{"agent_id": id, "name": id, "version": "1.0.0", "http_host": "127.0.0.1", "http_port": port,
		"description": "agent " + id, "tools": tools}
}

// agentView is an agent as GET /agents shows it.
type agentView struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Endpoint    string `json:"endpoint"`
	Description string `json:"description"`
	EntityID    string `json:"entity_id"`
	Owner       string `json:"owner"`
	// Unauthenticated marks an agent registered without a certificate.
	Unauthenticated bool   `json:"unauthenticated"`
	Status          string `json:"status"`
	Reason          string `json:"reason"`
	Capabilities    []struct {
		Name string `json:"name"`
	} `json:"capabilities"`
}

type agentList struct {
	Agents []agentView `json:"agents"`
	Count  int         `json:"count"`
}

// registeredAgent returns a client holding a fresh mesh CA certificate of
// agent@node whose heartbeat (port, capabilities caps) registered agent.
func (e *env) registeredAgent(agent, node string, port int, caps ...string) *http.Client {
	e.t.Helper()
	cert, _ := agentCert(e.t, e.ca.auth, agent, node)
	c := e.client(&cert)
	if r := e.do(c, "POST", "/heartbeat", heartbeat(agent, port, caps...)); r.code != http.StatusOK {
		e.t.Fatalf("%s's heartbeat: %s", agent, r)
	}
	return c
}

// agents lists the agents through c (an agent-port client) with query q.
func (e *env) agents(c *http.Client, q string) agentList {
	e.t.Helper()
	r := e.do(c, "GET", "/agents"+q, nil)
	if r.code != http.StatusOK {
		e.t.Fatalf("GET /agents%s: %s", q, r)
	}
	var l agentList
	if err := json.Unmarshal(r.body, &l); err != nil {
		e.t.Fatalf("GET /agents: %v: %s", err, r.body)
	}
	if l.Count != len(l.Agents) {
		e.t.Errorf("GET /agents%s: count %d, %d agents", q, l.Count, len(l.Agents))
	}
	return l
}

func (l agentList) find(id string) (agentView, bool) {
	for _, a := range l.Agents {
		if a.ID == id {
			return a, true
		}
	}
	return agentView{}, false
}

func (l agentList) ids() []string {
	var out []string
	for _, a := range l.Agents {
		out = append(out, a.ID)
	}
	return out
}

// rawConn is one keep-alive HTTP/1.1 connection to the agent port, so a
// test can see the server close it.
type rawConn struct {
	t    testing.TB
	conn *tls.Conn
	br   *bufio.Reader
}

func (e *env) dial(cert *tls.Certificate) *rawConn {
	e.t.Helper()
	cfg := e.tlsConfig(cert)
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", e.srv.AgentAddr(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return &rawConn{t: e.t, conn: conn, br: bufio.NewReader(conn)}
}

// do sends one request and reads its answer.
func (c *rawConn) do(method, path string, body any) (reply, error) {
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return reply{}, err
		}
	}
	c.conn.SetDeadline(time.Now().Add(eventually.Bound))
	defer c.conn.SetDeadline(time.Time{})
	req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: meshd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, path, len(data))
	if _, err := c.conn.Write(append([]byte(req), data...)); err != nil {
		return reply{}, err
	}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	if resp.Close {
		return reply{}, errors.New("server asked to close the connection")
	}
	return reply{code: resp.StatusCode, body: b, header: resp.Header}, nil
}

func (c *rawConn) mustDo(method, path string, body any) reply {
	c.t.Helper()
	r, err := c.do(method, path, body)
	if err != nil {
		c.t.Fatalf("%s %s on the kept-alive connection: %v", method, path, err)
	}
	return r
}

// awaitClose blocks until the server closes the connection, and returns
// when it did; it returns an error if the server sends data instead, or
// has not closed it after eventually.Bound.
func (c *rawConn) awaitClose() (time.Time, error) {
	c.conn.SetReadDeadline(time.Now().Add(eventually.Bound))
	_, err := c.br.ReadByte()
	at := time.Now()
	if err == nil {
		return at, errors.New("the server sent unexpected data")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return at, fmt.Errorf("still open at the deadline")
	}
	return at, nil
}

// metrics scrapes /metrics on the admin socket into name{labels} -> value.
func (e *env) metrics() map[string]float64 {
	e.t.Helper()
	r := e.adminDo("GET", "/metrics", nil)
	if r.code != http.StatusOK {
		e.t.Fatalf("GET /metrics: %s", r)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(r.body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			e.t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func query(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return "?" + v.Encode()
}
