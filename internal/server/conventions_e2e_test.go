package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/openssltest"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The certificates MCP Mesh's agents present, in their real shapes: made
// by MCP Mesh's own meshctl where it makes them (--tls-auto), else by the
// openssl CLI as Vault's PKI and SPIRE issue them.

// opensslCA is a CA made with the openssl CLI, its files in dir.
type opensslCA struct {
	dir, cert, key string
}

// newOpenSSLCA makes a self-signed EC P-256 CA with subject subj in dir.
func newOpenSSLCA(t testing.TB, dir, name, subj string) *opensslCA {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := &opensslCA{dir: dir, cert: filepath.Join(dir, name+".pem"), key: filepath.Join(dir, name+"-ca.key")}
	openssltest.Must(t, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
		"-subj", subj, "-keyout", c.key, "-out", c.cert,
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	return c
}

// issue signs a client certificate with subject subj (openssl's
// /O=…/CN=… form; "/" for an empty one) and the subjectAltName sans
// (e.g. "DNS:a,IP:127.0.0.1,URI:spiffe://td/x"; "" for none).
func (c *opensslCA) issue(t testing.TB, name, subj, sans string) tls.Certificate {
	t.Helper()
	key, csr, crt, ext := filepath.Join(c.dir, name+".key"), filepath.Join(c.dir, name+".csr"), filepath.Join(c.dir, name+".crt"), filepath.Join(c.dir, name+".ext")
	exts := "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,serverAuth\n"
	if sans != "" {
		exts += "subjectAltName=" + sans + "\n"
	}
	if err := os.WriteFile(ext, []byte(exts), 0o600); err != nil {
		t.Fatal(err)
	}
	openssltest.Must(t, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subj, "-keyout", key, "-out", csr)
	openssltest.Must(t, "x509", "-req", "-in", csr, "-CA", c.cert, "-CAkey", c.key, "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", crt)
	return loadPair(t, crt, key, c.cert)
}

// loadPair loads a certificate, its key and the chain files after it.
func loadPair(t testing.TB, certFile, keyFile string, chain ...string) tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range chain {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		certs, err := pemfile.ParseCerts(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range certs {
			pair.Certificate = append(pair.Certificate, c.Raw)
		}
	}
	return pair
}

// registerAs posts a heartbeat for id with cert and returns the reply.
func (e *env) registerAs(cert *tls.Certificate, id string) reply {
	e.t.Helper()
	return e.do(e.freshClient(cert), "POST", "/heartbeat", heartbeat(id, 9100))
}

// TestE2EMCPMeshCertificates: Vault-issued agents (CN <name>.mcp-mesh.local,
// DNS SAN, IP SAN) register from a trust-dir CA with no setting, as their
// name and as per-replica ids; partner entities keep the namespace chosen
// at registration; SPIRE SVIDs whose only identity is a SPIFFE ID bind by
// the operator's template. Every hostile variant is refused and changes
// nothing.
func TestE2EMCPMeshCertificates(t *testing.T) {
	var e *env
	e = newEnv(t, envOptions{mode: server.TLSStrict, backends: []string{"localca", "filestore"}, trustDir: true, configure: func(c *meshd.Config) {
		b, err := registry.ParseBindings("filestore=cn,trust-domain,spiffe:spiffe://mcp-mesh.local/mesh-agent", meshd.DefaultAgentTrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		c.AgentBindings = b
		c.EntityNamespaces = map[string]registry.Namespace{"globex": {Mode: registry.NamespaceFirstClaim}}
	}})
	mm := filepath.Join(e.dir, "mcpmesh")
	vault := newOpenSSLCA(t, filepath.Join(mm, "vault"), "vault-ca", "/CN=Vault PKI Intermediate")
	spire := newOpenSSLCA(t, filepath.Join(mm, "spire"), "spire-ca", "/C=US/O=SPIFFE")
	acme := newOpenSSLCA(t, filepath.Join(mm, "acme"), "acme-ca", "/O=acme/CN=acme CA")
	beta := newOpenSSLCA(t, filepath.Join(mm, "beta"), "beta-ca", "/O=beta/CN=beta CA")
	globex := newOpenSSLCA(t, filepath.Join(mm, "globex"), "globex-ca", "/O=globex/CN=globex CA")
	evil := newOpenSSLCA(t, filepath.Join(mm, "evil"), "evil-ca", "/C=US/O=SPIFFE")
	for _, c := range []*opensslCA{vault, spire} {
		copyFile(t, c.cert, filepath.Join(e.trustDir, filepath.Base(c.cert)))
	}
	copyFile(t, globex.cert, filepath.Join(e.trustDir, "entities", "globex.pem"))
	for _, r := range []struct {
		name string
		ca   *opensslCA
		ns   string
	}{{"acme", acme, "ids:weather-agent-1,geo-agent-1"}, {"beta", beta, ""}} {
		data, _ := os.ReadFile(r.ca.cert)
		if got := e.adminDo("POST", "/admin/entities", map[string]any{"name": r.name, "ca_cert": string(data), "namespace": r.ns}); got.code != http.StatusCreated {
			t.Fatalf("register %s: %s", r.name, got)
		}
	}
	eventually.True(t, "the trust dir's CAs loaded", func() bool {
		c := vault.issue(t, "probe", "/CN=probe.mcp-mesh.local", "")
		return e.registerAs(&c, "probe").code == http.StatusOK
	})

	weather := vault.issue(t, "weather", "/CN=weather-agent.mcp-mesh.local", "DNS:weather-agent.mcp-mesh.local,IP:127.0.0.1")
	geo := vault.issue(t, "geo", "/CN=geo-agent.mcp-mesh.local", "DNS:geo-agent.mcp-mesh.local,IP:10.0.0.7")
	replicaNamed := vault.issue(t, "replica-named", "/CN=weather-agent-1a2b3c4d.mcp-mesh.local", "DNS:weather-agent-1a2b3c4d.mcp-mesh.local")
	otherTD := vault.issue(t, "other-td", "/CN=weather-agent.example.org", "DNS:weather-agent.example.org")
	svid := spire.issue(t, "svid", "/C=US/O=SPIRE", "URI:spiffe://mcp-mesh.local/mesh-agent")
	svidOtherTD := spire.issue(t, "svid-other", "/C=US/O=SPIRE", "URI:spiffe://evil.local/mesh-agent")
	svidOtherWorkload := spire.issue(t, "svid-workload", "/C=US/O=SPIRE", "URI:spiffe://mcp-mesh.local/other-workload")
	svidUntrusted := evil.issue(t, "svid-evil", "/C=US/O=SPIRE", "URI:spiffe://mcp-mesh.local/mesh-agent")
	acmeWeather := acme.issue(t, "acme-weather", "/O=acme/CN=weather-agent-1.mcp-mesh.local", "DNS:weather-agent-1.mcp-mesh.local,IP:127.0.0.1")
	acmeBeta := acme.issue(t, "acme-beta", "/O=beta/CN=beta-geo.mcp-mesh.local", "DNS:beta-geo.mcp-mesh.local")
	betaGeo := beta.issue(t, "beta-geo", "/O=beta/CN=beta-geo.mcp-mesh.local", "DNS:beta-geo.mcp-mesh.local")
	betaWeather := beta.issue(t, "beta-weather", "/O=beta/CN=weather-agent-1.mcp-mesh.local", "DNS:weather-agent-1.mcp-mesh.local")
	globexPlanner := globex.issue(t, "globex-planner", "/O=globex/CN=planner.mcp-mesh.local", "DNS:planner.mcp-mesh.local")
	globexGeo := globex.issue(t, "globex-geo", "/O=globex/CN=beta-geo.mcp-mesh.local", "DNS:beta-geo.mcp-mesh.local")

	steps := []struct {
		name   string
		cert   *tls.Certificate
		id     string
		reason string // "" for admitted
	}{
		{"Vault cert, its agent name", &weather, "weather-agent", ""},
		{"Vault cert, MCP Mesh's per-replica id", &weather, "weather-agent-1a2b3c4d", ""},
		{"Vault cert of another name claiming weather-agent", &geo, "weather-agent", "identity_mismatch"},
		{"Vault cert of another name, weather's replica id", &geo, "weather-agent-0badcafe", "identity_mismatch"},
		{"Vault cert named like a claimed replica", &replicaNamed, "weather-agent-1a2b3c4d", "owned_by_other"},
		{"Vault cert of another trust domain", &otherTD, "weather-agent", "not_agent_cert"},
		{"SPIRE SVID, the seed's one workload ID: first claim", &svid, "reporter-agent", ""},
		{"SPIRE SVID cannot take a Vault agent's id", &svid, "weather-agent", "owned_by_other"},
		{"SVID outside its trust domain", &svidOtherTD, "ledger-agent", "not_agent_cert"},
		{"SVID of another workload", &svidOtherWorkload, "reporter-agent", "not_agent_cert"},
		{"SVID of an untrusted CA", &svidUntrusted, "ledger-agent", "unknown_ca"},
		{"acme's listed id, Vault-shaped", &acmeWeather, "weather-agent-1", ""},
		{"acme cert claiming beta's id", &acmeBeta, "beta-geo", "outside_namespace"},
		{"beta, prefix namespace", &betaGeo, "beta-geo", ""},
		{"beta cert claiming acme's listed id", &betaWeather, "weather-agent-1", "outside_namespace"},
		{"globex (trust dir, first-claim)", &globexPlanner, "planner", ""},
		{"globex claiming beta's claimed id", &globexGeo, "beta-geo", "owned_by_other_entity"},
	}
	for _, s := range steps {
		r := e.registerAs(s.cert, s.id)
		if s.reason == "" && r.code != http.StatusOK || s.reason != "" && (r.code != http.StatusForbidden || r.reason() != s.reason) {
			t.Errorf("%s: POST %s: %s, want %q", s.name, s.id, r, s.reason)
		}
	}
	// The refused attempts changed nothing; HEAD and DELETE check the
	// same binding.
	l := e.agents(e.client(&weather), "")
	for id, owner := range map[string]string{
		"weather-agent": "weather-agent.mcp-mesh.local", "weather-agent-1a2b3c4d": "weather-agent.mcp-mesh.local",
		"reporter-agent": "spiffe://mcp-mesh.local/mesh-agent", "weather-agent-1": "weather-agent-1.mcp-mesh.local",
		"beta-geo": "beta-geo.mcp-mesh.local", "planner": "planner.mcp-mesh.local",
	} {
		if a, ok := l.find(id); !ok || a.Owner != owner || a.Status != "healthy" {
			t.Errorf("%s: %+v, want owner %q", id, a, owner)
		}
	}
	if a, _ := l.find("beta-geo"); a.EntityID != "beta" {
		t.Errorf("beta-geo's entity = %q", a.EntityID)
	}
	if len(l.Agents) != 7 { // and probe
		t.Errorf("listed %v, want the 7 admitted", l.ids())
	}
	for _, rq := range []struct {
		cert *tls.Certificate
		path string
	}{{&geo, "/agents/weather-agent-1a2b3c4d"}, {&svidOtherTD, "/agents/reporter-agent"}, {&acmeBeta, "/agents/beta-geo"}} {
		if r := e.do(e.freshClient(rq.cert), "DELETE", rq.path, nil); r.code != http.StatusForbidden {
			t.Errorf("DELETE %s by another certificate: %s, want 403", rq.path, r)
		}
	}
	if r := e.do(e.freshClient(&geo), "HEAD", "/heartbeat/weather-agent", nil); r.code != http.StatusForbidden {
		t.Errorf("HEAD /heartbeat/weather-agent by geo-agent's certificate: %s, want 403", r)
	}
	if r := e.do(e.client(&weather), "DELETE", "/agents/weather-agent-1a2b3c4d", nil); r.code != http.StatusNoContent {
		t.Errorf("the owner's DELETE of its replica id: %s", r)
	}
	rows := e.adminDo("GET", "/admin/entities", nil)
	for _, want := range []string{`"namespace":"ids:geo-agent-1,weather-agent-1"`, `"namespace":"prefix"`, `"namespace":"first-claim"`} {
		if !strings.Contains(string(rows.body), want) {
			t.Errorf("GET /admin/entities lacks %s: %s", want, rows.body)
		}
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// mcpmeshTLSAuto makes MCP Mesh's --tls-auto trust dir with its own
// meshctl: `meshctl start --registry-only --tls-auto` writes it, then
// starts a registry on a loopback port, which is stopped once the files
// are there. It returns the trust dir.
func mcpmeshTLSAuto(t *testing.T) string {
	t.Helper()
	bin := mcpmeshBin(t)
	home := t.TempDir()
	port := strconv.Itoa(freePort(t))
	cmd := exec.Command(filepath.Join(bin, "meshctl"), "start", "--registry-only", "--tls-auto",
		"--registry-host", "127.0.0.1", "--registry-port", port, "--db-path", filepath.Join(home, "registry.db"))
	cmd.Env = append(os.Environ(), "HOME="+home, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		// The registry is meshctl's child, in its process group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	t.Cleanup(stop)
	dir := filepath.Join(home, ".mcp-mesh", "tls")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "local-dev", "registry-cert.pem"), filepath.Join(dir, "local-dev", "registry-key.pem")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("meshctl start --tls-auto wrote no trust dir in 30s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return dir
}

// TestE2EMCPMeshTLSAutoTrustDir: meshd starts on the trust dir MCP Mesh's
// `meshctl start --tls-auto` made, with MCP Mesh's own settings
// (MCP_MESH_TRUST_BACKEND=localca,filestore, no mesh CA, its registry
// certificate as the agent port's), and admits its agents: the registry
// certificate it issued, and an agent certificate of its entity CA in
// the shape its GenerateAgentCert gives (CN the agent's name, O
// local-dev), for the agent's name and per-replica ids, and for nothing
// else.
func TestE2EMCPMeshTLSAutoTrustDir(t *testing.T) {
	dir := mcpmeshTLSAuto(t)
	ld := filepath.Join(dir, "local-dev")
	entityCA := &opensslCA{dir: t.TempDir(), cert: filepath.Join(ld, "entity-cert.pem"), key: filepath.Join(ld, "entity-key.pem")}
	agentCert := entityCA.issue(t, "weather", "/O=local-dev/CN=weather-agent", "DNS:weather-agent,DNS:localhost,IP:127.0.0.1,IP:::1")
	registryCert := loadPair(t, filepath.Join(ld, "registry-cert.pem"), filepath.Join(ld, "registry-key.pem"))

	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "meshd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := &logBuffer{}
	srv, err := meshd.New(ctx, meshd.Config{Config: server.Config{Listen: "127.0.0.1:0", TLSMode: server.TLSAuto,
		CertFile: filepath.Join(ld, "registry-cert.pem"), KeyFile: filepath.Join(ld, "registry-key.pem"),
		Logger: slog.New(slog.NewJSONHandler(log, nil))}, Backends: []string{"localca", "filestore"}, TrustDir: dir}, st, nil)
	if err != nil {
		t.Fatalf("meshd on MCP Mesh's --tls-auto trust dir: %v", err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(ctx)
	if !strings.Contains(log.String(), "ca-key.pem") {
		t.Errorf("no warning that the trust dir holds the CA's private key")
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(mustRead(t, filepath.Join(dir, "ca.pem")))
	client := func(c tls.Certificate) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{c}}, DisableKeepAlives: true}
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	base := "https://" + srv.AgentAddr()
	for _, s := range []struct {
		name string
		cert tls.Certificate
		id   string
		code int
	}{
		{"agent, its name", agentCert, "weather-agent", http.StatusOK},
		{"agent, a per-replica id", agentCert, "weather-agent-5e6f7a8b", http.StatusOK},
		{"agent claiming another agent", agentCert, "geo-agent", http.StatusForbidden},
		{"agent, a replica id of another agent", agentCert, "geo-agent-5e6f7a8b", http.StatusForbidden},
		{"the registry's own certificate", registryCert, "mcp-mesh-registry", http.StatusOK},
		{"the registry's certificate claiming an agent", registryCert, "weather-agent", http.StatusForbidden},
	} {
		r := do(t, client(s.cert), "POST", base+"/heartbeat", heartbeat(s.id, 9100))
		if r.code != s.code {
			t.Errorf("%s: POST %s: %s, want %d", s.name, s.id, r, s.code)
		}
	}
	r := do(t, client(agentCert), "GET", base+"/agents", nil)
	if r.code != http.StatusOK || !strings.Contains(string(r.body), `"owner":"weather-agent"`) || strings.Contains(string(r.body), `"entity_id":"local-dev"`) {
		t.Errorf("GET /agents: %s (the agents are the mesh's own, whatever O their certificates carry)", r)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestE2EBindingSettingsRefused: a setting meshd cannot honour is a start
// error that says what to do, never a silent fallback.
func TestE2EBindingSettingsRefused(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "meshd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	empty := t.TempDir()
	for _, c := range []struct {
		cfg  meshd.Config
		want string
	}{
		{meshd.Config{Config: server.Config{TLSMode: server.TLSOff}, Backends: []string{"localca"}}, "MCP_MESH_TRUST_DIR"},
		{meshd.Config{Config: server.Config{TLSMode: server.TLSOff}, Backends: []string{"localca"}, TrustDir: empty}, filepath.Join(empty, "ca.pem")},
		{meshd.Config{Config: server.Config{TLSMode: server.TLSOff}, Backends: []string{"filestore"}, TrustDir: empty, AgentBindings: map[string]registry.Binding{"spire": {CN: true}}}, `trust source "spire"`},
	} {
		srv, err := meshd.New(ctx, c.cfg, st, nil)
		if err == nil {
			srv.Shutdown(ctx)
			t.Errorf("%+v: no error", c.cfg)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want it to name %s", c.cfg, err, c.want)
		}
	}
	notCA := newOpenSSLCA(t, t.TempDir(), "x", "/CN=x").issue(t, "leaf", "/CN=leaf", "")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pemfile.EncodeCerts(notCA.Leaf), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := meshd.New(ctx, meshd.Config{Config: server.Config{TLSMode: server.TLSOff}, Backends: []string{"localca"}, TrustDir: dir}, st, nil); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("a leaf as the trust dir's ca.pem: %v, want not a CA", err)
	}
}
