package cli_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/cli"
	"github.com/meshtrust/meshtrust/internal/filetest"
	"github.com/meshtrust/meshtrust/internal/openssltest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// env is a root directory and a CA directory that meshctl is pointed at
// with flags.
type env struct {
	t     *testing.T
	base  string
	root  string
	caDir string
}

func newEnv(t *testing.T) *env {
	base := t.TempDir()
	return &env{t: t, base: base, root: filepath.Join(base, "root"), caDir: filepath.Join(base, "ca")}
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) output() string { return r.stdout + r.stderr }

// run runs meshctl in-process with the env's directories.
func (e *env) run(args ...string) result {
	e.t.Helper()
	return execute(e.t, withFlags(args, "--root-dir", e.root, "--ca-dir", e.caDir, "--trust-domain", "mesh.local")...)
}

// withFlags adds flags to a command line: before its "--", when it has one
// (what follows "--" is positional, such as a key id that begins with "-").
func withFlags(args []string, flags ...string) []string {
	i := slices.Index(args, "--")
	if i < 0 {
		i = len(args)
	}
	return slices.Concat(args[:i], flags, args[i:])
}

func execute(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Execute(t.Context(), args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

// mustRun runs meshctl and fails the test unless it exits 0.
func (e *env) mustRun(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("meshctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// initCA creates the root and the intermediate.
func (e *env) initCA() {
	e.t.Helper()
	e.mustRun("ca", "init")
	e.mustRun("ca", "issue-intermediate")
}

func (e *env) path(elem ...string) string {
	return filepath.Join(append([]string{e.caDir}, elem...)...)
}
func (e *env) rootKey() string { return filepath.Join(e.root, "ca.key") }

// issued and issuedKey are where the CA keeps cn's certificate and key
// (TestNodeFileNames pins the names).
func (e *env) issued(cn string) string    { return ca.Config{Dir: e.caDir}.IssuedCertPath(cn) }
func (e *env) issuedKey(cn string) string { return ca.Config{Dir: e.caDir}.IssuedKeyPath(cn) }

// intKeyFile is the one intermediate key under intermediate/keys.
func (e *env) intKeyFile() string {
	e.t.Helper()
	keys, err := filepath.Glob(e.path("intermediate", "keys", "*.key"))
	if err != nil || len(keys) != 1 {
		e.t.Fatalf("intermediate keys: %v, %v", keys, err)
	}
	return keys[0]
}

// writeCSR writes a PEM CSR made by crypto/x509 to the env's base dir.
func (e *env) writeCSR(name string, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	e.t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.write(name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func (e *env) write(name string, data []byte) string {
	e.t.Helper()
	p := filepath.Join(e.base, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// state is everything a refused command must leave alone: every file
// under the env (path, mode and SHA-256; the database is read through the
// store instead) and the store's certificates and revocations. The audit
// log is kept apart: refusals are appended to it by design.
type state struct {
	files map[string]string
	certs []store.Cert
	revs  []store.Revocation
	audit []store.AuditEntry
}

func (e *env) snapshot() state {
	e.t.Helper()
	s := state{files: filetest.Snapshot(e.t, "meshtrust.db", e.base)}
	db := e.path("meshtrust.db")
	if _, err := os.Stat(db); err != nil {
		return s // opening the store would create it
	}
	st, err := sqlstore.OpenSQLite(e.t.Context(), db)
	if err != nil {
		e.t.Fatal(err)
	}
	defer st.Close()
	if s.certs, err = st.Certs(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
	if s.revs, err = st.Revocations(e.t.Context(), 0); err != nil {
		e.t.Fatal(err)
	}
	if s.audit, err = st.AuditLog(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// requireUnchanged fails the test if anything but the audit log changed.
func requireUnchanged(t *testing.T, before, after state) {
	t.Helper()
	filetest.CheckSame(t, before.files, after.files)
	if !reflect.DeepEqual(before.certs, after.certs) {
		t.Errorf("store certificates changed: %d -> %d", len(before.certs), len(after.certs))
	}
	if !reflect.DeepEqual(before.revs, after.revs) {
		t.Errorf("store revocations changed: %d -> %d", len(before.revs), len(after.revs))
	}
	if len(after.audit) < len(before.audit) || !reflect.DeepEqual(before.audit, after.audit[:len(before.audit)]) {
		t.Errorf("audit log was rewritten, not appended to")
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := pemfile.ReadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// listRow is a row of `ca list --json`.
type listRow struct {
	CommonName string    `json:"common_name"`
	Kind       string    `json:"kind"`
	Serial     string    `json:"serial"`
	Status     ca.Status `json:"status"`
	Reason     string    `json:"reason"`
}

func (e *env) list(extra ...string) map[string][]listRow {
	e.t.Helper()
	r := e.mustRun(append([]string{"ca", "list", "--json"}, extra...)...)
	var rows []listRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		e.t.Fatalf("ca list --json: %v\n%s", err, r.stdout)
	}
	out := make(map[string][]listRow)
	for _, row := range rows {
		out[row.CommonName] = append(out[row.CommonName], row)
	}
	return out
}

func requireContains(t *testing.T, what, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}

// TestWalkthrough runs the operator's whole path through meshctl: a root,
// an intermediate, the root taken offline, certificates of every kind,
// a signed CSR, revocation, CRLs, verification, listing, the audit log,
// and a rotation of the intermediate.
func TestWalkthrough(t *testing.T) {
	e := newEnv(t)

	r := e.mustRun("ca", "init")
	requireContains(t, "ca init", r.stdout, "created root meshtrust root CA", "next: meshctl ca issue-intermediate")
	if fi, err := os.Stat(e.rootKey()); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("root key: %v %v, want mode 0600", fi, err)
	}
	r = e.mustRun("ca", "issue-intermediate")
	requireContains(t, "ca issue-intermediate", r.stdout, "created intermediate", "can now be moved offline")

	// The root goes offline; nothing below needs it until rotation.
	offline := e.root + ".offline"
	if err := os.Rename(e.root, offline); err != nil {
		t.Fatal(err)
	}
	rootCrt := filepath.Join(offline, "ca.crt")
	intCrt := e.path("intermediate", "int.crt")
	oldInt := readCert(t, intCrt)

	r = e.mustRun("ca", "issue-node", "ct1", "DNS:ct1.example.org", "IP:10.0.0.1")
	requireContains(t, "ca issue-node", r.stdout, "issued ct1.mesh",
		"DNS:ct1.mesh, DNS:ct1-mcp.mesh, DNS:ct1-runtime-rpc.mesh, DNS:ct1.example.org, IP:10.0.0.1, URI:spiffe://mesh.local/node/ct1",
		e.issued("ct1.mesh"), e.issuedKey("ct1.mesh"))
	e.mustRun("ca", "issue-agent", "opus", "ct1")
	r = e.mustRun("ca", "issue-client", "alice", "--json")
	var sum struct {
		CommonName string   `json:"common_name"`
		Serial     string   `json:"serial"`
		SANs       []string `json:"sans"`
		KeyFile    string   `json:"key_file"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatalf("issue-client --json: %v\n%s", err, r.stdout)
	}
	if sum.CommonName != "alice@external" || !slices.Equal(sum.SANs, []string{"URI:spiffe://mesh.local/external/alice"}) {
		t.Errorf("issue-client --json: %+v", sum)
	}
	if fi, err := os.Stat(sum.KeyFile); err != nil || fi.Mode() != 0o600 {
		t.Errorf("client key %s: %v %v", sum.KeyFile, fi, err)
	}

	// A CSR whose key stays with its owner.
	csrKey := pkitest.NewKey(t)
	csr := e.writeCSR("ct2.csr", csrKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct2.mesh"}, DNSNames: []string{"ct2-mcp.mesh"}})
	signedPath := filepath.Join(e.base, "ct2.pem")
	r = e.mustRun("ca", "sign", csr, "--profile", "node", "--ttl", "30d", "-o", signedPath)
	requireContains(t, "ca sign -o", r.stdout, "signed ct2.mesh", signedPath)
	signed, err := pemfile.ParseCerts(readFile(t, signedPath))
	if err != nil {
		t.Fatal(err)
	}
	if len(signed) != 3 || !csrKey.PublicKey.Equal(signed[0].PublicKey) || !signed[1].Equal(oldInt) {
		t.Fatalf("ca sign wrote %d certificates; want leaf for the CSR's key, intermediate, root", len(signed))
	}
	if got := signed[0].NotAfter.Sub(signed[0].NotBefore); got != 30*24*time.Hour+time.Minute {
		t.Errorf("--ttl 30d gave a lifetime of %v", got)
	}
	r = e.mustRun("ca", "sign", csr, "--profile", "node", "--name", "ct2.mesh")
	if certs, err := pemfile.ParseCerts([]byte(r.stdout)); err != nil || len(certs) != 3 || certs[0].Subject.CommonName != "ct2.mesh" {
		t.Fatalf("ca sign to stdout: %v\n%s", err, r.stdout)
	}

	for _, c := range []struct{ file, purpose string }{
		{e.issued("ct1.mesh"), "sslserver"}, {e.issued("ct1.mesh"), "sslclient"},
		{e.issued("opus@ct1"), "sslclient"}, {e.issued("alice@external"), "sslclient"},
		{signedPath, "sslserver"},
	} {
		openssltest.RequireVerifies(t, rootCrt, []string{intCrt}, c.file, "-purpose", c.purpose)
	}
	for _, cn := range []string{"ct1.mesh", "opus@ct1", "alice@external"} {
		r := e.mustRun("ca", "verify", e.issued(cn))
		requireContains(t, "ca verify "+cn, r.stdout, "OK: "+cn+" is valid", "identity "+cn)
	}

	// Revocation.
	agent := readCert(t, e.issued("opus@ct1"))
	r = e.mustRun("ca", "revoke", "opus@ct1", "--reason", "keyCompromise")
	requireContains(t, "ca revoke", r.stdout, "revoked opus@ct1 serial "+agent.SerialNumber.Text(16)+" (keyCompromise)", "CRL rebuilt: "+e.path("crl.pem"))
	crl := e.path("crl.pem")
	openssltest.RequireRevoked(t, rootCrt, []string{intCrt}, e.issued("opus@ct1"), crl)
	openssltest.RequireVerifies(t, rootCrt, []string{intCrt}, e.issued("ct1.mesh"), "-crl_check", "-CRLfile", crl)
	r = e.run("ca", "verify", e.issued("opus@ct1"))
	if r.code != 1 {
		t.Fatalf("ca verify of a revoked certificate exited %d, want 1\n%s", r.code, r.output())
	}
	requireContains(t, "ca verify (revoked)", r.stdout, "REJECTED: opus@ct1 is revoked", "keyCompromise")
	r = e.run("ca", "verify", e.issued("opus@ct1"), "--json")
	var verdict struct {
		Status  ca.Status `json:"status"`
		Revoked *struct {
			CommonName string `json:"common_name"`
			Reason     string `json:"reason"`
			ReasonCode int    `json:"reason_code"`
		} `json:"revoked"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &verdict); err != nil || r.code != 1 || verdict.Status != ca.StatusRevoked || verdict.Revoked == nil ||
		verdict.Revoked.CommonName != "opus@ct1" || verdict.Revoked.Reason != "keyCompromise" || verdict.Revoked.ReasonCode != 1 {
		t.Fatalf("ca verify --json (revoked): exit %d, %+v, %v\n%s", r.code, verdict, err, r.stdout)
	}

	// Every rebuild takes the next CRL number.
	r = e.mustRun("ca", "crl")
	// #1 came with the intermediate, #2 with the revocation.
	requireContains(t, "ca crl", r.stdout, "CRL #3 by meshtrust intermediate CA", ": 1 revoked", "wrote "+crl)
	r = e.mustRun("ca", "crl", "--json")
	var infos []struct{ Number string }
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil || len(infos) != 1 || infos[0].Number != "4" {
		t.Fatalf("ca crl --json: %v %+v", err, infos)
	}

	// Re-issuing a node keeps its key.
	keyBefore := readFile(t, e.issuedKey("ct1.mesh"))
	certBefore := readFile(t, e.issued("ct1.mesh"))
	e.mustRun("ca", "issue-node", "ct1")
	if !bytes.Equal(readFile(t, e.issuedKey("ct1.mesh")), keyBefore) {
		t.Error("re-issuing ct1 changed its key")
	}
	if bytes.Equal(readFile(t, e.issued("ct1.mesh")), certBefore) {
		t.Error("re-issuing ct1 did not write a new certificate")
	}

	// A certificate issued 100 days ago, through the package with its
	// clock injected, is listed as expired.
	past := func() time.Time { return time.Now().Add(-100 * 24 * time.Hour) }
	st, err := sqlstore.OpenSQLite(t.Context(), e.path("meshtrust.db"))
	if err != nil {
		t.Fatal(err)
	}
	oldCA, err := ca.Open(t.Context(), ca.Config{RootDir: e.root, Dir: e.caDir, Now: past}, st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oldCA.Sign(t.Context(), ca.ClientRequest("bob"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	st.Close()

	rows := e.list()
	for cn, want := range map[string]ca.Status{
		"alice@external": ca.StatusValid, "opus@ct1": ca.StatusRevoked, "bob@external": ca.StatusExpired, "ct2.mesh": ca.StatusValid,
	} {
		for _, row := range rows[cn] {
			if row.Status != want {
				t.Errorf("list: %s is %s, want %s", cn, row.Status, want)
			}
		}
		if len(rows[cn]) == 0 {
			t.Errorf("list lacks %s", cn)
		}
	}
	if len(rows["ct1.mesh"]) != 2 || len(rows["ct2.mesh"]) != 2 {
		t.Errorf("list: %d ct1.mesh and %d ct2.mesh certificates, want 2 each", len(rows["ct1.mesh"]), len(rows["ct2.mesh"]))
	}
	if rows["opus@ct1"][0].Reason != "keyCompromise" {
		t.Errorf("list: opus@ct1 reason %q", rows["opus@ct1"][0].Reason)
	}
	var inters []listRow
	for _, rs := range rows {
		for _, row := range rs {
			if row.Kind == "intermediate" {
				inters = append(inters, row)
			}
		}
	}
	if len(inters) != 1 || inters[0].Status != ca.StatusValid {
		t.Errorf("list: intermediates %+v", inters)
	}
	// With a renewal point of 1ns every live leaf is due.
	if row := e.list("--renew-after", "1ns")["alice@external"][0]; row.Status != ca.StatusExpiring {
		t.Errorf("list --renew-after 1ns: alice is %s, want expiring", row.Status)
	}
	r = e.mustRun("ca", "list")
	requireContains(t, "ca list", r.stdout, "NAME", "STATUS", "opus@ct1", "revoked", "bob@external", "expired")

	// Rotation: prepare with the root back, activate with it offline.
	if err := os.Rename(offline, e.root); err != nil {
		t.Fatal(err)
	}
	r = e.mustRun("ca", "rotate-intermediate", "prepare")
	requireContains(t, "rotate prepare", r.stdout, "prepared intermediate", "the bundle now holds both intermediates")
	bundle := e.path("intermediate", "bundle.pem")
	if certs, err := pemfile.ParseCerts(readFile(t, bundle)); err != nil || len(certs) != 3 {
		t.Fatalf("bundle.pem after prepare: %d certificates, %v; want root and two intermediates", len(certs), err)
	}
	e.mustRun("ca", "issue-node", "ct3")
	if c := readCert(t, e.issued("ct3.mesh")); !bytes.Equal(c.AuthorityKeyId, oldInt.SubjectKeyId) {
		t.Error("after prepare, a new certificate is not signed by the old intermediate")
	}
	if err := os.Rename(e.root, offline); err != nil {
		t.Fatal(err)
	}
	r = e.mustRun("ca", "rotate-intermediate", "activate")
	requireContains(t, "rotate activate", r.stdout, "activated intermediate", "certificates from the old one stay valid")
	newInt := readCert(t, intCrt)
	if newInt.Equal(oldInt) {
		t.Fatal("activate did not change int.crt")
	}
	e.mustRun("ca", "issue-node", "ct4")
	if c := readCert(t, e.issued("ct4.mesh")); !bytes.Equal(c.AuthorityKeyId, newInt.SubjectKeyId) {
		t.Error("after activate, a new certificate is not signed by the new intermediate")
	}
	for _, cn := range []string{"ct3.mesh", "ct4.mesh", "ct1.mesh"} {
		openssltest.RequireVerifies(t, rootCrt, []string{bundle}, e.issued(cn), "-crl_check", "-CRLfile", crl)
		e.mustRun("ca", "verify", e.issued(cn))
	}
	e.mustRun("ca", "revoke", "ct3.mesh")
	openssltest.RequireRevoked(t, rootCrt, []string{bundle}, e.issued("ct3.mesh"), crl)
	openssltest.RequireVerifies(t, rootCrt, []string{bundle}, e.issued("ct4.mesh"), "-crl_check", "-CRLfile", crl)
	if r := e.run("ca", "verify", e.issued("ct3.mesh")); r.code != 1 || !strings.Contains(r.stdout, "revoked") {
		t.Errorf("ca verify of the old intermediate's revoked leaf: exit %d\n%s", r.code, r.output())
	}
	if n := bytes.Count(readFile(t, crl), []byte("BEGIN X509 CRL")); n != 2 {
		t.Errorf("crl.pem holds %d CRLs after rotation, want 2", n)
	}

	// The audit log recorded it all, intact.
	r = e.mustRun("ca", "audit", "--verify")
	requireContains(t, "ca audit --verify", r.stdout, "audit log intact")
	r = e.mustRun("ca", "audit", "--json")
	var log []struct {
		Action   string `json:"action"`
		Outcome  string `json:"outcome"`
		Identity string `json:"identity"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &log); err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range log {
		actions = append(actions, a.Action+"/"+a.Outcome+"/"+a.Identity)
	}
	for _, want := range []string{
		"ca.init/ok/meshtrust root CA", "cert.revoke/ok/opus@ct1", "cert.issue/ok/ct2.mesh",
		"ca.rotate-intermediate.prepare/ok/", "ca.rotate-intermediate.activate/ok/", "cert.revoke/ok/ct3.mesh",
	} {
		if !slices.ContainsFunc(actions, func(a string) bool { return strings.HasPrefix(a, want) }) {
			t.Errorf("audit log lacks %s: %v", want, actions)
		}
	}
	r = e.mustRun("ca", "audit")
	requireContains(t, "ca audit", r.stdout, "SEQ", "cert.revoke", "opus@ct1")
}

// TestEnvironment: the directories and trust domain come from the
// environment when no flag names them, and a flag beats the environment.
func TestEnvironment(t *testing.T) {
	base := t.TempDir()
	root, caDir := filepath.Join(base, "r"), filepath.Join(base, "c")
	t.Setenv("MESHTRUST_ROOT_DIR", root)
	t.Setenv("MESHTRUST_CA_DIR", caDir)
	t.Setenv("MCP_MESH_TRUST_DOMAIN", "corp.example")
	for _, args := range [][]string{{"ca", "init"}, {"ca", "issue-intermediate"}, {"ca", "issue-client", "alice"}} {
		if r := execute(t, args...); r.code != 0 {
			t.Fatalf("meshctl %v: exit %d\n%s", args, r.code, r.output())
		}
	}
	if _, err := os.Stat(filepath.Join(root, "ca.key")); err != nil {
		t.Errorf("root key not in MESHTRUST_ROOT_DIR: %v", err)
	}
	c := readCert(t, filepath.Join(caDir, "issued", "alice@external.crt"))
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://corp.example/external/alice" {
		t.Errorf("URIs %v, want the trust domain from MCP_MESH_TRUST_DOMAIN", c.URIs)
	}
	other := filepath.Join(base, "other")
	r := execute(t, "ca", "issue-client", "bob", "--ca-dir", other)
	if r.code == 0 || !strings.Contains(r.stderr, "no intermediate in "+other) {
		t.Errorf("--ca-dir did not override MESHTRUST_CA_DIR: exit %d\n%s", r.code, r.output())
	}
	if _, err := os.Stat(other); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused command created %s", other)
	}
}

// TestBadInput: every bad command exits non-zero with a message naming
// the problem, changes no file and nothing in the store, and, where the
// CA got far enough to judge it, is audited as refused.
func TestBadInput(t *testing.T) {
	type tc struct {
		name string
		// prep sets the env up and returns the command to run.
		prep func(t *testing.T, e *env) []string
		want []string
		// audit is the action of the refused audit entry the command must
		// append; "" when the refusal happens before the CA is opened.
		audit string
	}
	cases := []tc{
		{name: "second init", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "init"}
		}, want: []string{"already exists", "created once"}, audit: "ca.init"},
		{name: "second init with another key type", prep: func(t *testing.T, e *env) []string {
			e.mustRun("ca", "init")
			return []string{"ca", "init", "--key-type", "ed25519"}
		}, want: []string{"already exists"}, audit: "ca.init"},
		{name: "second issue-intermediate", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "issue-intermediate"}
		}, want: []string{"already has an active intermediate", "rotate-intermediate prepare"}, audit: "ca.issue-intermediate"},
		{name: "revoke unknown name", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			e.mustRun("ca", "issue-node", "ct1")
			return []string{"ca", "revoke", "nobody.mesh"}
		}, want: []string{`no certificate was ever issued to "nobody.mesh"`}, audit: "cert.revoke"},
		{name: "revoke unknown serial", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "revoke", "DE:AD:BE:EF"}
		}, want: []string{"no such certificate", "serial deadbeef"}, audit: "cert.revoke"},
		{name: "revoke neither name nor serial", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "revoke", "../x"}
		}, want: []string{`"../x" is neither an identity`}, audit: "cert.revoke"},
		{name: "revoke twice", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			e.mustRun("ca", "issue-agent", "opus", "ct1")
			e.mustRun("ca", "revoke", "opus@ct1")
			return []string{"ca", "revoke", "opus@ct1"}
		}, want: []string{"already revoked"}, audit: "cert.revoke"},
		{name: "revoke the intermediate", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "revoke", readCert(t, e.path("intermediate", "int.crt")).SerialNumber.Text(16)}
		}, want: []string{"is an intermediate", "rotate-intermediate"}, audit: "cert.revoke"},
		{name: "revoke with an unknown reason", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			e.mustRun("ca", "issue-node", "ct1")
			return []string{"ca", "revoke", "ct1.mesh", "--reason", "boredom"}
		}, want: []string{`unknown revocation reason "boredom"`, "keyCompromise"}},

		{name: "malformed CSR file", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.write("bad.csr", []byte("this is not a CSR\n")), "--profile", "node"}
		}, want: []string{"bad.csr", "bad certificate request"}},
		{name: "certificate instead of CSR", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.path("intermediate", "int.crt"), "--profile", "node"}
		}, want: []string{`PEM block is "CERTIFICATE"`, "want CERTIFICATE REQUEST"}},
		{name: "missing CSR file", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", filepath.Join(e.base, "nope.csr"), "--profile", "node"}
		}, want: []string{"nope.csr", "no such file"}},
		{name: "CSR with a bad signature", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			p := e.writeCSR("sig.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}})
			b, _ := pem.Decode(readFile(t, p))
			b.Bytes[len(b.Bytes)-1] ^= 0xff
			return []string{"ca", "sign", e.write("sig.csr", pem.EncodeToMemory(b)), "--profile", "node"}
		}, want: []string{"bad certificate request", "signature does not verify"}, audit: "cert.issue"},
		{name: "CSR asking for CA:TRUE", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			bc, _ := asn1.Marshal(struct{ IsCA bool }{true})
			return []string{"ca", "sign", e.writeCSR("ca.csr", pkitest.NewKey(t), &x509.CertificateRequest{
				Subject:         pkix.Name{CommonName: "ct1.mesh"},
				ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}},
			}), "--profile", "node"}
		}, want: []string{"refused by policy", "CA:TRUE"}, audit: "cert.issue"},
		{name: "CSR for another identity", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.writeCSR("ct1.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}}), "--profile", "node", "--name", "ct2.mesh"}
		}, want: []string{`names "ct1.mesh" but is being signed for "ct2.mesh"`}, audit: "cert.issue"},
		{name: "CSR asking for another node's name", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.writeCSR("ct1.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}, DNSNames: []string{"ct2.mesh"}}), "--profile", "node"}
		}, want: []string{"SAN DNS:ct2.mesh", "is not granted"}, audit: "cert.issue"},
		{name: "CSR with a longer lifetime", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.writeCSR("ct1.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}}), "--profile", "node", "--ttl", "91d"}
		}, want: []string{"requested lifetime 91d is longer than the node profile allows (90d)"}, audit: "cert.issue"},
		{name: "CSR on the wrong profile", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.writeCSR("a.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct1"}}), "--profile", "node"}
		}, want: []string{"--profile agent"}, audit: "cert.issue"},
		{name: "sign with an unknown profile", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.writeCSR("ct1.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}}), "--profile", "admin"}
		}, want: []string{`unknown profile "admin"`}},
		{name: "sign without a profile", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "sign", e.writeCSR("ct1.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}})}
		}, want: []string{`"profile" not set`}},
		{name: "wildcard extra SAN on a CA that has issued nothing", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "issue-node", "ct1", "*.example.com"}
		}, want: []string{`SAN "*.example.com" is not a DNS name (wildcards are not issued)`}, audit: "cert.issue"},
		{name: "reserved node id", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "issue-agent", "opus", "external"}
		}, want: []string{`"external" is reserved`}, audit: "cert.issue"},
		{name: "bad duration flag", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "issue-node", "ct1", "--leaf-ttl", "90x"}
		}, want: []string{`invalid duration "90x"`}},

		{name: "issue-intermediate without the root key", prep: func(t *testing.T, e *env) []string {
			e.mustRun("ca", "init")
			if err := os.Rename(e.rootKey(), filepath.Join(e.base, "ca.key.away")); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "issue-intermediate"}
		}, want: []string{"the root key is needed to sign an intermediate", "ca.key does not exist"}, audit: "ca.issue-intermediate"},
		{name: "issue-intermediate with a 0644 root key", prep: func(t *testing.T, e *env) []string {
			e.mustRun("ca", "init")
			if err := os.Chmod(e.rootKey(), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "issue-intermediate"}
		}, want: []string{"unsafe permissions", "ca.key has mode 0644", "run `chmod 600 "}, audit: "ca.issue-intermediate"},
		{name: "rotate prepare without the root key", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			if err := os.Rename(e.rootKey(), filepath.Join(e.base, "ca.key.away")); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "rotate-intermediate", "prepare"}
		}, want: []string{"the root key is needed to sign an intermediate", "does not exist"}, audit: "ca.rotate-intermediate.prepare"},
		{name: "rotate prepare with the root offline", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			if err := os.Rename(e.root, e.root+".offline"); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "rotate-intermediate", "prepare"}
		}, want: []string{"no root certificate", "bring the offline root back"}, audit: "ca.rotate-intermediate.prepare"},
		{name: "rotate prepare twice", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			e.mustRun("ca", "rotate-intermediate", "prepare")
			return []string{"ca", "rotate-intermediate", "prepare"}
		}, want: []string{"already prepared", "rotate-intermediate activate"}, audit: "ca.rotate-intermediate.prepare"},
		{name: "rotate activate with nothing prepared", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "rotate-intermediate", "activate"}
		}, want: []string{"no prepared intermediate", "rotate-intermediate prepare"}, audit: "ca.rotate-intermediate.activate"},
		{name: "intermediate key mode 0644", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			if err := os.Chmod(e.intKeyFile(), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "issue-node", "ct1"}
		}, want: []string{"unsafe permissions", "has mode 0644", "chmod 600"}},
		{name: "int.key mode 0644", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			if err := os.Chmod(e.path("intermediate", "int.key"), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "crl"}
		}, want: []string{"unsafe permissions", "int.key has mode 0644", "chmod 600"}},
		{name: "intermediate key missing", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			if err := os.Rename(e.intKeyFile(), filepath.Join(e.base, "int.key.away")); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "issue-node", "ct1"}
		}, want: []string{"key file missing", "does not exist"}},
		{name: "issue before init", prep: func(t *testing.T, e *env) []string {
			return []string{"ca", "issue-node", "ct1"}
		}, want: []string{"not initialized: no intermediate in", "meshctl ca issue-intermediate"}},
		{name: "init with an unknown key type", prep: func(t *testing.T, e *env) []string {
			return []string{"ca", "init", "--key-type", "dsa-1024"}
		}, want: []string{`unknown key type "dsa-1024"`, "ed25519"}},

		{name: "verify a foreign certificate", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			other := newEnv(t)
			other.initCA()
			other.mustRun("ca", "issue-node", "ct1")
			return []string{"ca", "verify", other.issued("ct1.mesh")}
		}, want: []string{"REJECTED: ct1.mesh is untrusted", "does not chain to this CA's root"}},
		{name: "verify a file with no certificate", prep: func(t *testing.T, e *env) []string {
			e.initCA()
			return []string{"ca", "verify", e.write("empty.pem", []byte("nothing here\n"))}
		}, want: []string{"empty.pem", "no CERTIFICATE PEM block"}},
	}

	// Invalid ids, wherever an id goes.
	badIDs := []struct{ id, want string }{
		{"../x", `"../x" contains '.'`},
		{"Opus", `"Opus" contains 'O'`},
		{strings.Repeat("a", 64), "is 64 characters long (at most 63)"},
		{"a..b", `"a..b" contains '.'`},
		{"*", `"*" contains '*'`},
		{"*.mesh", `"*.mesh" contains '*'`},
		{"", "invalid id: empty"},
	}
	for _, b := range badIDs {
		for _, cmd := range []struct {
			name string
			args []string
		}{
			{"issue-node", []string{"ca", "issue-node", b.id}},
			{"issue-agent name", []string{"ca", "issue-agent", b.id, "ct1"}},
			{"issue-agent node", []string{"ca", "issue-agent", "opus", b.id}},
			{"issue-client", []string{"ca", "issue-client", b.id}},
		} {
			cases = append(cases, tc{
				name: fmt.Sprintf("%s %q", cmd.name, b.id),
				prep: func(t *testing.T, e *env) []string {
					e.initCA()
					return cmd.args
				},
				want:  []string{"invalid id", b.want},
				audit: "cert.issue",
			})
		}
		cases = append(cases, tc{
			name: fmt.Sprintf("sign --name %q", b.id+".mesh"),
			prep: func(t *testing.T, e *env) []string {
				e.initCA()
				csr := e.writeCSR("ct1.csr", pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}})
				return []string{"ca", "sign", csr, "--profile", "node", "--name", b.id + ".mesh"}
			},
			want: []string{"invalid name", b.want},
		})
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			args := c.prep(t, e)
			before := e.snapshot()
			r := e.run(args...)
			if r.code == 0 {
				t.Fatalf("meshctl %q exited 0\n%s", args, r.output())
			}
			for _, w := range c.want {
				if !strings.Contains(r.output(), w) {
					t.Errorf("output lacks %q:\nstdout: %s\nstderr: %s", w, r.stdout, r.stderr)
				}
			}
			after := e.snapshot()
			requireUnchanged(t, before, after)
			var added []store.AuditEntry
			if len(after.audit) >= len(before.audit) {
				added = after.audit[len(before.audit):]
			}
			for _, a := range added {
				if a.Outcome != store.OutcomeRefused {
					t.Errorf("a refused command appended a %q audit entry: %s %s", a.Outcome, a.Action, a.Detail)
				}
			}
			if c.audit != "" && !slices.ContainsFunc(added, func(a store.AuditEntry) bool {
				return a.Action == c.audit && a.Outcome == store.OutcomeRefused && strings.Contains(r.output(), a.Detail)
			}) {
				t.Errorf("no refused %s entry with the message shown was audited; appended: %+v", c.audit, added)
			}
		})
	}
}
