// Package benchmesh is what the benchmark programs under bench/cmd share:
// an in-process meshd over a fresh mesh CA, the latency summaries they
// report, and the way a program runs under run.sh's deadline.
package benchmesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlite"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Config configures Start. The zero value runs meshd with its defaults.
type Config struct {
	// RevocationPoll is how often meshd checks the store for revocations
	// made by other processes; zero is meshd's default (100ms).
	RevocationPoll time.Duration
}

// Mesh is meshd running in this process over a mesh CA of its own: the CA
// and meshd share one SQLite store, meshd trusts the CA (the localca
// backend), serves TLS strict on an agent port at 127.0.0.1 and the admin
// API on a unix socket.
type Mesh struct {
	// CA is the mesh CA meshd trusts; it issues the benchmark's agents.
	CA *ca.CA
	// Store is the store of the CA and of meshd's registry.
	Store *sqlite.Store
	// Server is meshd.
	Server *server.Server
	// Roots holds the mesh root, for clients of the agent port.
	Roots *x509.CertPool
	// Admin is a client of the admin socket: any http://meshd/... URL
	// reaches it.
	Admin *http.Client

	cancel context.CancelFunc
}

// Start creates a mesh CA with its first intermediate, its store and
// meshd's admin socket in dir, a fresh directory the caller removes, and
// starts meshd over them. Close stops it.
func Start(ctx context.Context, dir string, c Config) (_ *Mesh, err error) {
	cfg := ca.Config{RootDir: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "ca")}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	m := &Mesh{cancel: func() {}}
	if m.Store, err = sqlite.Open(ctx, cfg.StorePath()); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if _, err := ca.Init(ctx, cfg, m.Store); err != nil {
		return nil, err
	}
	if _, err := ca.IssueIntermediate(ctx, cfg, m.Store); err != nil {
		return nil, err
	}
	if m.CA, err = ca.Open(ctx, cfg, m.Store); err != nil {
		return nil, err
	}
	node, err := m.CA.IssueNode(ctx, "meshd", "localhost", "IP:127.0.0.1")
	if err != nil {
		return nil, err
	}
	cn := node.Cert.Subject.CommonName
	m.Roots = x509.NewCertPool()
	m.Roots.AddCert(m.CA.Root())
	sock := filepath.Join(dir, "admin.sock")
	srv, err := server.New(ctx, server.Config{
		Listen: "127.0.0.1:0", AdminSocket: sock, TLSMode: server.TLSStrict,
		CertFile: m.CA.Config().IssuedCertPath(cn), KeyFile: m.CA.Config().IssuedKeyPath(cn),
		Backends: []string{server.BackendLocalCA}, RevocationPoll: c.RevocationPoll,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, m.Store, m.CA)
	if err != nil {
		return nil, err
	}
	m.Server = srv
	var sctx context.Context
	sctx, m.cancel = context.WithCancel(ctx)
	if err := m.Server.Start(sctx); err != nil {
		return nil, err
	}
	m.Admin = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return m, nil
}

// Addr is the agent port's address.
func (m *Mesh) Addr() string { return m.Server.AgentAddr() }

// Revoke revokes the certificate with serial through the admin API, as
// `meshctl ca revoke` does against a running meshd, and returns once meshd
// has answered.
func (m *Mesh) Revoke(ctx context.Context, serial string) error {
	body, err := json.Marshal(meshapi.RevokeRequest{Target: serial, Reason: "keyCompromise"})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://meshd/admin/revoke", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := m.Admin.Do(req)
	if err != nil {
		return err
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin revoke: %s: %s", resp.Status, rb)
	}
	return nil
}

// Close stops meshd, waiting up to 10 s for it, and closes the store.
func (m *Mesh) Close() error {
	var errs []error
	if m.Server != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		errs = append(errs, m.Server.Shutdown(sctx))
	}
	m.cancel()
	errs = append(errs, m.Store.Close())
	return errors.Join(errs...)
}
