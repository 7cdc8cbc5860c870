// Command meshdprof runs meshd in-process, set up as cmd/meshd sets it up
// over an existing mesh CA (one SQLite store for the CA and the registry,
// the localca backend), and writes a CPU profile of it until SIGINT/SIGTERM
// or -max-time. meshd has no pprof endpoint; this is how the benchmark
// gets profile evidence for meshd's hot path under hbload.
//
// With -join-tokens N it also creates N join tokens, for nodes enroll-1
// to enroll-N, and writes for each an /enroll request to -requests-dir
// (<n>.body, and <n>.headers with the token) for hbload -requests, and
// lifts /enroll's rate limits: what it then measures is enrollment itself.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/database"
	"github.com/meshtrust/meshtrust/meshapi"
)

func main() {
	var (
		rootDir, caDir, dataDir = flag.String("root-dir", "", "root CA directory"), flag.String("ca-dir", "", "CA directory"), flag.String("data-dir", "", "data directory (admin socket)")
		listen                  = flag.String("listen", "127.0.0.1:0", "agent port (127.0.0.1 only)")
		cert, key               = flag.String("tls-cert", "", "agent port certificate"), flag.String("tls-key", "", "agent port key")
		cpuProfile              = flag.String("cpuprofile", "", "write a CPU profile here")
		maxTime                 = flag.Duration("max-time", 5*time.Minute, "stop by itself after this long")
		joinTokens              = flag.Int("join-tokens", 0, "create this many join tokens and their /enroll requests, and lift /enroll's rate limits")
		requestsDir             = flag.String("requests-dir", "", "with -join-tokens: where the /enroll requests are written")
	)
	flag.Parse()
	benchmesh.Main("meshdprof", *maxTime, func(ctx context.Context) error {
		return run(ctx, *rootDir, *caDir, *dataDir, *listen, *cert, *key, *cpuProfile, *joinTokens, *requestsDir)
	})
}

func run(ctx context.Context, rootDir, caDir, dataDir, listen, cert, key, cpuProfile string, joinTokens int, requestsDir string) error {
	if joinTokens > 0 && requestsDir == "" {
		return fmt.Errorf("-join-tokens needs -requests-dir")
	}
	if host, _, err := net.SplitHostPort(listen); err != nil || host != "127.0.0.1" {
		return fmt.Errorf("-listen %s: a benchmark server binds 127.0.0.1 only", listen)
	}
	cfg := ca.Config{RootDir: rootDir, Dir: caDir}
	st, err := database.Open(ctx, cfg.Dir, "", database.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	authority, err := ca.Open(ctx, cfg, st)
	if err != nil {
		return err
	}
	// With join tokens to spend, enrollment is what is measured: the
	// operator's enrollment limits raised out of its way.
	var enroll server.EnrollLimits
	if joinTokens > 0 {
		enroll = server.EnrollLimits{Burst: 1 << 30, Interval: time.Nanosecond, GlobalBurst: 1 << 30, GlobalInterval: time.Nanosecond}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sock := filepath.Join(dataDir, "admin.sock")
	srv, err := meshd.New(ctx, meshd.Config{
		Config: server.Config{Listen: listen, AdminSocket: sock,
			TLSMode: server.TLSStrict, CertFile: cert, KeyFile: key, Logger: log,
			// Issuance is what bench/renew.sh measures: no per-node rate.
			AgentCertBurst: 1 << 30, AgentCertInterval: time.Nanosecond,
			Enroll: enroll,
		},
		Backends: []string{meshd.BackendLocalCA},
	}, st, authority)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	if err := writeEnrollRequests(ctx, benchmesh.AdminClient(sock), joinTokens, requestsDir); err != nil {
		return errors.Join(err, srv.Shutdown(context.WithoutCancel(ctx)))
	}
	stopProfile, err := benchmesh.StartCPUProfile(cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	fmt.Printf("addr=%s\n", srv.AgentAddr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// writeEnrollRequests creates n join tokens through the admin API, as
// `meshctl token create` does, and writes an /enroll request for each into
// dir: a fresh P-256 key's CSR for node enroll-<i>. Many at once, so that
// the store's group commit records the tokens quickly.
func writeEnrollRequests(ctx context.Context, admin *http.Client, n int, dir string) error {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, 32)
	)
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if err := writeEnrollRequest(ctx, admin, int(i), dir); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// writeEnrollRequest writes /enroll request i into dir.
func writeEnrollRequest(ctx context.Context, admin *http.Client, i int, dir string) error {
	id, err := identity.NewNode(fmt.Sprintf("enroll-%d", i))
	if err != nil {
		return err
	}
	token, err := joinToken(ctx, admin, id.Node)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.CommonName()}}, key)
	if err != nil {
		return err
	}
	body, err := json.Marshal(meshapi.EnrollRequest{NodeID: id.Node, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	if err != nil {
		return err
	}
	base := filepath.Join(dir, fmt.Sprint(i))
	if err := os.WriteFile(base+".body", body, 0o600); err != nil {
		return err
	}
	return os.WriteFile(base+".headers", []byte("Authorization: Bearer "+token+"\n"), 0o600)
}

// joinToken creates a join token for node through POST /admin/tokens.
func joinToken(ctx context.Context, admin *http.Client, node string) (string, error) {
	body, err := json.Marshal(meshapi.TokenRequest{NodeID: node, TTL: "1h"})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://meshd/admin/tokens", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	resp, err := admin.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("POST /admin/tokens: %s: %s", resp.Status, msg)
	}
	var tr meshapi.TokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return "", fmt.Errorf("POST /admin/tokens: %w", err)
	}
	return tr.Token, nil
}
