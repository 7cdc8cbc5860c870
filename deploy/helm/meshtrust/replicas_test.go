package meshtrust_test

import (
	"bytes"
	"cmp"
	"crypto"
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
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/kubetest"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/meshdtest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// pod is one meshd replica run as a process with the chart's rendered
// arguments and environment, its pod's paths moved to directories of the
// test's.
type pod struct {
	name      string
	addr      string // the agent port
	data      string // --data-dir
	secretDir string // where its CA Secret is "mounted"
	cmd       *exec.Cmd
	stderr    *logtest.Buffer
	done      chan error
}

// caMaterial is what the test keeps of the mesh's root, to sign
// intermediates as cert-manager's CA issuer would.
type caMaterial struct {
	root    *x509.Certificate
	rootKey crypto.Signer
	roots   *x509.CertPool
}

// intermediate signs a new intermediate under the root, in the shape
// meshtrust's own (a CA that signs leaves only, the trust domain as its
// organisation), and returns the Secret's files for it.
func (m *caMaterial) intermediate(t *testing.T, name string) (*x509.Certificate, map[string][]byte) {
	t.Helper()
	root := &pkitest.CA{Cert: m.root, Key: m.rootKey, Root: m.root}
	now := time.Now()
	in := root.Intermediate(t, name, pkitest.Validity(now.Add(-time.Minute), now.Add(30*24*time.Hour)),
		func(c *x509.Certificate) { c.Subject.Organization = m.root.Subject.Organization })
	return in.Cert, map[string][]byte{"tls.crt": in.PEM(), "tls.key": pkitest.KeyPEM(t, in.Key), "ca.crt": root.PEM()}
}

// startPod starts meshd with the rendered args and env, each pod path
// moved: the data directory, the listen address, the serving certificate,
// the CA Secret's mount. A path of the pod the test does not know fails
// the test, so a chart change that adds one is seen here first.
func startPod(t *testing.T, meshd, name string, args []string, env []map[string]any, dsn, tlsDir, kubeconfig string, secret map[string][]byte) *pod {
	t.Helper()
	return startPodWith(t, meshd, name, args, env, podSetup{dsn: dsn, tlsDir: tlsDir, kubeconfig: kubeconfig, secret: secret})
}

// podSetup is what a pod gets from the cluster and its node that a test
// provides instead.
type podSetup struct {
	dsn, tlsDir, kubeconfig string
	// secret is the CA Secret's files; nil mounts none.
	secret map[string][]byte
	// data is the data directory (its volume); "" is a new, empty one.
	data string
	// paths maps more flags that name a pod path to the test's path.
	paths map[string]string
	// env is the environment a pod has from its node, NAME=value each
	// (a PKCS#11 module's configuration).
	env []string
}

// startPodWith is startPod with a setup beyond the CA Secret.
func startPodWith(t *testing.T, meshd, name string, args []string, env []map[string]any, s podSetup) *pod {
	t.Helper()
	base := t.TempDir()
	p := &pod{name: name, data: cmp.Or(s.data, filepath.Join(base, "data")), secretDir: filepath.Join(base, "ca-secret"), stderr: &logtest.Buffer{}, done: make(chan error, 1)}
	dsn, tlsDir, kubeconfig := s.dsn, s.tlsDir, s.kubeconfig
	if s.secret != nil {
		kubetest.MountSecret(t, p.secretDir, s.secret)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	ln.Close()
	var run []string
	for _, a := range args {
		flag, v, _ := strings.Cut(a, "=")
		switch flag {
		case "--data-dir":
			v = p.data
		case "--listen":
			v = p.addr
		case "--tls-cert":
			v = filepath.Join(tlsDir, "tls.crt")
		case "--tls-key":
			v = filepath.Join(tlsDir, "tls.key")
		case "--ca-from-secret":
			v = p.secretDir
		default:
			if to, ok := s.paths[flag]; ok {
				v = to
			} else if strings.HasPrefix(v, "/") {
				t.Fatalf("the chart gives meshd the pod path %s; teach this test where it is", a)
			}
		}
		run = append(run, flag+"="+v)
	}
	p.cmd = exec.Command(meshd, run...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + base, "KUBECONFIG=" + kubeconfig}, s.env...)
	for _, e := range env {
		switch {
		case e["name"] == "DATABASE_URL" && e["valueFrom"] != nil:
			p.cmd.Env = append(p.cmd.Env, "DATABASE_URL="+dsn)
		case e["value"] != nil:
			p.cmd.Env = append(p.cmd.Env, fmt.Sprintf("%s=%s", e["name"], e["value"]))
		default:
			t.Fatalf("the chart gives meshd the variable %v from the cluster; teach this test its value", e)
		}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("meshd %s %s\n%s", name, strings.Join(run, " "), p.stderr)
		}
	})
	eventually.TrueWithin(t, time.Minute, "meshd "+name+" serving", func() bool {
		p.alive(t)
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		_, err = os.Stat(filepath.Join(p.data, "admin.sock"))
		return err == nil
	})
	return p
}

