package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/filetest"
	"github.com/meshtrust/meshtrust/internal/openssltest"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// fixture is a CA in a temporary directory on the real SQLite store.
type fixture struct {
	cfg   ca.Config
	clock *clocktest.Clock
	store *sqlstore.Store
	ca    *ca.CA // nil until opened
}

type caOptions struct {
	// Key types of the root, the intermediate and the leaves the CA
	// generates; zero is the default.
	rootKey, intKey, leafKey ca.KeyType
	mod                      func(*ca.Config)
}

// newBare returns a fixture with directories, clock and store but no root.
// The clock starts at the real time, so openssl, which checks validity at
// the real time, accepts what the CA issues until a test moves the clock.
func newBare(t testing.TB, o caOptions) *fixture {
	t.Helper()
	dir := t.TempDir()
	clk := clocktest.New(time.Now().UTC().Truncate(time.Second))
	cfg := ca.Config{RootDir: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "ca"), Now: clk.Now}
	if o.mod != nil {
		o.mod(&cfg)
	}
	if err := os.Mkdir(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(t.Context(), cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &fixture{cfg: cfg, clock: clk, store: st}
}

// newCA returns an open CA with a root and an active intermediate.
func newCA(t testing.TB, o caOptions) *fixture {
	t.Helper()
	f := newBare(t, o)
	ctx := t.Context()
	cfg := f.cfg
	cfg.KeyType = o.rootKey
	if _, err := ca.Init(ctx, cfg, f.store); err != nil {
		t.Fatalf("Init: %v", err)
	}
	cfg.KeyType = o.intKey
	if _, err := ca.IssueIntermediate(ctx, cfg, f.store); err != nil {
		t.Fatalf("IssueIntermediate: %v", err)
	}
	f.cfg.KeyType = o.leafKey
	f.open(t)
	return f
}

func (f *fixture) open(t testing.TB) {
	t.Helper()
	c, err := ca.Open(t.Context(), f.cfg, f.store)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	f.ca = c
}

func (f *fixture) rootPath() string    { return f.cfg.RootCertPath() }
func (f *fixture) rootKeyPath() string { return filepath.Join(f.cfg.RootDir, "ca.key") }
func (f *fixture) intPath() string     { return filepath.Join(f.cfg.Dir, "intermediate", "int.crt") }
func (f *fixture) intKeyPath() string  { return filepath.Join(f.cfg.Dir, "intermediate", "int.key") }
func (f *fixture) statePath() string   { return filepath.Join(f.cfg.Dir, "intermediate", "state.json") }

// intKeyFile is the key file of intermediate cert under intermediate/keys.
func (f *fixture) intKeyFile(cert *x509.Certificate) string {
	return filepath.Join(f.cfg.Dir, "intermediate", "keys", hex.EncodeToString(cert.SubjectKeyId)+".key")
}

func (f *fixture) activeIntermediate(t testing.TB) *x509.Certificate {
	t.Helper()
	c, err := pemfile.ReadCert(f.intPath())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// storeState is what the store holds besides the audit log.
type storeState struct {
	certs []store.Cert
	revs  []store.Revocation
}

// sign issues req with a key the CA generates, failing the test on error.
func (f *fixture) sign(t testing.TB, req ca.Request) *ca.Issued {
	t.Helper()
	is, err := f.ca.Sign(t.Context(), req, ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	return is
}

func (f *fixture) storeState(t testing.TB) storeState {
	t.Helper()
	certs, err := f.store.Certs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	revs, err := f.store.Revocations(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return storeState{certs, revs}
}

func (f *fixture) requireStoreUnchanged(t testing.TB, before storeState) {
	t.Helper()
	after := f.storeState(t)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("store changed: %d certs, %d revocations before; %d, %d after", len(before.certs), len(before.revs), len(after.certs), len(after.revs))
	}
}

// requireLastAudit fails t unless the newest audit entry is action with
// outcome and a detail mentioning detail.
func (f *fixture) requireLastAudit(t testing.TB, action, outcome, detail string) {
	t.Helper()
	log, err := f.store.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(log) == 0 {
		t.Fatal("audit log is empty")
	}
	e := log[len(log)-1]
	if e.Action != action || e.Outcome != outcome || !strings.Contains(e.Detail, detail) {
		t.Fatalf("last audit entry is %s/%s %q, want %s/%s mentioning %q", e.Action, e.Outcome, e.Detail, action, outcome, detail)
	}
}

// requireAudited fails t unless the audit log has an entry for action
// with outcome and a detail mentioning detail.
func (f *fixture) requireAudited(t testing.TB, action, outcome, detail string) {
	t.Helper()
	log, err := f.store.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range log {
		if e.Action == action && e.Outcome == outcome && strings.Contains(e.Detail, detail) {
			return
		}
	}
	t.Fatalf("no %s/%s audit entry mentions %q", action, outcome, detail)
}

// snapshotFiles snapshots dirs, the store's database left out: the store
// is compared through its API.
func snapshotFiles(t testing.TB, dirs ...string) map[string]string {
	t.Helper()
	return filetest.Snapshot(t, "meshtrust.db", dirs...)
}

func requireSameFiles(t testing.TB, before, after map[string]string) {
	t.Helper()
	filetest.CheckSame(t, before, after)
	if t.Failed() {
		t.FailNow()
	}
}

// requireGoVerifies checks cert with crypto/x509 against the root and the
// published bundle at the fixture's time, and with the CA's own Verify.
func requireGoVerifies(t testing.TB, f *fixture, cert *x509.Certificate) {
	t.Helper()
	if _, err := cert.Verify(goVerifyOptions(t, f)); err != nil {
		t.Fatalf("crypto/x509 rejects %s: %v", cert.Subject.CommonName, err)
	}
	v, err := f.ca.Verify(t.Context(), []*x509.Certificate{cert})
	if err != nil || !v.OK() {
		t.Fatalf("Verify(%s) = %+v, %v; want usable", cert.Subject.CommonName, v, err)
	}
}

func goVerifyOptions(t testing.TB, f *fixture) x509.VerifyOptions {
	t.Helper()
	bundle, err := os.ReadFile(f.cfg.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemfile.ParseCerts(bundle)
	if err != nil {
		t.Fatal(err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range certs {
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			roots.AddCert(c)
		} else {
			inters.AddCert(c)
		}
	}
	return x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: f.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}

// requireGoRevoked checks with crypto/x509 that crl.pem holds a CRL signed
// by cert's issuer that lists cert, and that the CA reports it revoked.
func requireGoRevoked(t testing.TB, f *fixture, cert *x509.Certificate) {
	t.Helper()
	crl := crlBy(t, f, cert.AuthorityKeyId)
	listed := slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool {
		return e.SerialNumber.Cmp(cert.SerialNumber) == 0
	})
	if !listed {
		t.Fatalf("the CRL of %s does not list serial %x", crl.Issuer.CommonName, cert.SerialNumber)
	}
	v, err := f.ca.Verify(t.Context(), []*x509.Certificate{cert})
	if err != nil || v.Status != ca.StatusRevoked || v.OK() {
		t.Fatalf("Verify(revoked %s) = %+v, %v", cert.Subject.CommonName, v, err)
	}
}

// readCRLs parses every CRL in crl.pem.
func readCRLs(t testing.TB, path string) []*x509.RevocationList {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.RevocationList
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		l, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, l)
	}
}

// crlBy returns the CRL in crl.pem of the intermediate with key id aki,
// after checking its signature against that intermediate.
func crlBy(t testing.TB, f *fixture, aki []byte) *x509.RevocationList {
	t.Helper()
	var issuer *x509.Certificate
	for _, ic := range f.ca.Intermediates() {
		if bytes.Equal(ic.SubjectKeyId, aki) {
			issuer = ic
		}
	}
	if issuer == nil {
		t.Fatalf("no live intermediate has key id %x", aki)
	}
	for _, l := range readCRLs(t, f.cfg.CRLPath()) {
		if bytes.Equal(l.AuthorityKeyId, aki) {
			if err := l.CheckSignatureFrom(issuer); err != nil {
				t.Fatalf("CRL of %s: %v", issuer.Subject.CommonName, err)
			}
			return l
		}
	}
	t.Fatalf("crl.pem has no CRL by intermediate %x", aki)
	return nil
}

// goCSR makes a CSR with crypto/x509.
func goCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestInit(t *testing.T) {
	f := newBare(t, caOptions{})
	ctx := t.Context()
	root, err := ca.Init(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		mode fs.FileMode
	}{
		{f.cfg.RootDir, fs.ModeDir | 0o700},
		{f.rootKeyPath(), 0o600},
		{f.rootPath(), 0o644},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s has mode %v, want %v", c.path, fi.Mode(), c.mode)
		}
	}
	onDisk, err := pemfile.ReadCert(f.rootPath())
	if err != nil {
		t.Fatal(err)
	}
	if !onDisk.Equal(root) {
		t.Fatal("ca.crt is not the returned root")
	}
	if !root.IsCA || root.MaxPathLen != 1 || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root: IsCA=%v MaxPathLen=%d KeyUsage=%v", root.IsCA, root.MaxPathLen, root.KeyUsage)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if want := f.clock.Now().Add(ca.DefaultRootTTL); !root.NotAfter.Equal(want) {
		t.Errorf("root NotAfter %v, want %v", root.NotAfter, want)
	}
	key, err := pemfile.ReadKey(f.rootKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(root.PublicKey) {
		t.Error("ca.key does not match ca.crt")
	}
	f.requireLastAudit(t, "ca.init", "ok", "ecdsa-p256")

	// A second init, and an init over a key left by a crash, change nothing.
	before := snapshotFiles(t, f.cfg.RootDir)
	if _, err := ca.Init(ctx, f.cfg, f.store); !errors.Is(err, ca.ErrExists) || !strings.Contains(err.Error(), "created once") {
		t.Fatalf("second Init: %v, want ErrExists", err)
	}
	requireSameFiles(t, before, snapshotFiles(t, f.cfg.RootDir))
	f.requireLastAudit(t, "ca.init", "refused", "already exists")

	if err := os.Remove(f.rootPath()); err != nil {
		t.Fatal(err)
	}
	before = snapshotFiles(t, f.cfg.RootDir)
	if _, err := ca.Init(ctx, f.cfg, f.store); !errors.Is(err, ca.ErrExists) {
		t.Fatalf("Init over a lone key: %v, want ErrExists", err)
	}
	requireSameFiles(t, before, snapshotFiles(t, f.cfg.RootDir))
}

func TestInitRefusesSharedRootDir(t *testing.T) {
	f := newBare(t, caOptions{})
	if err := os.Mkdir(f.cfg.RootDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.cfg.RootDir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := ca.Init(t.Context(), f.cfg, f.store)
	if !errors.Is(err, ca.ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("Init into a world-writable dir: %v, want ErrKeyPermissions", err)
	}
	if entries, _ := os.ReadDir(f.cfg.RootDir); len(entries) != 0 {
		t.Fatalf("refused Init left %d files", len(entries))
	}
}

func TestIssueIntermediate(t *testing.T) {
	f := newCA(t, caOptions{mod: func(c *ca.Config) { c.TrustDomain = "example.org" }})
	root, err := pemfile.ReadCert(f.rootPath())
	if err != nil {
		t.Fatal(err)
	}
	inter := f.activeIntermediate(t)
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Fatalf("intermediate not signed by root: %v", err)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero || inter.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("intermediate: IsCA=%v MaxPathLen=%d KeyUsage=%v", inter.IsCA, inter.MaxPathLen, inter.KeyUsage)
	}
	if got := f.ca.TrustDomain().String(); got != "example.org" {
		t.Errorf("trust domain %q, want example.org", got)
	}
	chain, err := os.ReadFile(f.cfg.ChainPath())
	if err != nil {
		t.Fatal(err)
	}
	if want := pemfile.EncodeCerts(inter, root); !bytes.Equal(chain, want) {
		t.Error("chain.pem is not intermediate + root")
	}
	for _, p := range []string{f.intKeyPath(), f.intKeyFile(inter)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", p, fi, err)
		}
	}
	recs, err := f.store.Certs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Kind != "intermediate" || recs[0].Serial != inter.SerialNumber.Text(16) {
		t.Fatalf("store holds %+v, want the intermediate", recs)
	}
	if recs[0].IssuerKeyID != hex.EncodeToString(root.SubjectKeyId) {
		t.Errorf("intermediate record issuer %s, want root %x", recs[0].IssuerKeyID, root.SubjectKeyId)
	}
	// An intermediate never outlives the root.
	g := newCA(t, caOptions{mod: func(c *ca.Config) { c.RootTTL = 48 * time.Hour }})
	if r, i := readCert(t, g.rootPath()), g.activeIntermediate(t); !i.NotAfter.Equal(r.NotAfter) {
		t.Errorf("intermediate NotAfter %v, root %v", i.NotAfter, r.NotAfter)
	}

	before, st := snapshotFiles(t, f.cfg.RootDir, f.cfg.Dir), f.storeState(t)
	_, err = ca.IssueIntermediate(t.Context(), f.cfg, f.store)
	if !errors.Is(err, ca.ErrExists) || !strings.Contains(err.Error(), "rotate-intermediate prepare") {
		t.Fatalf("second IssueIntermediate: %v, want ErrExists", err)
	}
	requireSameFiles(t, before, snapshotFiles(t, f.cfg.RootDir, f.cfg.Dir))
	f.requireStoreUnchanged(t, st)
	f.requireLastAudit(t, "ca.issue-intermediate", "refused", "already has an active intermediate")
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	c, err := pemfile.ReadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIntermediateNeedsRootKey covers every way the root key can be
// unusable; each refusal leaves the CA directory and store as they were.
func TestIntermediateNeedsRootKey(t *testing.T) {
	cases := []struct {
		name    string
		break_  func(t *testing.T, f *fixture)
		wantErr error
		wantMsg string
	}{
		{"key missing", func(t *testing.T, f *fixture) {
			if err := os.Rename(f.rootKeyPath(), f.rootKeyPath()+".away"); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyMissing, "root key is needed"},
		{"key mode 0644", func(t *testing.T, f *fixture) {
			if err := os.Chmod(f.rootKeyPath(), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyPermissions, "chmod 600"},
		{"key mode 0640", func(t *testing.T, f *fixture) {
			if err := os.Chmod(f.rootKeyPath(), 0o640); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyPermissions, "0640"},
		{"key of another root", func(t *testing.T, f *fixture) {
			if err := pemfile.WriteKey(f.rootKeyPath(), pkitest.NewKey(t)); err != nil {
				t.Fatal(err)
			}
		}, nil, "does not match"},
		{"key is not a key", func(t *testing.T, f *fixture) {
			if err := os.WriteFile(f.rootKeyPath(), []byte("not a key\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, nil, "no PEM block"},
		{"root certificate missing", func(t *testing.T, f *fixture) {
			if err := os.Rename(f.cfg.RootDir, f.cfg.RootDir+".offline"); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrNotInitialized, "bring the offline root back"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, op := range []struct {
				name, action string
				run          func(f *fixture) error
			}{
				{"issue", "ca.issue-intermediate", func(f *fixture) error {
					_, err := ca.IssueIntermediate(t.Context(), f.cfg, f.store)
					return err
				}},
				{"prepare", "ca.rotate-intermediate.prepare", func(f *fixture) error {
					_, err := ca.PrepareIntermediate(t.Context(), f.cfg, f.store)
					return err
				}},
			} {
				f := newBare(t, caOptions{})
				if _, err := ca.Init(t.Context(), f.cfg, f.store); err != nil {
					t.Fatal(err)
				}
				if op.name == "prepare" {
					if _, err := ca.IssueIntermediate(t.Context(), f.cfg, f.store); err != nil {
						t.Fatal(err)
					}
				}
				tc.break_(t, f)
				files, st := snapshotFiles(t, filepath.Dir(f.cfg.RootDir)), f.storeState(t)
				err := op.run(f)
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("%s: %v, want %v mentioning %q", op.name, err, tc.wantErr, tc.wantMsg)
				}
				requireSameFiles(t, files, snapshotFiles(t, filepath.Dir(f.cfg.RootDir)))
				f.requireStoreUnchanged(t, st)
				f.requireLastAudit(t, op.action, "refused", tc.wantMsg)
			}
		})
	}
}

// TestOpenRefusesUnsafeIntermediateKey: the online CA will not sign with an
// intermediate key that other users can read, wherever it is on disk.
func TestOpenRefusesUnsafeIntermediateKey(t *testing.T) {
	cases := []struct {
		name    string
		break_  func(t *testing.T, f *fixture)
		wantErr error
		wantMsg string
	}{
		{"keys/<id>.key 0644", func(t *testing.T, f *fixture) {
			if err := os.Chmod(f.intKeyFile(f.activeIntermediate(t)), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyPermissions, "chmod 600"},
		{"int.key 0644", func(t *testing.T, f *fixture) {
			if err := os.Chmod(f.intKeyPath(), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyPermissions, "chmod 600"},
		{"keys/<id>.key 0604", func(t *testing.T, f *fixture) {
			if err := os.Chmod(f.intKeyFile(f.activeIntermediate(t)), 0o604); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyPermissions, "0604"},
		{"keys/<id>.key missing", func(t *testing.T, f *fixture) {
			if err := os.Remove(f.intKeyFile(f.activeIntermediate(t))); err != nil {
				t.Fatal(err)
			}
		}, ca.ErrKeyMissing, "does not exist"},
		{"no intermediate", func(t *testing.T, f *fixture) {
			// Neither a store that holds the CA's state nor a state.json
			// to import it from.
			if err := os.Remove(f.statePath()); err != nil {
				t.Fatal(err)
			}
			st, err := sqlstore.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "empty.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			f.store = st
		}, ca.ErrNotInitialized, "issue-intermediate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newCA(t, caOptions{})
			tc.break_(t, f)
			files := snapshotFiles(t, f.cfg.Dir)
			_, err := ca.Open(t.Context(), f.cfg, f.store)
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open: %v, want %v mentioning %q", err, tc.wantErr, tc.wantMsg)
			}
			requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
		})
	}
}

func TestNodeCertificate(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	inter := f.activeIntermediate(t)
	now := f.clock.Now()

	is := f.sign(t, ca.NodeRequest("ct1", "ct1.example.org", "IP:10.0.0.1"))
	c := is.Cert
	if c.Subject.CommonName != "ct1.mesh" || len(c.Subject.Organization) != 0 {
		t.Errorf("subject %v, want CN=ct1.mesh alone", c.Subject)
	}
	if want := []string{"ct1.mesh", "ct1-mcp.mesh", "ct1-runtime-rpc.mesh", "ct1.example.org"}; !slices.Equal(c.DNSNames, want) {
		t.Errorf("DNS SANs %v, want %v", c.DNSNames, want)
	}
	if len(c.IPAddresses) != 1 || c.IPAddresses[0].String() != "10.0.0.1" {
		t.Errorf("IP SANs %v", c.IPAddresses)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://mesh.local/node/ct1" {
		t.Errorf("URI SANs %v", c.URIs)
	}
	if c.IsCA || !c.BasicConstraintsValid || c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v KeyUsage=%v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(c.ExtKeyUsage, want) {
		t.Errorf("ExtKeyUsage %v, want server and client auth", c.ExtKeyUsage)
	}
	if !bytes.Equal(c.AuthorityKeyId, inter.SubjectKeyId) {
		t.Error("node cert not issued by the active intermediate")
	}
	if !c.NotBefore.Equal(now.Add(-time.Minute)) || !c.NotAfter.Equal(now.Add(ca.DefaultLeafTTL)) {
		t.Errorf("validity %v to %v, want %v to %v", c.NotBefore, c.NotAfter, now.Add(-time.Minute), now.Add(ca.DefaultLeafTTL))
	}
	id, err := identity.FromCertificate(c, f.ca.TrustDomain())
	if err != nil || id.Kind != identity.KindNode || id.Node != "ct1" {
		t.Errorf("identity.FromCertificate = %v, %v", id, err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := goVerifyOptions(t, f)
		opts.KeyUsages = []x509.ExtKeyUsage{usage}
		opts.DNSName = "ct1-mcp.mesh"
		if _, err := c.Verify(opts); err != nil {
			t.Errorf("crypto/x509 rejects node cert for %v: %v", usage, err)
		}
	}

	rec, err := f.store.Cert(ctx, c.SerialNumber.Text(16))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Kind != "node" || rec.CommonName != "ct1.mesh" || rec.IssuerKeyID != hex.EncodeToString(inter.SubjectKeyId) || rec.Fingerprint != trust.Fingerprint(c) || !bytes.Equal(rec.PEM, is.PEM) {
		t.Errorf("store record %+v does not describe the certificate", rec)
	}
	if want := []string{"DNS:ct1.mesh", "DNS:ct1-mcp.mesh", "DNS:ct1-runtime-rpc.mesh", "DNS:ct1.example.org", "IP:10.0.0.1", "URI:spiffe://mesh.local/node/ct1"}; !slices.Equal(rec.SANs, want) {
		t.Errorf("recorded SANs %v, want %v", rec.SANs, want)
	}

	// The files: a private directory, a private key, and the certificate
	// followed by its chain.
	for p, mode := range map[string]fs.FileMode{
		filepath.Dir(f.cfg.IssuedKeyPath("ct1.mesh")): fs.ModeDir | 0o700,
		f.cfg.IssuedKeyPath("ct1.mesh"):               0o600,
		f.cfg.IssuedCertPath("ct1.mesh"):              0o644,
	} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != mode {
			t.Errorf("%s: %v %v, want mode %v", p, fi, err, mode)
		}
	}
	certFile, err := os.ReadFile(f.cfg.IssuedCertPath("ct1.mesh"))
	if err != nil {
		t.Fatal(err)
	}
	if want := append(bytes.Clone(is.PEM), is.ChainPEM...); !bytes.Equal(certFile, want) {
		t.Error("issued certificate file is not certificate + chain")
	}
	key, err := pemfile.ReadKey(f.cfg.IssuedKeyPath("ct1.mesh"))
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(c.PublicKey) {
		t.Fatal("issued key does not match the certificate")
	}

	// Re-issuing renews under the same key.
	keyFile, _ := os.ReadFile(f.cfg.IssuedKeyPath("ct1.mesh"))
	f.clock.Advance(time.Hour)
	again := f.sign(t, ca.NodeRequest("ct1"))
	if !bytes.Equal(again.Cert.RawSubjectPublicKeyInfo, c.RawSubjectPublicKeyInfo) {
		t.Error("re-issued node certificate has a new key")
	}
	if again.Cert.SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Error("re-issued node certificate reuses the serial")
	}
	if slices.Contains(again.Cert.DNSNames, "ct1.example.org") {
		t.Error("extra SANs of the previous certificate carried over without being asked for")
	}
	if kf, _ := os.ReadFile(f.cfg.IssuedKeyPath("ct1.mesh")); !bytes.Equal(kf, keyFile) {
		t.Error("re-issuing rewrote the key file")
	}
	if cf, _ := os.ReadFile(f.cfg.IssuedCertPath("ct1.mesh")); !bytes.HasPrefix(cf, again.PEM) {
		t.Error("re-issuing did not replace the certificate file")
	}
	if recs, _ := f.store.CertsByName(ctx, "ct1.mesh"); len(recs) != 2 {
		t.Errorf("store holds %d certificates of ct1.mesh, want 2", len(recs))
	}
}

func TestAgentAndClientCertificates(t *testing.T) {
	f := newCA(t, caOptions{mod: func(c *ca.Config) { c.TrustDomain = "corp.example" }})
	ctx := t.Context()
	cases := []struct {
		name   string
		issue  func() (*ca.Issued, error)
		cn     string
		spiffe string
		kind   string
	}{
		{"agent", func() (*ca.Issued, error) {
			return f.ca.Sign(ctx, ca.AgentRequest("opus", "ct1"), ca.WithGeneratedKey())
		}, "opus@ct1", "spiffe://corp.example/agent/ct1/opus", "agent"},
		{"client", func() (*ca.Issued, error) { return f.ca.Sign(ctx, ca.ClientRequest("alice"), ca.WithGeneratedKey()) }, "alice@external", "spiffe://corp.example/external/alice", "external"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			is, err := tc.issue()
			if err != nil {
				t.Fatal(err)
			}
			c := is.Cert
			if c.Subject.CommonName != tc.cn || len(c.DNSNames) != 0 || len(c.IPAddresses) != 0 {
				t.Errorf("CN %q DNS %v IP %v", c.Subject.CommonName, c.DNSNames, c.IPAddresses)
			}
			if len(c.URIs) != 1 || c.URIs[0].String() != tc.spiffe {
				t.Errorf("URIs %v, want %s", c.URIs, tc.spiffe)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage %v, want client auth only", c.ExtKeyUsage)
			}
			opts := goVerifyOptions(t, f)
			opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			if _, err := c.Verify(opts); err == nil {
				t.Error("crypto/x509 accepts a client certificate as a server")
			}
			requireGoVerifies(t, f, c)
			if is.Record.Kind != tc.kind {
				t.Errorf("recorded kind %q, want %q", is.Record.Kind, tc.kind)
			}
		})
	}
}

// TestInvalidIDs: no certificate, file or record comes from an id that is
// not a DNS label, whichever part of the name it is in.
func TestInvalidIDs(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	ids := []struct{ id, msg string }{
		{"../x", `contains '.'`},
		{"Opus", `contains 'O'`},
		{strings.Repeat("a", 64), "64 characters long"},
		{"a..b", `contains '.'`},
		{"*", `contains '*'`},
		{"*.mesh", `contains '*'`},
		{"", "empty"},
		{"-ct1", "starts or ends with '-'"},
		{"ct1/..", `contains '/'`},
		{"ct\x00", `contains '\x00'`},
		{"café", `contains 'é'`},
	}
	ops := []struct {
		name  string
		issue func(id string) (*ca.Issued, error)
	}{
		{"node", func(id string) (*ca.Issued, error) { return f.ca.Sign(ctx, ca.NodeRequest(id), ca.WithGeneratedKey()) }},
		{"agent name", func(id string) (*ca.Issued, error) {
			return f.ca.Sign(ctx, ca.AgentRequest(id, "ct1"), ca.WithGeneratedKey())
		}},
		{"agent node", func(id string) (*ca.Issued, error) {
			return f.ca.Sign(ctx, ca.AgentRequest("opus", id), ca.WithGeneratedKey())
		}},
		{"client", func(id string) (*ca.Issued, error) {
			return f.ca.Sign(ctx, ca.ClientRequest(id), ca.WithGeneratedKey())
		}},
	}
	files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
	for _, op := range ops {
		for _, tc := range ids {
			t.Run(op.name+"/"+fmt.Sprintf("%q", tc.id), func(t *testing.T) {
				is, err := op.issue(tc.id)
				if is != nil || !errors.Is(err, identity.ErrInvalidID) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("issue %q: %v, %v; want ErrInvalidID mentioning %s", tc.id, is, err, tc.msg)
				}
				f.requireLastAudit(t, "cert.issue", "refused", tc.msg)
			})
		}
	}
	t.Run("reserved node id", func(t *testing.T) {
		if _, err := f.ca.Sign(ctx, ca.NodeRequest("external"), ca.WithGeneratedKey()); !errors.Is(err, identity.ErrInvalidID) || !strings.Contains(err.Error(), "reserved") {
			t.Fatalf("Sign(NodeRequest(external)): %v", err)
		}
	})
	requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
	f.requireStoreUnchanged(t, st)
}

func TestExtraSANs(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	good := []struct{ in, want string }{
		{"extra.example", "DNS:extra.example"},
		{"DNS:Upper.Example", "DNS:upper.example"},
		{"dns:lower.example", "DNS:lower.example"},
		{"IP:10.0.0.1", "IP:10.0.0.1"},
		{"IP:2001:db8::1", "IP:2001:db8::1"},
		{"URI:https://ct1.example/mcp", "URI:https://ct1.example/mcp"},
		{"DNS:ct1.mesh", "DNS:ct1.mesh"}, // a standard name again is not doubled
	}
	for _, tc := range good {
		t.Run(tc.in, func(t *testing.T) {
			is, err := f.ca.Sign(ctx, ca.NodeRequest("ct1", tc.in), ca.WithGeneratedKey())
			if err != nil {
				t.Fatal(err)
			}
			sans := ca.SANs(is.Cert)
			if !slices.Contains(sans, tc.want) {
				t.Errorf("SANs %v lack %s", sans, tc.want)
			}
			if len(sans) != len(slices.Compact(slices.Sorted(slices.Values(sans)))) {
				t.Errorf("SANs %v have duplicates", sans)
			}
		})
	}
	bad := []struct{ in, msg string }{
		{"*.example.com", "wildcards"},
		{"DNS:*.mesh", "wildcards"},
		{"DNS:a..b", "not a DNS name"},
		{"DNS:", "not a DNS name"},
		{"IP:999.1.1.1", "not an IP address"},
		{"URI:relative/path", "not an absolute URI"},
		{"URI:spiffe://mesh.local/node/ct2", "SPIFFE IDs are set by the CA"},
		{"email:a@b.example", "want DNS:"},
		{"host:8080", "want DNS:"},
	}
	files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
	for _, tc := range bad {
		t.Run(tc.in, func(t *testing.T) {
			if _, err := f.ca.Sign(ctx, ca.NodeRequest("ct9", tc.in), ca.WithGeneratedKey()); !errors.Is(err, ca.ErrPolicy) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Sign(NodeRequest(ct9, %q)): %v, want ErrPolicy mentioning %q", tc.in, err, tc.msg)
			}
			f.requireLastAudit(t, "cert.issue", "refused", tc.msg)
		})
	}
	requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
	f.requireStoreUnchanged(t, st)
	if _, err := os.Stat(f.cfg.IssuedKeyPath("ct9.mesh")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused request left a key behind: %v", err)
	}
}

// TestRefusedFirstIssueLeavesNoDirectory: the very first issue refused by
// policy must not create the issued/ directory either.
func TestRefusedFirstIssueLeavesNoDirectory(t *testing.T) {
	f := newCA(t, caOptions{})
	files := snapshotFiles(t, f.cfg.Dir)
	if _, err := f.ca.Sign(t.Context(), ca.NodeRequest("ct1", "*.example.com"), ca.WithGeneratedKey()); !errors.Is(err, ca.ErrPolicy) {
		t.Fatalf("Sign of a node with a wildcard: %v", err)
	}
	requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
}

// TestSignPolicy drives Sign with CSRs made by crypto/x509: the profile
// decides, the CSR may ask only for what the profile grants.
func TestSignPolicy(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	key := pkitest.NewKey(t)
	node := func(n string) identity.Identity {
		id, err := identity.NewNode(n)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	bcCA, _ := asn1.Marshal(struct{ IsCA bool }{true})
	bcLeaf, _ := asn1.Marshal(struct{}{})
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsa4097, err := rsa.GenerateKey(rand.Reader, 4104) // past the 4096-bit ceiling
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := goCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}})
	corrupt.Signature = bytes.Clone(corrupt.Signature)
	corrupt.Signature[len(corrupt.Signature)-1] ^= 1

	cases := []struct {
		name    string
		key     crypto.Signer
		tmpl    x509.CertificateRequest
		csr     *x509.CertificateRequest // instead of key and tmpl
		req     ca.Request
		wantErr error // nil: must succeed
		wantMsg string
		check   func(t *testing.T, c *x509.Certificate)
	}{
		{name: "identity from the CN", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}}, req: ca.Request{Profile: ca.ProfileNode},
			check: func(t *testing.T, c *x509.Certificate) {
				if c.Subject.CommonName != "ct5.mesh" || !slices.Contains(c.DNSNames, "ct5-runtime-rpc.mesh") {
					t.Errorf("CN %q DNS %v", c.Subject.CommonName, c.DNSNames)
				}
			}},
		{name: "identity named, CSR without CN", req: ca.Request{Profile: ca.ProfileNode, Identity: node("ct5")},
			check: func(t *testing.T, c *x509.Certificate) {
				if c.Subject.CommonName != "ct5.mesh" {
					t.Errorf("CN %q", c.Subject.CommonName)
				}
			}},
		{name: "subject fields beyond the CN are dropped", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh", Organization: []string{"Evil Corp"}}}, req: ca.Request{Profile: ca.ProfileNode},
			check: func(t *testing.T, c *x509.Certificate) {
				if len(c.Subject.Organization) != 0 {
					t.Errorf("subject %v carries the CSR's organization", c.Subject)
				}
			}},
		{name: "granted SANs may be asked for", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}, DNSNames: []string{"ct5-mcp.mesh"}, URIs: []*url.URL{mustURL("spiffe://mesh.local/node/ct5")}}, req: ca.Request{Profile: ca.ProfileNode}},
		{name: "CA:FALSE is fine", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bcLeaf}}}, req: ca.Request{Profile: ca.ProfileNode},
			check: func(t *testing.T, c *x509.Certificate) {
				if c.IsCA {
					t.Error("leaf is a CA")
				}
			}},
		{name: "requested key usages are ignored", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct5"}, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: []byte{0x03, 0x02, 0x01, 0x06}}}}, req: ca.Request{Profile: ca.ProfileAgent},
			check: func(t *testing.T, c *x509.Certificate) {
				if c.KeyUsage&x509.KeyUsageCertSign != 0 || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
					t.Errorf("KeyUsage %v ExtKeyUsage %v", c.KeyUsage, c.ExtKeyUsage)
				}
			}},
		{name: "lifetime at the maximum", req: ca.Request{Profile: ca.ProfileNode, Identity: node("ct5"), TTL: ca.DefaultLeafTTL},
			check: func(t *testing.T, c *x509.Certificate) {
				if want := f.clock.Now().Add(ca.DefaultLeafTTL); !c.NotAfter.Equal(want) {
					t.Errorf("NotAfter %v, want %v", c.NotAfter, want)
				}
			}},
		{name: "shorter lifetime", req: ca.Request{Profile: ca.ProfileNode, Identity: node("ct5"), TTL: time.Hour},
			check: func(t *testing.T, c *x509.Certificate) {
				if want := f.clock.Now().Add(time.Hour); !c.NotAfter.Equal(want) {
					t.Errorf("NotAfter %v, want %v", c.NotAfter, want)
				}
			}},

		{name: "CA:TRUE", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bcCA}}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "CA:TRUE"},
		{name: "another identity's CN", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct6.mesh"}}, req: ca.Request{Profile: ca.ProfileNode, Identity: node("ct5")}, wantErr: ca.ErrPolicy, wantMsg: "can only carry its own identity"},
		{name: "another node's DNS name", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}, DNSNames: []string{"ct6.mesh"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "DNS:ct6.mesh"},
		{name: "another identity's SPIFFE ID", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct5"}, URIs: []*url.URL{mustURL("spiffe://mesh.local/agent/ct5/admin")}}, req: ca.Request{Profile: ca.ProfileAgent}, wantErr: ca.ErrPolicy, wantMsg: "is not granted"},
		{name: "an email SAN", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice@external"}, EmailAddresses: []string{"alice@example.com"}}, req: ca.Request{Profile: ca.ProfileClient}, wantErr: ca.ErrPolicy, wantMsg: "email:alice@example.com"},
		{name: "longer lifetime", req: ca.Request{Profile: ca.ProfileNode, Identity: node("ct5"), TTL: ca.DefaultLeafTTL + time.Second}, wantErr: ca.ErrPolicy, wantMsg: "longer than"},
		{name: "negative lifetime", req: ca.Request{Profile: ca.ProfileNode, Identity: node("ct5"), TTL: -time.Hour}, wantErr: ca.ErrPolicy, wantMsg: "negative"},
		{name: "RSA 1024", key: rsa1024, tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "too small"},
		{name: "RSA 4097", key: rsa4097, tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "too large"},
		{name: "P-224", key: p224, tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "P-224"},
		{name: "unknown critical extension", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{0x05, 0x00}}}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "critical"},
		{name: "no CN and no identity", req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "no common name"},
		{name: "CN not an identity", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "Opus"}}, req: ca.Request{Profile: ca.ProfileAgent}, wantErr: ca.ErrPolicy, wantMsg: "Opus"},
		{name: "CN with a path", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "../x.mesh"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "../x"},
		{name: "CN wildcard", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "*.mesh"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "*"},
		{name: "agent CN on the node profile", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct5"}}, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrPolicy, wantMsg: "--profile agent"},
		{name: "node identity on the client profile", req: ca.Request{Profile: ca.ProfileClient, Identity: node("ct5")}, wantErr: ca.ErrPolicy, wantMsg: "--profile node"},
		{name: "extra SANs on an agent", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct5"}}, req: ca.Request{Profile: ca.ProfileAgent, ExtraSANs: []string{"DNS:x.example"}}, wantErr: ca.ErrPolicy, wantMsg: "only node certificates"},
		{name: "unknown profile", tmpl: x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct5.mesh"}}, req: ca.Request{Profile: "admin"}, wantMsg: "unknown profile"},
		{name: "corrupted signature", csr: corrupt, req: ca.Request{Profile: ca.ProfileNode}, wantErr: ca.ErrBadCSR, wantMsg: "signature does not verify"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			csr := tc.csr
			if csr == nil {
				k := tc.key
				if k == nil {
					k = key
				}
				csr = goCSR(t, k, &tc.tmpl)
			}
			before := f.storeState(t)
			is, err := f.ca.Sign(ctx, tc.req, ca.FromCSR(csr))
			if tc.wantErr == nil && tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if !bytes.Equal(is.Cert.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
					t.Error("certificate does not carry the CSR's key")
				}
				requireGoVerifies(t, f, is.Cert)
				if tc.check != nil {
					tc.check(t, is.Cert)
				}
				return
			}
			if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Sign: %v, want %v mentioning %q", err, tc.wantErr, tc.wantMsg)
			}
			f.requireStoreUnchanged(t, before)
			f.requireLastAudit(t, "cert.issue", "refused", tc.wantMsg)
		})
	}
	if _, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileNode}, ca.FromCSR(nil)); !errors.Is(err, ca.ErrBadCSR) {
		t.Errorf("Sign(nil): %v, want ErrBadCSR", err)
	}
}

