package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/meshdtest"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/meshapi"
)

// replica is one meshd process of a replicated mesh.
type replica struct {
	name   string
	cmd    *exec.Cmd
	addr   string // the agent port
	data   string // --data-dir, which holds admin.sock
	stderr *logtest.Buffer
	done   chan error
}

// freeAddr returns a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startReplica starts bin/meshd with data dir data on database dsn and
// waits until its agent port answers.
func startReplica(t *testing.T, bin, name, data, dsn string, extra ...string) *replica {
	t.Helper()
	return startReplicaAt(t, bin, name, data, place{dsn: dsn, addr: freeAddr(t)}, extra...)
}

// place is where a replica runs: its database, the network namespace it
// runs in ("" the test's own) and the agent port's address.
type place struct{ dsn, netns, addr string }

// startReplicaAt is startReplica at p.
func startReplicaAt(t *testing.T, bin, name, data string, p place, extra ...string) *replica {
	t.Helper()
	r := &replica{name: name, addr: p.addr, data: data, stderr: &logtest.Buffer{}, done: make(chan error, 1)}
	args := append([]string{filepath.Join(bin, "meshd"), "--data-dir", data, "--database", p.dsn, "--listen", r.addr, "--log-level", "info",
		"--agent-cert-burst", "100000", "--agent-cert-interval", "1ms", "--max-agents-per-node", "100000"}, extra...)
	if p.netns != "" {
		// ip execs meshd in the namespace: the pid is meshd's.
		args = append([]string{"ip", "netns", "exec", p.netns}, args...)
	}
	r.cmd = exec.Command(args[0], args[1:]...)
	r.cmd.Env = cleanEnv(filepath.Join(filepath.Dir(data), "home-"+name))
	r.cmd.Stderr = r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		r.stop(t)
		if t.Failed() {
			t.Logf("meshd %s stderr:\n%s", r.name, r.stderr)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
			c.Close()
			if _, err := os.Stat(filepath.Join(data, "admin.sock")); err == nil {
				return r
			}
		}
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("meshd %s exited (%v):\n%s", r.name, err, r.stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd %s does not answer on %s within 60s:\n%s", r.name, r.addr, r.stderr)
		}
	}
}

func (r *replica) stop(t *testing.T) {
	select {
	case err := <-r.done:
		r.done <- err
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.done:
		r.done <- err
	case <-time.After(20 * time.Second):
		r.cmd.Process.Kill()
		t.Errorf("meshd %s did not stop within 20s of SIGTERM", r.name)
	}
}

// admin calls meshd's admin API on its unix socket.
func (r *replica) admin(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	code, out, err := r.adminCall(method, path, body)
	if err != nil {
		t.Fatalf("admin %s %s on %s: %v", method, path, r.name, err)
	}
	return code, out
}

// adminCall is admin without a test: the error of a replica gone
// mid-request is returned.
func (r *replica) adminCall(method, path string, body any) (int, []byte, error) {
	sock := filepath.Join(r.data, "admin.sock")
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, "http://meshd"+path, bytes.NewReader(b))
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

// mesh is the test's view of the CA the replicas share.
type mesh struct {
	cfg   ca.Config
	auth  *ca.CA
	roots *x509.CertPool
}

// identity issues cn's certificate with a key the CA keeps in its issued
// directory, and returns it for a TLS client.
func (m *mesh) identity(t *testing.T, agent, node string) tls.Certificate {
	t.Helper()
	var is *ca.Issued
	var err error
	if agent == "" {
		is, err = m.auth.Sign(t.Context(), ca.NodeRequest(node), ca.WithGeneratedKey())
	} else {
		is, err = m.auth.Sign(t.Context(), ca.AgentRequest(agent, node), ca.WithGeneratedKey())
	}
	if err != nil {
		t.Fatal(err)
	}
	cn := is.Cert.Subject.CommonName
	cert, err := tls.LoadX509KeyPair(m.cfg.IssuedCertPath(cn), m.cfg.IssuedKeyPath(cn))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func (m *mesh) client(cert tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: m.roots, Certificates: []tls.Certificate{cert}, ServerName: "localhost"}}}
}