// alive fails the test if meshd has exited: every step happens without a
// restart.
func (p *pod) alive(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("meshd %s exited: %v\n%s", p.name, err, p.stderr)
	default:
	}
}

// admin calls meshd's admin API on its unix socket.
func (p *pod) admin(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	return meshdtest.Admin(t, p.data, method, path, body)
}

// issued is a certificate a replica issued, with its key.
type issued struct {
	cert  *x509.Certificate
	chain []*x509.Certificate // the intermediate and the root, as answered
	tls   tls.Certificate
}

// agentCert asks p for agent's certificate over node's client.
func agentCert(t *testing.T, node *http.Client, p *pod, agent string) (*issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: agent + "@ct120"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	code, body := meshdtest.Call(node, "POST", "https://"+p.addr+"/agent-cert", meshapi.AgentCertRequest{AgentID: agent, CSR: csr})
	if code != http.StatusCreated {
		return nil, fmt.Errorf("POST /agent-cert for %s on %s: %d %s", agent, p.name, code, body)
	}
	var out meshapi.IssuedCert
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("agent-cert answer: %w: %s", err, body)
	}
	leaf, err := pemfile.ParseCerts([]byte(out.Certificate))
	if err != nil {
		return nil, err
	}
	chain, err := pemfile.ParseCerts([]byte(out.Chain))
	if err != nil {
		return nil, err
	}
	is := &issued{cert: leaf[0], chain: chain, tls: tls.Certificate{Certificate: [][]byte{leaf[0].Raw}, PrivateKey: key, Leaf: leaf[0]}}
	for _, c := range chain {
		is.tls.Certificate = append(is.tls.Certificate, c.Raw)
	}
	return is, nil
}

// crlNumbers reads the CRL of intermediate in from p: its number and the
// serials it lists.
func crlOf(t *testing.T, c *http.Client, p *pod, in *x509.Certificate) (*big.Int, map[string]bool) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+p.addr+"/crl", nil)
	req.Header.Set("Accept", "application/x-pem-file")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET /crl on %s: %v", p.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			t.Fatalf("GET /crl on %s: %v", p.name, err)
		}
		if !bytes.Equal(crl.AuthorityKeyId, in.SubjectKeyId) {
			continue
		}
		if err := crl.CheckSignatureFrom(in); err != nil {
			t.Fatalf("the CRL %s serves for %q: %v", p.name, in.Subject, err)
		}
		listed := map[string]bool{}
		for _, e := range crl.RevokedCertificateEntries {
			listed[e.SerialNumber.Text(16)] = true
		}
		return crl.Number, listed
	}
	t.Fatalf("%s serves no CRL of %q", p.name, in.Subject)
	return nil, nil
}

