package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/ca/catest"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// issueParallelism is how many goroutines per CPU ask for certificates at
// once in BenchmarkIssue: a CA serves many clients, and group commit only
// pays off when several writes wait at the same time.
const issueParallelism = 16

// BenchmarkIssue compares the CA's issuance path with the bare signing it
// is built on, measured in the same run because the machines are noisy:
//
//   - raw: x509.CreateCertificate of an agent leaf with the intermediate
//     key, nothing else.
//   - csr: what any CA must do for a CSR without recording anything:
//     ParseCSR, the CSR's signature check (proof of possession), then the
//     same CreateCertificate. ca/csr is the cost of policy and durable
//     recording alone.
//   - ca: ParseCSR and Sign of a pre-generated CSR, through the policy and
//     into the SQLite store on disk (synchronous=FULL): every certificate
//     counted is durably recorded before Sign returns it.
//
// Each reports certs/s, and cpu-us/cert, the CPU time the process spent per
// certificate; bench/issue.sh prints the ratios ca/csr and ca/raw of both.
func BenchmarkIssue(b *testing.B) {
	ctx := context.Background()
	cfg := setupSQLiteCA(b, b.TempDir())
	fx := newIssueFixture(b, cfg)

	b.Run("raw", func(b *testing.B) {
		b.SetParallelism(issueParallelism)
		b.ResetTimer()
		cpu := cpuTime(b)
		b.RunParallel(func(pb *testing.PB) {
			tmpl := *fx.leaf
			tmpl.RawSubject = nil // marshal the subject, as Sign does
			for pb.Next() {
				if _, err := x509.CreateCertificate(rand.Reader, &tmpl, fx.parent, fx.leaf.PublicKey, fx.key); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportIssue(b, cpu)
	})

	b.Run("csr", fx.benchCSR)

	b.Run("ca", func(b *testing.B) {
		// A new, empty store for every run, so that runs compare: the
		// same CA, recording into a database that did not grow with the
		// runs before.
		st, err := sqlstore.OpenSQLite(ctx, filepath.Join(b.TempDir(), "meshtrust.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		c, err := ca.Open(ctx, cfg, st)
		if err != nil {
			b.Fatal(err)
		}
		benchSign(b, c, fx.csrs)
	})
}

// BenchmarkIssuePostgres is BenchmarkIssue's csr and ca with the CA's
// store in PostgreSQL (pgtest's server, default fsync and
// synchronous_commit=on: a certificate counts once its transaction has
// committed). It skips without PostgreSQL, unless MESHTRUST_REQUIRE_POSTGRES
// is set. bench/issue.sh -bench=BenchmarkIssuePostgres prints its ca/csr.
func BenchmarkIssuePostgres(b *testing.B) {
	ctx := context.Background()
	pg := pgtest.Start(b)
	fx := newIssueFixture(b, setupSQLiteCA(b, b.TempDir()))

	b.Run("csr", fx.benchCSR)

	b.Run("ca", func(b *testing.B) {
		// A new schema, and so a new CA, for every run, as BenchmarkIssue
		// starts every run with an empty database.
		st, err := sqlstore.OpenPostgres(ctx, pg.Schema(b))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		dir := b.TempDir()
		cfg := ca.Config{RootDir: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "ca")}
		if _, err := ca.Init(ctx, cfg, st); err != nil {
			b.Fatal(err)
		}
		if _, err := ca.IssueIntermediate(ctx, cfg, st); err != nil {
			b.Fatal(err)
		}
		c, err := ca.Open(ctx, cfg, st)
		if err != nil {
			b.Fatal(err)
		}
		benchSign(b, c, fx.csrs)
	})
}

// issueFixture is what the issuance benchmarks sign: a pool of agent CSRs,
// and for the storeless baselines a leaf the CA issued (so they sign
// exactly what the CA signs, extensions and all) with its intermediate.
type issueFixture struct {
	csrs   [][]byte
	leaf   *x509.Certificate
	parent *x509.Certificate
	key    crypto.Signer
}

// newIssueFixture makes 256 agent CSRs and has the CA of cfg issue one.
func newIssueFixture(b *testing.B, cfg ca.Config) *issueFixture {
	const pool = 256
	fx := &issueFixture{csrs: make([][]byte, pool)}
	for i := range fx.csrs {
		fx.csrs[i] = agentCSR(b, fmt.Sprintf("bench-%d", i), "bench")
	}
	csr, err := ca.ParseCSR(fx.csrs[0])
	if err != nil {
		b.Fatal(err)
	}
	fx.leaf = issueOnce(b, cfg, csr)
	fx.parent, fx.key = intermediateOf(b, cfg)
	return fx
}

// benchCSR is the csr baseline: a CA with no store, which parses each CSR,
// checks its signature and signs the fixture's leaf for its key, with the
// parallelism of benchSign.
func (fx *issueFixture) benchCSR(b *testing.B) {
	var next atomic.Uint64
	b.SetParallelism(issueParallelism)
	b.ResetTimer()
	cpu := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		tmpl := *fx.leaf
		tmpl.RawSubject = nil
		for pb.Next() {
			csr, err := ca.ParseCSR(fx.csrs[next.Add(1)%uint64(len(fx.csrs))])
			if err == nil {
				err = csr.CheckSignature()
			}
			if err == nil {
				_, err = x509.CreateCertificate(rand.Reader, &tmpl, fx.parent, csr.PublicKey, fx.key)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportIssue(b, cpu)
}

// benchSign has issueParallelism goroutines per CPU parse and Sign the
// agent CSRs of csrs in turn with c, b.N in all, and reports the rate.
func benchSign(b *testing.B, c *ca.CA, csrs [][]byte) {
	ctx := b.Context()
	var next atomic.Uint64
	b.SetParallelism(issueParallelism)
	b.ResetTimer()
	cpu := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			csr, err := ca.ParseCSR(csrs[next.Add(1)%uint64(len(csrs))])
			if err == nil {
				_, err = c.Sign(ctx, ca.Request{Profile: ca.ProfileAgent}, ca.FromCSR(csr))
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportIssue(b, cpu)
}

// reportIssue reports throughput, and the CPU time the process spent per
// certificate since cpuStart: unlike certs/s, that holds up on a machine
// that other work is also using.
func reportIssue(b *testing.B, cpuStart time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	b.ReportMetric(float64((cpuTime(b)-cpuStart).Microseconds())/float64(b.N), "cpu-us/cert")
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// setupSQLiteCA creates a root and an intermediate under dir, recorded in
// the real SQLite store, and returns the CA's configuration.
func setupSQLiteCA(tb testing.TB, dir string) ca.Config {
	tb.Helper()
	cfg, st, _ := catest.New(tb, dir, time.Now())
	if err := st.Close(); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// issueOnce signs csr as an agent certificate with the CA of cfg.
func issueOnce(tb testing.TB, cfg ca.Config, csr *x509.CertificateRequest) *x509.Certificate {
	tb.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, cfg.StorePath())
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	c, err := ca.Open(ctx, cfg, st)
	if err != nil {
		tb.Fatal(err)
	}
	is, err := c.Sign(ctx, ca.Request{Profile: ca.ProfileAgent}, ca.FromCSR(csr))
	if err != nil {
		tb.Fatal(err)
	}
	return is.Cert
}

// intermediateOf reads the active intermediate's certificate and key.
func intermediateOf(tb testing.TB, cfg ca.Config) (*x509.Certificate, crypto.Signer) {
	tb.Helper()
	dir := filepath.Join(cfg.Dir, "intermediate")
	cert, err := pemfile.ReadCert(filepath.Join(dir, "int.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	key, err := pemfile.ReadKey(filepath.Join(dir, "int.key"))
	if err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

// agentCSR returns a PEM CSR, under a new P-256 key, for agent on node.
func agentCSR(tb testing.TB, agent, node string) []byte {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: agent + "@" + node},
	}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