// call does one request and returns its status and body (0 on a
// transport error).
func call(c *http.Client, method, url string, body any) (int, []byte) {
	return meshdtest.Call(c, method, url, body)
}

// head sends a HEAD and returns its status and X-Reason (0 and the
// error on a transport error).
func head(c *http.Client, url string) (int, string) {
	resp, err := c.Head(url)
	if err != nil {
		return 0, err.Error()
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Reason")
}

// listedAgent is what the replica tests read of an agent in GET /agents.
type listedAgent struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Owner    string `json:"owner"`
	Endpoint string `json:"endpoint"`
}

// list returns GET /agents on r.
func list(t *testing.T, c *http.Client, r *replica) []listedAgent {
	t.Helper()
	code, body := call(c, "GET", "https://"+r.addr+"/agents", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /agents on %s: %d %s", r.name, code, body)
	}
	var out struct {
		Agents []listedAgent `json:"agents"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET /agents on %s: %v: %s", r.name, err, body)
	}
	return out.Agents
}

// agents returns GET /agents as id -> status.
func agents(t *testing.T, c *http.Client, r *replica) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, a := range list(t, c, r) {
		m[a.ID] = a.Status
	}
	return m
}

func csrFor(t *testing.T, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// copyTree copies the directory src to dst, modes kept.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}

// startMesh starts three meshd replicas, A, B and C, on the database dsn,
// each with its own further flags from extra: A creates the mesh CA
// (--dev), B and C run with a copy of its CA directory, the one
// intermediate every replica signs with. It returns them with the test's
// view of the CA and a store on dsn, closed when t ends.
func startMesh(t *testing.T, bin, dsn string, extra [3][]string) ([3]*replica, *mesh, *sqlstore.Store) {
	t.Helper()
	return startMeshAt(t, bin, [3]place{{dsn: dsn, addr: freeAddr(t)}, {dsn: dsn, addr: freeAddr(t)}, {dsn: dsn, addr: freeAddr(t)}}, dsn, extra)
}

// startMeshAt is startMesh with each replica at its place; the test's
// store is on dsn.
func startMeshAt(t *testing.T, bin string, at [3]place, dsn string, extra [3][]string) ([3]*replica, *mesh, *sqlstore.Store) {
	t.Helper()
	root := t.TempDir()
	a := startReplicaAt(t, bin, "A", filepath.Join(root, "a"), at[0], append([]string{"--dev"}, extra[0]...)...)
	cfgA := ca.Config{RootDir: filepath.Join(root, "a", "root"), Dir: filepath.Join(root, "a", "ca"), TrustDomain: "mesh.local"}
	rs := [3]*replica{a}
	for i, n := range []string{"b", "c"} {
		if err := os.MkdirAll(filepath.Join(root, n), 0o700); err != nil {
			t.Fatal(err)
		}
		copyTree(t, cfgA.Dir, filepath.Join(root, n, "ca"))
		copyTree(t, cfgA.RootDir, filepath.Join(root, n, "root"))
		c := ca.Config{Dir: filepath.Join(root, n, "ca")}
		flags := append([]string{"--tls-cert", c.IssuedCertPath("meshd.mesh"), "--tls-key", c.IssuedKeyPath("meshd.mesh"),
			"--ca-dir", filepath.Join(root, n, "ca"), "--root-dir", filepath.Join(root, n, "root")}, extra[i+1]...)
		rs[i+1] = startReplicaAt(t, bin, strings.ToUpper(n), filepath.Join(root, n, "data"), at[i+1], flags...)
	}

	st, err := sqlstore.OpenPostgres(t.Context(), dsn, sqlstore.WithoutListen())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	auth, err := ca.Open(t.Context(), cfgA, st)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(cfgA.RootCertPath())
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{cfg: cfgA, auth: auth, roots: x509.NewCertPool()}
	m.roots.AppendCertsFromPEM(rootPEM)
	return rs, m, st
}

// TestReplicas runs three meshd processes, built from cmd/meshd, on one
// PostgreSQL: agents spread across them agree on GET /agents; a
// revocation on one evicts and disconnects an agent held by another (how
// soon is bench/cmd/replicas's to measure); a PostgreSQL restart under load leaves heartbeats
// served (until the staleness bound) and issuance refused with 503 until it is back; a replica
// SIGKILLed mid-revocation leaves each revocation acknowledged and in
// force everywhere, or unacknowledged and retryable, never half-applied; a replica
// SIGKILLed mid-issuance loses no acknowledged certificate.
func TestReplicas(t *testing.T) {
	bin := buildBinaries(t)
	pg := pgtest.Start(t)
	dsn := pg.Schema(t)
	rs, m, st := startMesh(t, bin, dsn, [3][]string{})
	a, b, c := rs[0], rs[1], rs[2]

	opusCert, watchCert := m.identity(t, "opus", "ct111"), m.identity(t, "watch", "ct112")
	opus, watch := m.client(opusCert), m.client(watchCert)

	// Agents spread: opus heartbeats to B, watch to A.
	for _, hb := range []struct {
		c  *http.Client
		r  *replica
		id string
	}{{opus, b, "opus"}, {watch, a, "watch"}} {
		if code, body := call(hb.c, "POST", "https://"+hb.r.addr+"/heartbeat", map[string]any{"agent_id": hb.id, "http_port": 9000}); code != http.StatusOK && code != http.StatusCreated {
			t.Fatalf("%s's heartbeat to %s: %d %s", hb.id, hb.r.name, code, body)
		}
	}
	want := map[string]string{"opus": "healthy", "watch": "healthy"}
	for _, r := range []*replica{a, b, c} {
		eventually.NoError(t, "GET /agents on "+r.name, func() error {
			if got := agents(t, watch, r); !maps(got, want) {
				return fmt.Errorf("%v, want %v", got, want)
			}
			return nil
		})
	}

	t.Run("RevocationCrossesReplicas", func(t *testing.T) {
		// opus holds a connection to B; the revocation is made on A.
		conn, err := tls.Dial("tcp", b.addr, &tls.Config{RootCAs: m.roots, Certificates: []tls.Certificate{opusCert}, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "HEAD /heartbeat/opus HTTP/1.1\r\nHost: meshd\r\n\r\n")
		buf := make([]byte, 4096)
		if n, err := conn.Read(buf); err != nil || !strings.Contains(string(buf[:n]), " 200 ") && !strings.Contains(string(buf[:n]), " 202 ") {
			t.Fatalf("opus's HEAD to B: %q, %v", buf[:n], err)
		}
		// B sends nothing more on the connection unless it closes it.
		closed := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, conn)
			closed <- err
		}()
		if code, body := a.admin(t, "POST", "/admin/revoke", meshapi.RevokeRequest{Target: "opus@ct111"}); code != http.StatusOK {
			t.Fatalf("revoke on A: %d %s", code, body)
		}
		eventually.NoError(t, "B lists opus evicted after its revocation on A", func() error {
			if got := agents(t, watch, b)["opus"]; got != "evicted" {
				return fmt.Errorf("listed %q", got)
			}
			return nil
		})
		select {
		case <-closed:
		case <-time.After(eventually.Bound):
			t.Errorf("B still holds opus's connection %v after its revocation on A", eventually.Bound)
		}
		// A applied the revocation before it answered; C applies it from
		// the change feed, like B.
		for _, r := range []*replica{a, c} {
			eventually.NoError(t, r.name+" lists opus evicted after its revocation on A", func() error {
				if got := agents(t, watch, r)["opus"]; got != "evicted" {
					return fmt.Errorf("listed %q", got)
				}
				return nil
			})
		}
	})

	node := m.client(m.identity(t, "", "ct120"))
	issue := func(r *replica, agent string) (int, meshapi.IssuedCert) {
		code, body := call(node, "POST", "https://"+r.addr+"/agent-cert",
			meshapi.AgentCertRequest{AgentID: agent, CSR: csrFor(t, agent+"@ct120")})
		var out meshapi.IssuedCert
		if code == http.StatusCreated {
			if err := json.Unmarshal(body, &out); err != nil {
				t.Errorf("agent-cert answer: %v: %s", err, body)
			}
		}
		return code, out
	}

	t.Run("DatabaseRestart", func(t *testing.T) {
		if !pg.Restartable() {
			t.Skip("the PostgreSQL MESHTRUST_POSTGRES_URL names cannot be restarted by a test")
		}
		// Load: watch heartbeats to every replica while the database
		// goes away and comes back.
		stop := make(chan struct{})
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			refused  []string
			answered int
			// whileDown counts each replica's heartbeats served since
			// the database stopped; stale those refused past the
			// staleness bound (replica_stale), which a slow restart may
			// outlast.
			whileDown = map[string]int{}
			stale     int
			staleBy   = map[string]int{}
			down      bool
		)
		for _, r := range []*replica{a, b, c} {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					code, reason := head(watch, "https://"+r.addr+"/heartbeat/watch")
					mu.Lock()
					answered++
					// 202 is alive too: "POST again", the topology moved.
					switch {
					case code == http.StatusOK || code == http.StatusAccepted:
						if down {
							whileDown[r.name]++
						}
					case code == http.StatusServiceUnavailable && reason == "replica_stale":
						stale++
						staleBy[r.name]++
					default:
						refused = append(refused, fmt.Sprintf("%s: %d %s", r.name, code, reason))
					}
					mu.Unlock()
				}
			})
		}
		pg.Stop(t)
		mu.Lock()
		down = true
		mu.Unlock()
		for _, r := range []*replica{a, b, c} {
			code, _ := issue(r, "down-"+strings.ToLower(r.name))
			if code != http.StatusServiceUnavailable {
				t.Errorf("issuance on %s with the database down: %d, want 503", r.name, code)
			}
		}
		code, body := b.admin(t, "POST", "/admin/revoke", meshapi.RevokeRequest{Target: "watch@ct112"})
		if code != http.StatusServiceUnavailable {
			t.Errorf("revocation on B with the database down: %d %s, want 503", code, body)
		}
		// Heartbeats keep coming meanwhile: every replica answers a good
		// number of them (each checked above), or, on a machine slow
		// enough that its staleness bound passes first, some before it
		// refuses as replica_stale.
		eventually.NoError(t, "heartbeats answered by every replica with the database down", func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range []*replica{a, b, c} {
				if whileDown[r.name] < 25 && (whileDown[r.name] == 0 || staleBy[r.name] == 0) {
					return fmt.Errorf("answered %v, refused as stale %v; want 25 answered by each replica, or some before the bound", whileDown, staleBy)
				}
			}
			return nil
		})
		pg.Restart(t)
		for _, r := range []*replica{a, b, c} {
			eventually.NoError(t, "issuance on "+r.name+" after the database's return", func() error {
				if code, _ := issue(r, "up-"+strings.ToLower(r.name)); code != http.StatusCreated {
					return fmt.Errorf("answered %d", code)
				}
				return nil
			})
		}
		close(stop)
		wg.Wait()
		if len(refused) > 0 {
			t.Errorf("%d of %d heartbeats refused around the restart: %v", len(refused), answered, refused[:min(5, len(refused))])
		}
		t.Logf("%d heartbeats answered around the restart; %d refused as replica_stale, past the staleness bound", answered, stale)
		// Nothing refused was recorded.
		for _, r := range []*replica{a, b, c} {
			certs, err := st.CertsByName(t.Context(), "down-"+strings.ToLower(r.name)+"@ct120")
			if err != nil || len(certs) != 0 {
				t.Errorf("the refused issuance on %s left %d certificates (%v)", r.name, len(certs), err)
			}
		}
	})

	t.Run("KilledMidRevocation", func(t *testing.T) {
		// Revocations through B, four at a time, until B is SIGKILLed
		// with some in flight. Each is acknowledged and in force on A
		// and C, or unacknowledged and then either in force everywhere
		// (it committed before the kill) or nowhere, and a retry on A
		// takes it: never half-applied.
		const n = 24
		certs := make([]*http.Client, n)
		for i := range n {
			certs[i] = m.client(m.identity(t, fmt.Sprintf("r%d", i), "ct130"))
		}
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			acked = map[int]bool{}
			next  = make(chan int)
		)
		for range 4 {
			wg.Go(func() {
				for i := range next {
					code, _, _ := b.adminCall("POST", "/admin/revoke", meshapi.RevokeRequest{Target: fmt.Sprintf("r%d@ct130", i)})
					if code == http.StatusOK {
						mu.Lock()
						acked[i] = true
						mu.Unlock()
					}
				}
			})
		}
		killed := false
		for i := range n {
			next <- i
			mu.Lock()
			k := len(acked) >= 6
			mu.Unlock()
			if k && !killed {
				b.cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
		close(next)
		wg.Wait()
		if !killed {
			t.Fatalf("only %d revocations acknowledged before all %d were sent", len(acked), n)
		}
		ids, err := st.RevokedIdentities(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		stored := map[string]bool{}
		for _, r := range ids {
			stored[r.Name] = true
		}
		var retried int
		for i := range n {
			name := fmt.Sprintf("r%d@ct130", i)
			switch {
			case acked[i] && !stored[name]:
				t.Errorf("the revocation of %s was acknowledged by B but is not in the store", name)
			case !stored[name]:
				retried++
				if code, body := a.admin(t, "POST", "/admin/revoke", meshapi.RevokeRequest{Target: name}); code != http.StatusOK {
					t.Errorf("retrying the unacknowledged revocation of %s on A: %d %s", name, code, body)
				}
			}
			for _, r := range []*replica{a, c} {
				eventually.NoError(t, r.name+" refuses "+name, func() error {
					if code, body := call(certs[i], "POST", "https://"+r.addr+"/heartbeat", map[string]any{"agent_id": fmt.Sprintf("r%d", i), "http_port": 9000}); code != http.StatusForbidden {
						return fmt.Errorf("%d %s", code, body)
					}
					return nil
				})
			}
		}
		t.Logf("B acknowledged %d of %d revocations before SIGKILL; %d committed unacknowledged; %d retried on A", len(acked), n, n-retried-len(acked), retried)
	})

	t.Run("KilledMidIssuance", func(t *testing.T) {
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			acked []string
		)
		for w := range 6 {
			wg.Go(func() {
				for i := 0; ; i++ {
					code, is := issue(c, fmt.Sprintf("k%d-%d", w, i))
					if code != http.StatusCreated {
						return // C is gone
					}
					mu.Lock()
					acked = append(acked, is.Serial)
					mu.Unlock()
				}
			})
		}
		eventually.True(t, "20 certificates acknowledged by C", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 20 })
		c.cmd.Process.Signal(syscall.SIGKILL)
		wg.Wait()
		if len(acked) < 20 {
			t.Fatalf("only %d certificates acknowledged before the kill", len(acked))
		}
		all, err := st.Certs(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		serials := make([]string, 0, len(all))
		for _, cert := range all {
			serials = append(serials, cert.Serial)
		}
		sort.Strings(serials)
		if len(slices.Compact(slices.Clone(serials))) != len(serials) {
			t.Errorf("duplicate serials among %d certificates", len(serials))
		}
		for _, s := range acked {
			if _, found := slices.BinarySearch(serials, s); !found {
				t.Errorf("certificate %s was acknowledged by C but is not in the store", s)
			}
		}
		t.Logf("C acknowledged %d certificates before SIGKILL; every one is stored", len(acked))
		// The survivors keep issuing.
		if code, _ := issue(a, "after-kill"); code != http.StatusCreated {
			t.Errorf("issuance on A after C was killed: %d", code)
		}
	})
}

// maps reports whether got holds want's entries.
func maps(got, want map[string]string) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