// TestReplicasValuesProcess: the replicas values combination (three
// replicas, PostgreSQL, the intermediate from a kubernetes.io/tls Secret)
// runs as rendered: three meshd processes built from the tree, with the
// StatefulSet's arguments and environment — only the paths and addresses a
// pod has and a test does not are moved; the Secret's directory is
// written as the kubelet writes it — on one PostgreSQL. Every replica
// issues (serials unique across them, CRL numbers only growing with the
// revocations they list), a revocation on one evicts the agent on all,
// and a new intermediate in the Secret becomes the one every replica
// signs with, none restarted, the old one still trusted until it expires.
func TestReplicasValuesProcess(t *testing.T) {
	args, env := meshdContainer(t, filepath.Join("ci", "replicas-values.yaml"))
	cluster := kubetest.Shared(t)
	pg := pgtest.Start(t)
	dsn := pg.Schema(t)
	meshd := buildMeshd(t)
	ctx := t.Context()

	// The operator's side: the root (its key stays here, off the
	// replicas) and the first intermediate, made by meshtrust's own CA
	// commands on the shared database.
	op := t.TempDir()
	cfg := ca.Config{RootDir: filepath.Join(op, "root"), Dir: filepath.Join(op, "ca"), TrustDomain: "mesh.local"}
	st, err := sqlstore.OpenPostgres(ctx, dsn, sqlstore.WithoutListen())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := ca.Init(ctx, cfg, st); err != nil {
		t.Fatal(err)
	}
	first, err := ca.IssueIntermediate(ctx, cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	opCA, err := ca.Open(ctx, cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := pemfile.ReadKey(filepath.Join(cfg.RootDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	m := &caMaterial{root: opCA.Root(), rootKey: rootKey, roots: x509.NewCertPool()}
	m.roots.AddCert(m.root)
	intKey, err := os.ReadFile(filepath.Join(cfg.Dir, "intermediate", "int.key"))
	if err != nil {
		t.Fatal(err)
	}
	secret := map[string][]byte{"tls.crt": pemfile.EncodeCerts(first), "tls.key": intKey, "ca.crt": pemfile.EncodeCerts(m.root)}

	// meshd's serving certificate (the Secret meshd-serving-cert).
	srv, err := opCA.Sign(ctx, ca.NodeRequest("meshd", "localhost", "IP:127.0.0.1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := t.TempDir()
	for from, to := range map[string]string{cfg.IssuedCertPath(srv.Cert.Subject.CommonName): "tls.crt", cfg.IssuedKeyPath(srv.Cert.Subject.CommonName): "tls.key"} {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, to), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	var pods []*pod
	for _, name := range []string{"meshd-0", "meshd-1", "meshd-2"} {
		pods = append(pods, startPod(t, meshd, name, args, env, dsn, tlsDir, cluster.Kubeconfig, secret))
	}

	// A node of the mesh, whose agents' certificates the replicas issue.
	nodeIs, err := opCA.Sign(ctx, ca.NodeRequest("ct120"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	nodeCert, err := tls.LoadX509KeyPair(cfg.IssuedCertPath(nodeIs.Cert.Subject.CommonName), cfg.IssuedKeyPath(nodeIs.Cert.Subject.CommonName))
	if err != nil {
		t.Fatal(err)
	}
	client := func(cert tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: m.roots, Certificates: []tls.Certificate{cert}, ServerName: "localhost"}}}
	}
	node := client(nodeCert)

	// issuedBy checks that is chains to the root through in.
	issuedBy := func(is *issued, in *x509.Certificate) error {
		if !bytes.Equal(is.cert.AuthorityKeyId, in.SubjectKeyId) || len(is.chain) == 0 || !is.chain[0].Equal(in) {
			return fmt.Errorf("%s is signed by %x, chain %d long; want %q", is.cert.Subject.CommonName, is.cert.AuthorityKeyId, len(is.chain), in.Subject)
		}
		pool := x509.NewCertPool()
		pool.AddCert(in)
		_, err := is.cert.Verify(x509.VerifyOptions{Roots: m.roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}

	var holder *issued // an agent's certificate, for GET /agents
	t.Run("EveryReplicaIssues", func(t *testing.T) {
		const each = 8
		var (
			mu      sync.Mutex
			serials = map[string]string{} // serial -> replica
			wg      sync.WaitGroup
		)
		for _, p := range pods {
			for i := range each {
				wg.Go(func() {
					is, err := agentCert(t, node, p, fmt.Sprintf("a-%s-%d", p.name, i))
					if err != nil {
						t.Error(err)
						return
					}
					if err := issuedBy(is, first); err != nil {
						t.Errorf("%s: %v", p.name, err)
					}
					mu.Lock()
					defer mu.Unlock()
					s := is.cert.SerialNumber.Text(16)
					if prev, dup := serials[s]; dup {
						t.Errorf("serial %s issued by %s and %s", s, prev, p.name)
					}
					serials[s] = p.name
					holder = is
				})
			}
		}
		wg.Wait()
		if len(serials) != len(pods)*each {
			t.Errorf("%d distinct serials from %d issuances", len(serials), len(pods)*each)
		}
	})
	if holder == nil {
		t.Fatal("no certificate issued")
	}
	watcher := client(holder.tls)

	t.Run("RevocationEvictsOnEvery", func(t *testing.T) {
		opus, err := agentCert(t, node, pods[1], "opus")
		if err != nil {
			t.Fatal(err)
		}
		c := client(opus.tls)
		if code, body := meshdtest.Call(c, "POST", "https://"+pods[1].addr+"/heartbeat", map[string]any{"agent_id": "opus", "http_port": 9000}); code != http.StatusOK && code != http.StatusCreated {
			t.Fatalf("opus's heartbeat to %s: %d %s", pods[1].name, code, body)
		}
		status := func(p *pod) string {
			code, body := meshdtest.Call(watcher, "GET", "https://"+p.addr+"/agents", nil)
			if code != http.StatusOK {
				t.Fatalf("GET /agents on %s: %d %s", p.name, code, body)
			}
			var out struct {
				Agents []struct{ ID, Status string }
			}
			json.Unmarshal(body, &out)
			for _, a := range out.Agents {
				if a.ID == "opus" {
					return a.Status
				}
			}
			return ""
		}
		for _, p := range pods {
			eventually.True(t, p.name+" lists opus healthy", func() bool { return status(p) == "healthy" })
		}
		if code, body := pods[0].admin(t, "POST", "/admin/revoke", meshapi.RevokeRequest{Target: "opus@ct120"}); code != http.StatusOK {
			t.Fatalf("revoke on %s: %d %s", pods[0].name, code, body)
		}
		for _, p := range pods {
			eventually.True(t, p.name+" lists opus evicted", func() bool { return status(p) == "evicted" })
			if code, _ := meshdtest.Call(c, "HEAD", "https://"+p.addr+"/heartbeat/opus", nil); code == http.StatusOK || code == http.StatusAccepted {
				t.Errorf("%s admits opus's heartbeat after its revocation: %d", p.name, code)
			}
		}
	})

	t.Run("CRLNumbersOnlyGrow", func(t *testing.T) {
		type seen struct {
			n      *big.Int
			listed map[string]bool
			from   string
		}
		var crls []seen
		for i, p := range pods {
			is, err := agentCert(t, node, p, fmt.Sprintf("crl-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			serial := is.cert.SerialNumber.Text(16)
			// Revoked through the next replica; every replica's CRL lists
			// it, under a number above every CRL that did not.
			if code, body := pods[(i+1)%len(pods)].admin(t, "POST", "/admin/revoke", meshapi.RevokeRequest{Target: serial}); code != http.StatusOK {
				t.Fatalf("revoke %s: %d %s", serial, code, body)
			}
			for _, q := range pods {
				eventually.True(t, q.name+"'s CRL lists "+serial, func() bool {
					n, listed := crlOf(t, watcher, q, first)
					crls = append(crls, seen{n, listed, q.name})
					return listed[serial]
				})
			}
		}
		for _, a := range crls {
			for _, b := range crls {
				if a.n.Cmp(b.n) < 0 {
					for s := range a.listed {
						if !b.listed[s] {
							t.Fatalf("CRL %s (from %s) lists %s, CRL %s (from %s), a higher number, does not", a.n, a.from, s, b.n, b.from)
						}
					}
				}
				if a.n.Cmp(b.n) == 0 && len(a.listed) != len(b.listed) {
					t.Fatalf("two CRLs numbered %s (from %s and %s) list %d and %d revocations", a.n, a.from, b.from, len(a.listed), len(b.listed))
				}
			}
		}
	})

	t.Run("BadSecretKeepsTheIntermediate", func(t *testing.T) {
		// The key of another intermediate: meshd-2 refuses it, reports
		// itself degraded and keeps signing with the one it has.
		_, other := m.intermediate(t, "not this one")
		bad := maps.Clone(secret)
		bad["tls.key"] = other["tls.key"]
		p := pods[2]
		kubetest.MountSecret(t, p.secretDir, bad)
		eventually.True(t, p.name+" degraded", func() bool {
			_, body := p.admin(t, "GET", "/health", nil)
			return strings.Contains(string(body), "ca_secret_unusable")
		})
		is, err := agentCert(t, node, p, "during-bad-secret")
		if err != nil {
			t.Fatal(err)
		}
		if err := issuedBy(is, first); err != nil {
			t.Errorf("with a bad Secret %s: %v", p.name, err)
		}
		kubetest.MountSecret(t, p.secretDir, secret)
		eventually.True(t, p.name+" healthy again", func() bool {
			_, body := p.admin(t, "GET", "/health", nil)
			return !strings.Contains(string(body), "ca_secret_unusable")
		})
	})

	t.Run("RotationWithoutRestart", func(t *testing.T) {
		next, files := m.intermediate(t, "meshtrust intermediate CA rotated")
		// The kubelet updates each pod's copy in its own time: one first,
		// then the others.
		kubetest.MountSecret(t, pods[0].secretDir, files)
		eventually.NoError(t, pods[0].name+" signs with the new intermediate", func() error {
			is, err := agentCert(t, node, pods[0], "rotated-0")
			if err != nil {
				return err
			}
			return issuedBy(is, next)
		})
		for _, p := range pods[1:] {
			kubetest.MountSecret(t, p.secretDir, files)
		}
		for i, p := range pods {
			p.alive(t)
			eventually.NoError(t, p.name+" signs with the new intermediate", func() error {
				is, err := agentCert(t, node, p, fmt.Sprintf("rotated-%d-b", i))
				if err != nil {
					return err
				}
				return issuedBy(is, next)
			})
			// The old intermediate stays trusted: certificates it signed
			// still work until they expire.
			if code, body := meshdtest.Call(watcher, "GET", "https://"+p.addr+"/agents", nil); code != http.StatusOK {
				t.Errorf("%s refuses a certificate of the retired intermediate: %d %s", p.name, code, body)
			}
			code, body := meshdtest.Call(watcher, "GET", "https://"+p.addr+"/bundle", nil)
			bundle, err := pemfile.ParseCerts(body)
			if code != http.StatusOK || err != nil {
				t.Fatalf("GET /bundle on %s: %d %v", p.name, code, err)
			}
			if !slices.ContainsFunc(bundle, first.Equal) || !slices.ContainsFunc(bundle, next.Equal) {
				t.Errorf("%s's bundle has %d certificates; want the retired and the new intermediate in it", p.name, len(bundle))
			}
		}
	})

	t.Run("BadSecretAtStart", func(t *testing.T) {
		_, other := m.intermediate(t, "not this one")
		bad := maps.Clone(secret)
		bad["tls.key"] = other["tls.key"]
		dir := t.TempDir()
		kubetest.MountSecret(t, dir, bad)
		cmd := exec.Command(meshd, "--data-dir", filepath.Join(t.TempDir(), "data"), "--listen", "127.0.0.1:0", "--tls-mode", "off", "--ca-from-secret", dir)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "DATABASE_URL=" + dsn}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--ca-from-secret") || !strings.Contains(string(out), "tls.key is not the key of tls.crt") {
			t.Errorf("meshd with a Secret whose key is another's: %v\n%s; want an error at start naming tls.key", err, out)
		}
	})
}
