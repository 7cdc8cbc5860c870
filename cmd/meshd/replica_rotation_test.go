package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestReplicasFollowRotation runs two meshd processes on one PostgreSQL,
// each with its own copy of the CA directory: `meshctl ca
// rotate-intermediate prepare` and `activate`, run on A's directory,
// reach B through the store's CA state and change feed, without a
// restart. B trusts the prepared intermediate at once and, once it has
// the new key (copied, as a file key lives only where it was made),
// signs with it after the activation; a taint made through A's directory
// reaches B's renewal hints, and each replica re-issues its own serving
// certificate from the new intermediate.
func TestReplicasFollowRotation(t *testing.T) {
	bin := buildBinaries(t)
	pg := pgtest.Start(t)
	dsn := pg.Schema(t)
	root := t.TempDir()
	a := startReplica(t, bin, "A", filepath.Join(root, "a"), dsn, "--dev")
	cfgA := ca.Config{RootDir: filepath.Join(root, "a", "root"), Dir: filepath.Join(root, "a", "ca")}
	if err := os.MkdirAll(filepath.Join(root, "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	copyTree(t, cfgA.Dir, filepath.Join(root, "b", "ca"))
	cfgB := ca.Config{Dir: filepath.Join(root, "b", "ca")}
	b := startReplica(t, bin, "B", filepath.Join(root, "b", "data"), dsn,
		"--tls-cert", cfgB.IssuedCertPath("meshd.mesh"), "--tls-key", cfgB.IssuedKeyPath("meshd.mesh"),
		"--ca-dir", cfgB.Dir)
	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "meshctl"), append([]string{"--ca-dir", cfgA.Dir, "--root-dir", cfgA.RootDir, "--database", dsn}, args...)...)
		cmd.Env = cleanEnv(filepath.Join(root, "home-ctl"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	status := func() []map[string]any {
		t.Helper()
		var out []map[string]any
		if err := json.Unmarshal([]byte(ctl("ca", "status", "--json")), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	rootPEM, err := os.ReadFile(filepath.Join(cfgA.RootDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{cfg: cfgA, roots: x509.NewCertPool()}
	m.roots.AppendCertsFromPEM(rootPEM)
	st, err := sqlstore.OpenPostgres(t.Context(), dsn, sqlstore.WithoutListen())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if m.auth, err = ca.Open(t.Context(), cfgA, st); err != nil {
		t.Fatal(err)
	}
	old := status()[0]["key_id"].(string)
	node := m.client(m.identity(t, "", "ct130"))
	issuer := func(r *replica, agent string) string {
		t.Helper()
		code, body := call(node, "POST", "https://"+r.addr+"/agent-cert", meshapi.AgentCertRequest{AgentID: agent, CSR: csrFor(t, agent+"@ct130")})
		if code != http.StatusCreated {
			t.Fatalf("agent-cert on %s: %d %s", r.name, code, body)
		}
		var out meshapi.IssuedCert
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatal(err)
		}
		c, err := pemfile.ParseCerts([]byte(out.Certificate))
		if err != nil || len(c) == 0 {
			t.Fatalf("agent-cert answer: %v", err)
		}
		return hex.EncodeToString(c[0].AuthorityKeyId)
	}
	for _, r := range []*replica{a, b} {
		if got := issuer(r, "before-"+strings.ToLower(r.name)); got != old {
			t.Fatalf("%s signs with %s before the rotation, want %s", r.name, got, old)
		}
	}

	ctl("ca", "rotate-intermediate", "prepare")
	next := status()[0]["key_id"].(string)
	if next == old {
		t.Fatal("prepare made no new intermediate")
	}
	bundleHas := func(r *replica, id string) error {
		code, body := call(node, "GET", "https://"+r.addr+"/bundle", nil)
		if code != http.StatusOK {
			return fmt.Errorf("GET /bundle: %d", code)
		}
		certs, err := pemfile.ParseCerts(body)
		if err != nil {
			return err
		}
		for _, c := range certs {
			if hex.EncodeToString(c.SubjectKeyId) == id {
				return nil
			}
		}
		return fmt.Errorf("GET /bundle on %s lacks intermediate %s", r.name, id)
	}
	eventually.NoError(t, "B publishes the intermediate prepared through A's directory", func() error { return bundleHas(b, next) })
	// A file key lives only in the directory that made it: B gets a copy.
	key := filepath.Join("intermediate", "keys", next+".key")
	data, err := os.ReadFile(filepath.Join(cfgA.Dir, key))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgB.Dir, key), data, 0o600); err != nil {
		t.Fatal(err)
	}

	ctl("ca", "rotate-intermediate", "activate")
	for _, r := range []*replica{a, b} {
		i := 0
		eventually.NoError(t, r.name+" signs with the intermediate activated through A's directory", func() error {
			i++
			if got := issuer(r, fmt.Sprintf("after-%s-%d", strings.ToLower(r.name), i)); got != next {
				return fmt.Errorf("signs with %s, want %s", got, next)
			}
			return nil
		})
	}
	if b.cmd.ProcessState != nil {
		t.Fatal("B restarted")
	}
	state, err := os.ReadFile(filepath.Join(cfgB.Dir, "intermediate", "state.json"))
	if err != nil || !bytes.Contains(state, []byte(`"active": "`+next+`"`)) {
		t.Fatalf("B's state.json mirrors the store's state: %s, %v", state, err)
	}

	// The taint reaches B's answers: the node's certificate, of the old
	// intermediate, is told to renew.
	ctl("ca", "rotate-intermediate", "taint", old)
	eventually.NoError(t, "B tells a holder of the tainted intermediate's certificate to renew", func() error {
		req, _ := http.NewRequest("GET", "https://"+b.addr+"/health", nil)
		resp, err := node.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.Header.Get("Meshtrust-Renew-After") == "" {
			return fmt.Errorf("no Meshtrust-Renew-After on B's answer")
		}
		return nil
	})
	// Each replica re-issues its own serving certificate, in its own CA
	// directory, from the new intermediate; neither undoes the other's.
	for _, r := range []*replica{a, b} {
		eventually.NoError(t, r.name+" serves a certificate of the new intermediate", func() error {
			conn, err := tls.Dial("tcp", r.addr, &tls.Config{RootCAs: m.roots, ServerName: "localhost"})
			if err != nil {
				return err
			}
			defer conn.Close()
			if got := hex.EncodeToString(conn.ConnectionState().PeerCertificates[0].AuthorityKeyId); got != next {
				return fmt.Errorf("issued by %s", got)
			}
			return nil
		})
	}
	// The tainted intermediate's leaves in use are the test's node and
	// its two agents, which did not renew; meshd.mesh, the identity of
	// both replicas' serving certificates, is not among them.
	for _, in := range status() {
		if in["key_id"] == old && in["live_certificates"] != float64(3) {
			t.Fatalf("the tainted intermediate has %v leaves in use, want the node's and its two agents': %v", in["live_certificates"], in)
		}
	}
}