func TestParseCSR(t *testing.T) {
	valid := goCSR(t, pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}})
	cert := readCertPEM(t)
	cases := []struct {
		name    string
		data    []byte
		wantErr bool
		wantMsg string
	}{
		{"PEM", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: valid.Raw}), false, ""},
		{"old PEM type", pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: valid.Raw}), false, ""},
		{"DER", valid.Raw, false, ""},
		{"empty", nil, true, ""},
		{"text", []byte("hello, CA\n"), true, ""},
		{"certificate", cert, true, `PEM block is "CERTIFICATE"`},
		{"private key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), true, "want CERTIFICATE REQUEST"},
		{"garbage in a CSR block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("garbage")}), true, ""},
		{"truncated DER", valid.Raw[:len(valid.Raw)/2], true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := ca.ParseCSR(tc.data)
			if !tc.wantErr {
				if err != nil || csr.Subject.CommonName != "ct1.mesh" {
					t.Fatalf("ParseCSR: %v, %v", csr, err)
				}
				return
			}
			if !errors.Is(err, ca.ErrBadCSR) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("ParseCSR: %v, want ErrBadCSR mentioning %q", err, tc.wantMsg)
			}
		})
	}
}

func readCertPEM(t testing.TB) []byte {
	t.Helper()
	key := pkitest.NewKey(t)
	tmpl := &x509.Certificate{SerialNumber: bigOne(), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestLeafLifetime: a leaf never outlives its intermediate, and an expired
// intermediate issues nothing.
func TestLeafLifetime(t *testing.T) {
	f := newCA(t, caOptions{mod: func(c *ca.Config) { c.IntermediateTTL = 30 * 24 * time.Hour }})
	inter := f.activeIntermediate(t)
	is := f.sign(t, ca.NodeRequest("ct1"))
	if !is.Cert.NotAfter.Equal(inter.NotAfter) {
		t.Errorf("leaf NotAfter %v, intermediate %v", is.Cert.NotAfter, inter.NotAfter)
	}
	f.clock.Set(inter.NotAfter.Add(time.Second))
	st := f.storeState(t)
	if _, err := f.ca.Sign(t.Context(), ca.NodeRequest("ct2"), ca.WithGeneratedKey()); !errors.Is(err, ca.ErrPolicy) || !strings.Contains(err.Error(), "intermediate has expired") {
		t.Fatalf("issue from an expired intermediate: %v", err)
	}
	f.requireStoreUnchanged(t, st)
}

func TestRevoke(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	node1 := f.sign(t, ca.NodeRequest("ct1"))
	node2, err := f.ca.Sign(ctx, ca.NodeRequest("ct1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	agent := f.sign(t, ca.AgentRequest("opus", "ct1"))
	client, err := f.ca.Sign(ctx, ca.ClientRequest("alice"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	// The intermediate published an empty CRL when it was issued, so
	// revocation-checking verifiers work from the start.
	if first := crlBy(t, f, agent.Cert.AuthorityKeyId); first.Number.Int64() != 1 || len(first.RevokedCertificateEntries) != 0 {
		t.Fatalf("crl.pem before any revocation: number %v, %d entries; want an empty CRL number 1", first.Number, len(first.RevokedCertificateEntries))
	}

	// Unknown targets change nothing, before and after a CRL exists.
	unknown := func(t *testing.T) {
		t.Helper()
		inter := f.activeIntermediate(t)
		for _, tc := range []struct {
			target  string
			wantErr error
			wantMsg string
		}{
			{"nobody.mesh", ca.ErrUnknownCert, "no certificate was ever issued to"},
			{"ghost@external", ca.ErrUnknownCert, "no certificate was ever issued"},
			{"deadbeef", ca.ErrUnknownCert, "serial deadbeef"},
			{"0xDE:AD:BE:EF", ca.ErrUnknownCert, "serial deadbeef"},
			{"../x", ca.ErrUnknownCert, "neither an identity"},
			{"Opus", ca.ErrUnknownCert, "neither an identity"},
			{"", ca.ErrUnknownCert, "neither an identity"},
			{"*.mesh", ca.ErrUnknownCert, "neither an identity"},
			{inter.SerialNumber.Text(16), ca.ErrPolicy, "rotate-intermediate"},
		} {
			files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
			revs, err := f.ca.Revoke(ctx, tc.target, 0)
			if revs != nil || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Revoke(%q) = %v, %v; want %v mentioning %q", tc.target, revs, err, tc.wantErr, tc.wantMsg)
				continue
			}
			requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
			f.requireStoreUnchanged(t, st)
			f.requireLastAudit(t, "cert.revoke", "refused", tc.wantMsg)
		}
	}
	unknown(t)

	// By serial, in the forms an operator pastes.
	colons := strings.ToUpper(agent.Cert.SerialNumber.Text(16))
	var parts []string
	for i := len(colons); i > 0; i -= 2 {
		parts = append([]string{colons[max(0, i-2):i]}, parts...)
	}
	revs, err := f.ca.Revoke(ctx, strings.Join(parts, ":"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 1 || revs[0].Serial != agent.Record.Serial || revs[0].CommonName != "opus@ct1" || revs[0].Reason != 1 || revs[0].Seq == 0 {
		t.Fatalf("Revoke by serial = %+v", revs)
	}
	requireGoRevoked(t, f, agent.Cert)
	f.requireLastAudit(t, "crl.rebuild", "ok", "1 revoked")

	// By name: every live certificate of the name.
	revs, err = f.ca.Revoke(ctx, "ct1.mesh", 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 2 {
		t.Fatalf("revoking ct1.mesh revoked %d certificates, want both", len(revs))
	}
	requireGoRevoked(t, f, node1.Cert)
	requireGoRevoked(t, f, node2.Cert)
	requireGoVerifies(t, f, client.Cert)
	crl := crlBy(t, f, agent.Cert.AuthorityKeyId)
	if len(crl.RevokedCertificateEntries) != 3 {
		t.Errorf("CRL lists %d serials, want 3", len(crl.RevokedCertificateEntries))
	}
	for _, e := range crl.RevokedCertificateEntries {
		want := map[string]int{agent.Record.Serial: 1, node1.Record.Serial: 4, node2.Record.Serial: 4}[e.SerialNumber.Text(16)]
		if e.ReasonCode != want {
			t.Errorf("serial %x has reason %d, want %d", e.SerialNumber, e.ReasonCode, want)
		}
	}

	for _, target := range []string{"ct1.mesh", agent.Record.Serial} {
		files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
		if _, err := f.ca.Revoke(ctx, target, 0); !errors.Is(err, ca.ErrAlreadyRevoked) {
			t.Errorf("revoking %s again: %v, want ErrAlreadyRevoked", target, err)
		}
		requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
		f.requireStoreUnchanged(t, st)
	}
	unknown(t)

	// Every rebuild takes the next CRL number, in the file and as
	// returned.
	last := crl.Number.Int64()
	for i := 0; i < 3; i++ {
		f.clock.Advance(time.Minute)
		got, err := f.ca.RebuildCRL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Number.Int64() != last+1 {
			t.Fatalf("rebuild %d: CRL number %v, want %d", i, got[0].Number, last+1)
		}
		if onDisk := crlBy(t, f, agent.Cert.AuthorityKeyId); onDisk.Number.Int64() != last+1 || !onDisk.ThisUpdate.Equal(f.clock.Now().Add(-time.Minute)) {
			t.Fatalf("crl.pem has number %v this-update %v", onDisk.Number, onDisk.ThisUpdate)
		}
		last++
	}
	l := crlBy(t, f, agent.Cert.AuthorityKeyId)
	if want := f.clock.Now().Add(ca.DefaultCRLValidity); !l.NextUpdate.Equal(want) {
		t.Errorf("NextUpdate %v, want %v", l.NextUpdate, want)
	}
	if fi, err := os.Stat(f.cfg.CRLPath()); err != nil || fi.Mode() != 0o644 {
		t.Errorf("crl.pem: %v %v, want mode 0644", fi, err)
	}

	// A name whose certificates expired is still revoked as an identity:
	// nothing is issued to it again.
	f.clock.Set(client.Cert.NotAfter.Add(time.Second))
	if revs, err := f.ca.Revoke(ctx, "alice@external", 0); err != nil || len(revs) != 0 {
		t.Errorf("revoking an expired name = %v, %v; want no certificate revoked and no error", revs, err)
	}
	if _, err := f.ca.Sign(ctx, ca.ClientRequest("alice"), ca.WithGeneratedKey()); !errors.Is(err, ca.ErrRevoked) {
		t.Errorf("issuing to revoked alice@external: %v, want ErrRevoked", err)
	}
}

// TestRevokedIdentityStaysRevoked: revoking a name revokes the identity on
// every issuance path until it is reinstated; revoking a node revokes its
// agents; keyCompromise blocks the key.
func TestRevokedIdentityStaysRevoked(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	node := f.sign(t, ca.NodeRequest("ct200"))
	agent, err := f.ca.Sign(ctx, ca.AgentRequest("opus", "ct200"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	other := f.sign(t, ca.AgentRequest("opus", "ct201"))
	revs, err := f.ca.Revoke(ctx, "ct200.mesh", 0)
	if err != nil || len(revs) != 2 {
		t.Fatalf("revoking node ct200 = %+v, %v; want the node's and its agent's certificates", revs, err)
	}
	requireGoRevoked(t, f, node.Cert)
	requireGoRevoked(t, f, agent.Cert)
	requireGoVerifies(t, f, other.Cert)

	key := pkitest.NewKey(t)
	paths := []struct {
		name  string
		issue func() error
	}{
		{"ca issue-node", func() error { _, err := f.ca.Sign(ctx, ca.NodeRequest("ct200"), ca.WithGeneratedKey()); return err }},
		{"ca issue-agent of the node", func() error {
			_, err := f.ca.Sign(ctx, ca.AgentRequest("sage", "ct200"), ca.WithGeneratedKey())
			return err
		}},
		{"ca sign (node CSR)", func() error {
			_, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileNode}, ca.FromCSR(goCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct200.mesh"}})))
			return err
		}},
		{"ca sign (agent CSR)", func() error {
			_, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileAgent}, ca.FromCSR(goCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct200"}})))
			return err
		}},
		{"Check before spending a token", func() error {
			id, _ := identity.NewNode("ct200")
			return f.ca.Check(ctx, ca.Request{Profile: ca.ProfileNode, Identity: id}, ca.FromCSR(goCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct200.mesh"}})))
		}},
		{"Check with ProvenPossession of an agent of the node", func() error {
			id, _ := identity.NewAgent("sage", "ct200")
			return f.ca.Check(ctx, ca.Request{Profile: ca.ProfileAgent, Identity: id}, ca.FromCSR(goCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sage@ct200"}})), ca.ProvenPossession())
		}},
	}
	for _, p := range paths {
		st := f.storeState(t)
		if err := p.issue(); !errors.Is(err, ca.ErrRevoked) || !strings.Contains(err.Error(), "ct200.mesh") {
			t.Errorf("%s for revoked ct200: %v, want ErrRevoked naming ct200.mesh", p.name, err)
		}
		f.requireStoreUnchanged(t, st)
	}
	f.requireAudited(t, "cert.issue", "refused", "reinstate")

	if err := f.ca.Reinstate(ctx, "opus@ct200"); !errors.Is(err, ca.ErrNotRevoked) {
		t.Errorf("reinstating an identity that is not revoked: %v, want ErrNotRevoked", err)
	}
	if err := f.ca.Reinstate(ctx, "ct200.mesh"); err != nil {
		t.Fatalf("Reinstate: %v", err)
	}
	f.requireLastAudit(t, "identity.reinstate", "ok", "")
	if _, err := f.ca.Sign(ctx, ca.AgentRequest("sage", "ct200"), ca.WithGeneratedKey()); err != nil {
		t.Errorf("issuing after reinstatement: %v", err)
	}
	requireGoRevoked(t, f, agent.Cert) // what was revoked stays revoked

	// keyCompromise by serial blocks the key, whatever name asks next.
	stolen := pkitest.NewKey(t)
	is, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileClient}, ca.FromCSR(goCSR(t, stolen, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice@external"}})))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Revoke(ctx, is.Record.Serial, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileClient}, ca.FromCSR(goCSR(t, stolen, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bob@external"}}))); !errors.Is(err, ca.ErrRevoked) || !strings.Contains(err.Error(), "keyCompromise") {
		t.Errorf("signing the compromised key again: %v, want ErrRevoked for keyCompromise", err)
	}
	bob, _ := identity.NewExternal("bob")
	if err := f.ca.Check(ctx, ca.Request{Profile: ca.ProfileClient, Identity: bob}, ca.FromCSR(goCSR(t, stolen, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bob@external"}}))); !errors.Is(err, ca.ErrRevoked) || !strings.Contains(err.Error(), "keyCompromise") {
		t.Errorf("Check of the compromised key: %v, want ErrRevoked for keyCompromise", err)
	}
	// superseded does not block the key: the holder renews with it.
	kept := pkitest.NewKey(t)
	is, err = f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileClient}, ca.FromCSR(goCSR(t, kept, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "carol@external"}})))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Revoke(ctx, is.Record.Serial, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileClient}, ca.FromCSR(goCSR(t, kept, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "carol@external"}}))); err != nil {
		t.Errorf("re-signing a superseded key: %v", err)
	}
}

// TestCRLWrittenAtomically rebuilds the CRL from several goroutines while
// another reads crl.pem: every read sees a whole CRL, the numbers handed
// out never repeat, and the file ends with the newest.
func TestCRLWrittenAtomically(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	if _, err := f.ca.Sign(ctx, ca.NodeRequest("ct1"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Revoke(ctx, "ct1.mesh", 0); err != nil {
		t.Fatal(err)
	}
	const writers, rebuilds = 4, 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		numbers []int64
		errs    = make(chan error, writers*rebuilds+1)
		stop    = make(chan struct{})
		reads   int
	)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(f.cfg.CRLPath())
			if err != nil {
				errs <- err
				return
			}
			b, rest := pem.Decode(data)
			if b == nil || len(bytes.TrimSpace(rest)) != 0 {
				errs <- fmt.Errorf("read %d: crl.pem is not exactly one PEM block (%d bytes)", reads, len(data))
				return
			}
			if _, err := x509.ParseRevocationList(b.Bytes); err != nil {
				errs <- fmt.Errorf("read %d: %w", reads, err)
				return
			}
			reads++
		}
	}()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := int64(0)
			for i := 0; i < rebuilds; i++ {
				crls, err := f.ca.RebuildCRL(ctx)
				if err != nil {
					errs <- err
					return
				}
				n := crls[0].Number.Int64()
				if n <= prev {
					errs <- fmt.Errorf("CRL number went from %d to %d", prev, n)
				}
				prev = n
				mu.Lock()
				numbers = append(numbers, n)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-readerDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	slices.Sort(numbers)
	if len(slices.Compact(slices.Clone(numbers))) != writers*rebuilds {
		t.Errorf("CRL numbers repeat: %v", numbers)
	}
	final := readCRLs(t, f.cfg.CRLPath())
	if len(final) != 1 || final[0].Number.Int64() != numbers[len(numbers)-1] {
		t.Errorf("crl.pem ends with number %v, the newest is %d", final[0].Number, numbers[len(numbers)-1])
	}
	entries, err := os.ReadDir(f.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	if reads == 0 {
		t.Error("the reader never read crl.pem")
	}
}

// TestConcurrentIssue issues from many goroutines: serials never collide,
// and concurrent first issues of one name leave a key that matches the
// certificate on disk.
func TestConcurrentIssue(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	for i := 0; i < n; i++ {
		wg.Add(3)
		go func() {
			defer wg.Done()
			_, err := f.ca.Sign(ctx, ca.ClientRequest(fmt.Sprintf("user%d", i)), ca.WithGeneratedKey())
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := f.ca.Sign(ctx, ca.NodeRequest("ct1"), ca.WithGeneratedKey())
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := f.ca.RebuildCRL(ctx)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	recs, err := f.store.Certs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1+2*n {
		t.Fatalf("store holds %d certificates, want %d", len(recs), 1+2*n)
	}
	key, err := pemfile.ReadKey(f.cfg.IssuedKeyPath("ct1.mesh"))
	if err != nil {
		t.Fatal(err)
	}
	onDisk := readCert(t, f.cfg.IssuedCertPath("ct1.mesh"))
	if !key.Public().(*ecdsa.PublicKey).Equal(onDisk.PublicKey) {
		t.Fatal("issued/ct1.mesh.key does not match issued/ct1.mesh.crt")
	}
	nodes, err := f.store.CertsByName(ctx, "ct1.mesh")
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range nodes {
		c := readCertFromPEM(t, rec.PEM)
		if !key.Public().(*ecdsa.PublicKey).Equal(c.PublicKey) {
			t.Errorf("ct1.mesh serial %s was issued for a key that is not in issued/ct1.mesh.key", rec.Serial)
		}
	}
}

func readCertFromPEM(t testing.TB, data []byte) *x509.Certificate {
	t.Helper()
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestVerifyStatuses(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	t0 := f.clock.Now()
	node := f.sign(t, ca.NodeRequest("ct1"))
	agent, err := f.ca.Sign(ctx, ca.AgentRequest("opus", "ct1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Revoke(ctx, "opus@ct1", 1); err != nil {
		t.Fatal(err)
	}
	foreign := newCA(t, caOptions{})
	stranger := foreign.sign(t, ca.NodeRequest("ct1"))
	renewAt := t0.Add(ca.DefaultLeafTTL * 2 / 3)

	cases := []struct {
		name    string
		at      time.Time
		certs   []*x509.Certificate
		want    ca.Status
		wantMsg string
	}{
		{"fresh", t0, []*x509.Certificate{node.Cert}, ca.StatusValid, ""},
		{"just before renewal", renewAt.Add(-time.Second), []*x509.Certificate{node.Cert}, ca.StatusValid, ""},
		{"due for renewal", renewAt.Add(time.Second), []*x509.Certificate{node.Cert}, ca.StatusExpiring, ""},
		{"last second", node.Cert.NotAfter, []*x509.Certificate{node.Cert}, ca.StatusExpiring, ""},
		{"expired", node.Cert.NotAfter.Add(time.Second), []*x509.Certificate{node.Cert}, ca.StatusExpired, "expired at"},
		{"not yet valid", t0.Add(-2 * time.Minute), []*x509.Certificate{node.Cert}, ca.StatusNotYetValid, "not valid before"},
		{"revoked", t0, []*x509.Certificate{agent.Cert}, ca.StatusRevoked, "keyCompromise"},
		{"revoked and expired", agent.Cert.NotAfter.Add(time.Hour), []*x509.Certificate{agent.Cert}, ca.StatusRevoked, "revoked at"},
		{"foreign CA", t0, []*x509.Certificate{stranger.Cert}, ca.StatusUntrusted, "does not chain"},
		{"foreign CA with its chain", t0, append([]*x509.Certificate{stranger.Cert}, foreign.ca.Intermediates()...), ca.StatusUntrusted, "does not chain"},
		{"intermediate as a leaf", t0, []*x509.Certificate{f.activeIntermediate(t)}, ca.StatusUntrusted, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.clock.Set(tc.at)
			v, err := f.ca.Verify(ctx, tc.certs)
			if err != nil {
				t.Fatal(err)
			}
			if v.Status != tc.want || !strings.Contains(v.Problem, tc.wantMsg) {
				t.Fatalf("Verify = %+v, want %s with problem mentioning %q", v, tc.want, tc.wantMsg)
			}
			if wantOK := tc.want == ca.StatusValid || tc.want == ca.StatusExpiring; v.OK() != wantOK {
				t.Fatalf("OK() = %v for %s", v.OK(), v.Status)
			}
			if tc.want == ca.StatusValid && v.Identity != "ct1.mesh" {
				t.Errorf("identity %q, want ct1.mesh", v.Identity)
			}
		})
	}
	if _, err := f.ca.Verify(ctx, nil); err == nil {
		t.Error("Verify of nothing succeeded")
	}
}

// listFixture is a CA that issued ct1.mesh, opus@ct1 and then extra at
// t0, and 50 days later alice@external, when it revoked opus@ct1
// (privilegeWithdrawn).
func listFixture(t *testing.T, extra ...ca.Request) (f *fixture, t0 time.Time) {
	t.Helper()
	f = newCA(t, caOptions{})
	ctx := t.Context()
	t0 = f.clock.Now()
	for _, req := range append([]ca.Request{ca.NodeRequest("ct1"), ca.AgentRequest("opus", "ct1")}, extra...) {
		if _, err := f.ca.Sign(ctx, req, ca.WithGeneratedKey()); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(50 * 24 * time.Hour)
	if _, err := f.ca.Sign(ctx, ca.ClientRequest("alice"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Revoke(ctx, "opus@ct1", 9); err != nil {
		t.Fatal(err)
	}
	return f, t0
}

func TestListStatuses(t *testing.T) {
	f, t0 := listFixture(t)
	ctx := t.Context()
	cases := []struct {
		at   time.Time
		want map[string]ca.Status
	}{
		{t0.Add(50 * 24 * time.Hour), map[string]ca.Status{"ct1.mesh": ca.StatusValid, "opus@ct1": ca.StatusRevoked, "alice@external": ca.StatusValid}},
		{t0.Add(61 * 24 * time.Hour), map[string]ca.Status{"ct1.mesh": ca.StatusExpiring, "opus@ct1": ca.StatusRevoked, "alice@external": ca.StatusValid}},
		{t0.Add(91 * 24 * time.Hour), map[string]ca.Status{"ct1.mesh": ca.StatusExpired, "opus@ct1": ca.StatusRevoked, "alice@external": ca.StatusValid}},
		{t0.Add(111 * 24 * time.Hour), map[string]ca.Status{"ct1.mesh": ca.StatusExpired, "opus@ct1": ca.StatusRevoked, "alice@external": ca.StatusExpiring}},
	}
	for _, tc := range cases {
		f.clock.Set(tc.at)
		list, err := f.ca.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 4 || list[0].Kind != "intermediate" || list[0].Status != ca.StatusValid {
			t.Fatalf("at %v: list starts %+v, want the valid intermediate first of 4", tc.at, list[0])
		}
		for _, l := range list[1:] {
			if l.Status != tc.want[l.CommonName] {
				t.Errorf("at +%v: %s is %s, want %s", tc.at.Sub(t0), l.CommonName, l.Status, tc.want[l.CommonName])
			}
			if (l.Status == ca.StatusRevoked) != (l.RevokedAt != nil) || (l.RevokedAt != nil && l.Reason != "privilegeWithdrawn") {
				t.Errorf("%s: RevokedAt %v reason %q", l.CommonName, l.RevokedAt, l.Reason)
			}
		}
	}
}

// TestRootKeyOffline: once the intermediate exists, the root directory can
// go offline and everything but a new intermediate keeps working.
func TestRootKeyOffline(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	rootKeyPEM, err := os.ReadFile(f.rootKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	offline := f.cfg.RootDir + ".offline"
	if err := os.Rename(f.cfg.RootDir, offline); err != nil {
		t.Fatal(err)
	}
	f.open(t) // a fresh process, root gone

	node := f.sign(t, ca.NodeRequest("ct1", "IP:10.0.0.1"))
	agent, err := f.ca.Sign(ctx, ca.AgentRequest("opus", "ct1"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	client := f.sign(t, ca.ClientRequest("alice"))
	csr := goCSR(t, pkitest.NewKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct2.mesh"}})
	signed, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileNode}, ca.FromCSR(csr))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Revoke(ctx, "opus@ct1", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.RebuildCRL(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.List(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*x509.Certificate{node.Cert, client.Cert, signed.Cert} {
		requireGoVerifies(t, f, c)
	}
	requireGoRevoked(t, f, agent.Cert)

	// openssl, trusting the root copy the CA directory keeps, agrees.
	rootCopy := filepath.Join(f.cfg.Dir, "intermediate", "root.crt")
	openssltest.RequireVerifies(t, rootCopy, []string{f.intPath()}, leafFile(t, node), "-crl_check", "-CRLfile", f.cfg.CRLPath())
	openssltest.RequireRevoked(t, rootCopy, []string{f.intPath()}, leafFile(t, agent), f.cfg.CRLPath())

	// Only a new intermediate needs the root; asking for one changes
	// nothing.
	files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
	if _, err := ca.PrepareIntermediate(ctx, f.cfg, f.store); !errors.Is(err, ca.ErrNotInitialized) || !strings.Contains(err.Error(), "offline root") {
		t.Fatalf("PrepareIntermediate with the root offline: %v", err)
	}
	requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
	f.requireStoreUnchanged(t, st)

	// Nothing in the CA directory, the store included, holds the root key.
	body := pemBody(t, rootKeyPEM)
	err = filepath.WalkDir(f.cfg.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(data, body[len(body)-32:]) || bytes.Contains(data, pemDER(t, rootKeyPEM)) {
			t.Errorf("%s contains the root key", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// pemBody returns the base64 text of a PEM block, newlines removed. Its
// start is the same for every key of a type; compare its end.
func pemBody(t testing.TB, data []byte) []byte {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") {
			lines = append(lines, l)
		}
	}
	return []byte(strings.Join(lines, ""))
}

func pemDER(t testing.TB, data []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b.Bytes
}

// TestRotation prepares a new intermediate while the old one signs, then
// activates it with the root offline. Certificates of the old one stay
// valid, and revocable, until they expire.
func TestRotation(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	old := f.activeIntermediate(t)
	oldLeaf := f.sign(t, ca.NodeRequest("ct1"))
	chainBefore, _ := os.ReadFile(f.cfg.ChainPath())

	f.clock.Advance(time.Hour)
	prepared, err := ca.PrepareIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	f.requireAudited(t, "ca.rotate-intermediate.prepare", "ok", hex.EncodeToString(prepared.SubjectKeyId))
	if err := f.ca.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	requireBundle(t, f, old, prepared)
	if n := len(readCRLs(t, f.cfg.CRLPath())); n != 2 {
		t.Errorf("after prepare crl.pem holds %d CRLs, want one per live intermediate (2)", n)
	}
	if chain, _ := os.ReadFile(f.cfg.ChainPath()); !bytes.Equal(chain, chainBefore) {
		t.Error("prepare changed chain.pem")
	}
	if !f.activeIntermediate(t).Equal(old) {
		t.Error("prepare changed int.crt")
	}
	duringPrepare := f.sign(t, ca.NodeRequest("ct2"))
	if !bytes.Equal(duringPrepare.Cert.AuthorityKeyId, old.SubjectKeyId) {
		t.Fatal("a prepared intermediate signs before it is activated")
	}
	files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
	if _, err := ca.PrepareIntermediate(ctx, f.cfg, f.store); !errors.Is(err, ca.ErrExists) || !strings.Contains(err.Error(), "already prepared") {
		t.Fatalf("second prepare: %v", err)
	}
	requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
	f.requireStoreUnchanged(t, st)

	// Activation needs no root key.
	if err := os.Rename(f.cfg.RootDir, f.cfg.RootDir+".offline"); err != nil {
		t.Fatal(err)
	}
	rootPath := filepath.Join(f.cfg.RootDir+".offline", "ca.crt")
	activated, err := ca.ActivateIntermediate(ctx, f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	if !activated.Equal(prepared) {
		t.Fatal("activated a different intermediate than the prepared one")
	}
	f.requireAudited(t, "ca.rotate-intermediate.activate", "ok", "retired "+hex.EncodeToString(old.SubjectKeyId))
	f.open(t)
	requireBundle(t, f, old, prepared)
	if !f.activeIntermediate(t).Equal(prepared) {
		t.Error("int.crt is not the activated intermediate")
	}
	if chain, _ := os.ReadFile(f.cfg.ChainPath()); !bytes.HasPrefix(chain, pemfile.EncodeCerts(prepared)) {
		t.Error("chain.pem does not start with the activated intermediate")
	}
	newLeaf := f.sign(t, ca.NodeRequest("ct3"))
	if !bytes.Equal(newLeaf.Cert.AuthorityKeyId, prepared.SubjectKeyId) || !bytes.Equal(newLeaf.ChainPEM[:len(pemfile.EncodeCerts(prepared))], pemfile.EncodeCerts(prepared)) {
		t.Fatal("new certificates are not signed by the activated intermediate")
	}
	if _, err := ca.ActivateIntermediate(ctx, f.cfg, f.store); !errors.Is(err, ca.ErrNoPrepared) {
		t.Fatalf("activate with nothing prepared: %v", err)
	}

	// Old and new leaves verify against the published bundle and CRLs, in
	// Go, in openssl (at the CA's clock, an hour ahead), and with the CA's
	// own check.
	bundle := f.cfg.BundlePath()
	attime := func() []string { return []string{"-attime", fmt.Sprint(f.clock.Now().Unix())} }
	for _, is := range []*ca.Issued{oldLeaf, duringPrepare, newLeaf} {
		requireGoVerifies(t, f, is.Cert)
		openssltest.RequireVerifies(t, rootPath, []string{bundle}, leafFile(t, is), append(attime(), "-purpose", "sslserver", "-crl_check", "-CRLfile", f.cfg.CRLPath())...)
	}
	// The old leaf as it was handed out (leaf + old chain) still verifies.
	v, err := f.ca.Verify(ctx, readCertsFile(t, bytes.Join([][]byte{oldLeaf.PEM, oldLeaf.ChainPEM}, nil)))
	if err != nil || !v.OK() {
		t.Fatalf("Verify(old leaf with its chain) = %+v, %v", v, err)
	}

	// A certificate of the old intermediate is revoked in a CRL the old
	// intermediate signs.
	if _, err := f.ca.Revoke(ctx, "ct1.mesh", 1); err != nil {
		t.Fatal(err)
	}
	crls := readCRLs(t, f.cfg.CRLPath())
	if len(crls) != 2 {
		t.Fatalf("crl.pem holds %d CRLs, want one per live intermediate (2)", len(crls))
	}
	requireGoRevoked(t, f, oldLeaf.Cert)
	if l := crlBy(t, f, prepared.SubjectKeyId); len(l.RevokedCertificateEntries) != 0 {
		t.Errorf("the new intermediate's CRL lists %d serials it never issued", len(l.RevokedCertificateEntries))
	}
	openssltest.RequireRevoked(t, rootPath, []string{bundle}, leafFile(t, oldLeaf), f.cfg.CRLPath(), attime()...)
	openssltest.RequireVerifies(t, rootPath, []string{bundle}, leafFile(t, duringPrepare), append(attime(), "-crl_check", "-CRLfile", f.cfg.CRLPath())...)
	openssltest.RequireVerifies(t, rootPath, []string{bundle}, leafFile(t, newLeaf), append(attime(), "-crl_check", "-CRLfile", f.cfg.CRLPath())...)
	oldKey := writeFile(t, t.TempDir(), "old.crt", pemfile.EncodeCerts(old))
	for i, p := range splitCRLs(t, f.cfg.CRLPath()) {
		issuer := oldKey
		if bytes.Equal(crls[i].AuthorityKeyId, prepared.SubjectKeyId) {
			issuer = writeFile(t, t.TempDir(), "new.crt", pemfile.EncodeCerts(prepared))
		}
		text, _ := opensslCRL(t, p, issuer)
		if listed := strings.Contains(text, opensslSerial(oldLeaf.Cert)); listed != (issuer == oldKey) {
			t.Errorf("CRL %d (by %s) lists the old leaf: %v", i, crls[i].Issuer.CommonName, listed)
		}
	}

	// ... and the unrevoked one stays valid until it expires.
	f.clock.Set(duringPrepare.Cert.NotAfter.Add(-time.Minute))
	if v, err := f.ca.Verify(ctx, []*x509.Certificate{duringPrepare.Cert}); err != nil || !v.OK() {
		t.Fatalf("old intermediate's leaf a minute before expiry: %+v, %v", v, err)
	}
	openssltest.RequireVerifies(t, rootPath, []string{bundle}, leafFile(t, duringPrepare), attime()...)
	f.clock.Set(duringPrepare.Cert.NotAfter.Add(time.Second))
	if v, err := f.ca.Verify(ctx, []*x509.Certificate{duringPrepare.Cert}); err != nil || v.Status != ca.StatusExpired {
		t.Fatalf("old intermediate's leaf after expiry: %+v, %v", v, err)
	}
	if out, err := openssltest.Verify(t, rootPath, []string{bundle}, leafFile(t, duringPrepare), attime()...); err == nil || !strings.Contains(out, "expired") {
		t.Fatalf("openssl accepts the old leaf after it expired: %v\n%s", err, out)
	}
}

// requireBundle checks that bundle.pem is the root and exactly want.
func requireBundle(t testing.TB, f *fixture, want ...*x509.Certificate) {
	t.Helper()
	data, err := os.ReadFile(f.cfg.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 1+len(want) || !certs[0].Equal(f.ca.Root()) {
		t.Fatalf("bundle.pem holds %d certificates, want the root and %d intermediates", len(certs), len(want))
	}
	for _, w := range want {
		if !slices.ContainsFunc(certs[1:], w.Equal) {
			t.Errorf("bundle.pem lacks intermediate %s", w.Subject.CommonName)
		}
	}
}

func readCertsFile(t testing.TB, data []byte) []*x509.Certificate {
	t.Helper()
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// TestAuditLog: every operation is in an intact hash chain, and no key
// ever reaches it.
// TestCRLOrderAfterRotationInTheSameSecond: crl.pem lists the active
// intermediate's CRL first even when a rotation happened within the
// second of the previous one, so both intermediates have the same
// NotBefore (CI once saw the old one first, from map order).
func TestCRLOrderAfterRotationInTheSameSecond(t *testing.T) {
	f := newCA(t, caOptions{})
	for i := range 6 {
		f.rotate(t)
		active := f.activeIntermediate(t)
		data, err := os.ReadFile(f.cfg.CRLPath())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil {
			t.Fatalf("rotation %d: crl.pem holds no PEM block", i)
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := crl.CheckSignatureFrom(active); err != nil {
			t.Fatalf("rotation %d: the first CRL in crl.pem is not the active intermediate's: %v", i, err)
		}
	}
}

func TestAuditLog(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	if _, err := f.ca.Sign(ctx, ca.NodeRequest("ct1"), ca.WithGeneratedKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Sign(ctx, ca.NodeRequest("Bad"), ca.WithGeneratedKey()); err == nil {
		t.Fatal("issued for an invalid id")
	}
	if _, err := f.ca.Revoke(ctx, "ct1.mesh", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.PrepareIntermediate(ctx, f.cfg, f.store); err != nil {
		t.Fatal(err)
	}
	log, err := f.store.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.VerifyAuditChain(log); err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range log {
		actions = append(actions, e.Action+"/"+e.Outcome)
	}
	want := []string{"ca.init/ok", "cert.issue/ok", "ca.issue-intermediate/ok", "crl.rebuild/ok", "cert.issue/ok", "cert.issue/refused", "cert.revoke/ok", "identity.revoke/ok", "crl.rebuild/ok", "cert.issue/ok", "ca.rotate-intermediate.prepare/ok", "crl.rebuild/ok"}
	if !slices.Equal(actions, want) {
		t.Errorf("audit log %v, want %v", actions, want)
	}
	var keys [][]byte
	err = filepath.WalkDir(filepath.Dir(f.cfg.Dir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".key") {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			keys = append(keys, pemBody(t, data))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 4 {
		t.Fatalf("found %d key files, want root, intermediates and node", len(keys))
	}
	for _, e := range log {
		s := e.Action + e.Identity + e.Detail
		if strings.Contains(s, "PRIVATE KEY") {
			t.Errorf("audit entry %d holds a PEM key", e.Seq)
		}
		for _, k := range keys {
			if strings.Contains(s, string(k[len(k)-24:])) {
				t.Errorf("audit entry %d holds key material", e.Seq)
			}
		}
	}
}

func FuzzParseCSR(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct1.mesh"}}, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ca.ParseCSR(data)
		if err != nil {
			if !errors.Is(err, ca.ErrBadCSR) {
				t.Fatalf("ParseCSR error %v does not wrap ErrBadCSR", err)
			}
			return
		}
		if csr == nil {
			t.Fatal("ParseCSR returned neither a CSR nor an error")
		}
	})
}

func bigOne() *big.Int { return big.NewInt(1) }

// TestProvenKeys: the two ways to issue for a key the caller has
// seen proved keep every rule of the policy but the CSR's own signature.
func TestProvenKeys(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	node, err := identity.NewNode("ct9")
	if err != nil {
		t.Fatal(err)
	}
	req := ca.Request{Profile: ca.ProfileNode, Identity: node}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	is, err := f.ca.Sign(ctx, req, ca.ForPublicKey(key.Public()))
	if err != nil || is.Cert.Subject.CommonName != "ct9.mesh" || !key.PublicKey.Equal(is.Cert.PublicKey) {
		t.Fatalf("ForPublicKey: %v, %v", is, err)
	}
	if _, err := f.ca.Sign(ctx, ca.Request{Profile: ca.ProfileNode}, ca.ForPublicKey(key.Public())); !errors.Is(err, ca.ErrPolicy) {
		t.Errorf("ForPublicKey without an identity: %v, want ErrPolicy", err)
	}
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Sign(ctx, req, ca.ForPublicKey(weak.Public())); !errors.Is(err, ca.ErrPolicy) {
		t.Errorf("ForPublicKey for a 1024-bit RSA key: %v, want ErrPolicy", err)
	}

	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ct9.mesh"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-1] ^= 0xff // the signature no longer verifies
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Sign(ctx, req, ca.FromCSR(csr)); !errors.Is(err, ca.ErrBadCSR) {
		t.Errorf("Sign of a CSR whose signature does not verify: %v, want ErrBadCSR", err)
	}
	if _, err := f.ca.Sign(ctx, req, ca.FromCSR(csr), ca.ProvenPossession()); err != nil {
		t.Errorf("ProvenPossession of the same CSR: %v", err)
	}
	csr.Subject.CommonName = "ct10.mesh"
	if _, err := f.ca.Sign(ctx, req, ca.FromCSR(csr), ca.ProvenPossession()); err == nil {
		t.Errorf("ProvenPossession of a CSR naming another identity: issued")
	}
}

// TestSignKeySources: a signing takes exactly one key source; Check runs
// the policy Sign would for every source and neither signs, records,
// audits nor writes a key.
func TestSignKeySources(t *testing.T) {
	f := newCA(t, caOptions{})
	ctx := t.Context()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr := goCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "opus@ct1"}})
	agent := ca.AgentRequest("opus", "ct1")
	for _, tc := range []struct {
		name string
		opts []ca.SignOption
	}{
		{"none", nil},
		{"two", []ca.SignOption{ca.FromCSR(csr), ca.WithGeneratedKey()}},
		{"proof alone", []ca.SignOption{ca.ProvenPossession()}},
	} {
		if _, err := f.ca.Sign(ctx, agent, tc.opts...); err == nil || !strings.Contains(err.Error(), "exactly one key source") {
			t.Errorf("Sign with key sources %s: %v, want a refusal naming the key sources", tc.name, err)
		}
		if err := f.ca.Check(ctx, agent, tc.opts...); err == nil || !strings.Contains(err.Error(), "exactly one key source") {
			t.Errorf("Check with key sources %s: %v, want a refusal naming the key sources", tc.name, err)
		}
	}

	files, st := snapshotFiles(t, f.cfg.Dir), f.storeState(t)
	audit, err := f.store.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]ca.SignOption{
		{ca.FromCSR(csr)},
		{ca.FromCSR(csr), ca.ProvenPossession()},
		{ca.ForPublicKey(key.Public())},
		{ca.WithGeneratedKey()},
	} {
		if err := f.ca.Check(ctx, agent, opts...); err != nil {
			t.Errorf("Check: %v", err)
		}
	}
	if err := f.ca.Check(ctx, ca.AgentRequest("opus", "Bad"), ca.WithGeneratedKey()); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("Check of an invalid name: %v, want ErrInvalidID", err)
	}
	if err := f.ca.Check(ctx, ca.NodeRequest("ct1"), ca.FromCSR(csr)); !errors.Is(err, ca.ErrPolicy) {
		t.Errorf("Check of an agent CSR for a node: %v, want ErrPolicy", err)
	}
	requireSameFiles(t, files, snapshotFiles(t, f.cfg.Dir))
	f.requireStoreUnchanged(t, st)
	if after, err := f.store.AuditLog(ctx); err != nil || len(after) != len(audit) {
		t.Errorf("Check audited: %d entries before, %d after (%v)", len(audit), len(after), err)
	}
}

// TestDueForRenewal: a certificate past its renewal point is due unless
// its identity was renewed since; revoked, expired certificates and
// intermediates never are.
func TestDueForRenewal(t *testing.T) {
	f, t0 := listFixture(t, ca.NodeRequest("ct2"))
	ctx := t.Context()
	f.clock.Advance(5 * 24 * time.Hour)
	renewed, err := f.ca.Sign(ctx, ca.NodeRequest("ct2"), ca.WithGeneratedKey()) // ct2's renewal
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		after time.Duration
		want  []string
	}{
		{55 * 24 * time.Hour, nil},
		{61 * 24 * time.Hour, []string{"ct1.mesh"}}, // ct2 renewed at +55d; opus revoked
		{91 * 24 * time.Hour, nil},                  // ct1 expired
		{111 * 24 * time.Hour, []string{"alice@external"}},
		{116 * 24 * time.Hour, []string{"alice@external", "ct2.mesh"}}, // the renewal is due in turn
	}
	for _, tc := range cases {
		f.clock.Set(t0.Add(tc.after))
		due, err := f.ca.DueForRenewal(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range due {
			got = append(got, l.CommonName)
			if l.CommonName == "ct2.mesh" && l.Serial != renewed.Record.Serial {
				t.Errorf("at +%v: ct2's due certificate is %s, want its renewal %s", tc.after, l.Serial, renewed.Record.Serial)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("at +%v: due %v, want %v", tc.after, got, tc.want)
		}
	}
}
