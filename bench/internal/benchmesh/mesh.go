// Package benchmesh is what the benchmark programs under bench/cmd share:
// an in-process meshd over a fresh mesh CA, the latency summaries they
// report, and the way a program runs under run.sh's deadline.
package benchmesh

import (
	"bytes"
	"context"
	"crypto/tls"
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
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/database"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Config configures Start. The zero value runs meshd with its defaults.
type Config struct {
	// RevocationPoll is how often meshd checks the store for revocations
	// made by other processes; zero is meshd's default (100ms).
	RevocationPoll time.Duration
	// MaxWatchStreams caps the revocation streams, in all and per source;
	// zero is meshd's defaults.
	MaxWatchStreams int
	// Database is meshd's --database: "" for the CA directory's SQLite
	// file, or a postgres:// URL, on which AddReplica starts more meshd
	// replicas.
	Database string
	// AgentCertBurst and MaxAgentsPerNode are meshd's; zero is its
	// defaults.
	AgentCertBurst, MaxAgentsPerNode int
	// TaintWindow is the CA's: how long the renewals a taint asks for are
	// spread over; zero is the CA's default.
	TaintWindow time.Duration
}

// Mesh is meshd running in this process over a mesh CA of its own: the CA
// and meshd share one SQLite store, meshd trusts the CA (the localca
// backend), serves TLS strict on an agent port at 127.0.0.1 and the admin
// API on a unix socket.
type Mesh struct {
	// CA is the mesh CA meshd trusts; it issues the benchmark's agents.
	CA *ca.CA
	// Store is the store of the CA and of meshd's registry.
	Store store.Store
	// Server is meshd.
	Server *meshd.Meshd
	// Replicas are the meshd processes AddReplica started beside Server,
	// each on its own store handle of the same database.
	Replicas []*Replica
	// Roots holds the mesh root, for clients of the agent port.
	Roots *x509.CertPool
	// Admin is a client of the admin socket: any http://meshd/... URL
	// reaches it.
	Admin *http.Client

	cfg    Config
	dir    string
	cert   string // the agent port's certificate's common name
	cancel context.CancelFunc
}

// Replica is one more meshd on the mesh's database.
type Replica struct {
	Server *meshd.Meshd
	Store  store.Store
	cancel context.CancelFunc
}

// Start creates a mesh CA with its first intermediate, its store and
// meshd's admin socket in dir, a fresh directory the caller removes, and
// starts meshd over them. Close stops it.
func Start(ctx context.Context, dir string, c Config) (_ *Mesh, err error) {
	m := &Mesh{cfg: c, dir: dir, cancel: func() {}}
	if m.CA, m.Store, m.cert, err = NewCA(ctx, dir, c.Database, c.TaintWindow); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	m.Roots = x509.NewCertPool()
	m.Roots.AddCert(m.CA.Root())
	sock := filepath.Join(dir, "admin.sock")
	if m.Server, m.cancel, err = m.startServer(ctx, sock, m.Store, m.CA); err != nil {
		return nil, err
	}
	m.Admin = AdminClient(sock)
	return m, nil
}

// NewCA creates a mesh CA in dir (root in dir/root, the CA directory in
// dir/ca) with its first intermediate, on database ("" the CA
// directory's SQLite file, or a postgres:// URL), and issues meshd's
// serving certificate (localhost, 127.0.0.1; key in the CA's issued
// directory). It returns the CA open on its store, which the caller
// closes, and the serving certificate's common name.
func NewCA(ctx context.Context, dir, database string, taintWindow time.Duration) (_ *ca.CA, _ store.Store, serverCN string, err error) {
	cfg := ca.Config{RootDir: filepath.Join(dir, "root"), Dir: filepath.Join(dir, "ca"), TaintWindow: taintWindow}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, nil, "", err
	}
	st, err := openStore(ctx, cfg.Dir, database)
	if err != nil {
		return nil, nil, "", err
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if _, err := ca.Init(ctx, cfg, st); err != nil {
		return nil, nil, "", err
	}
	if _, err := ca.IssueIntermediate(ctx, cfg, st); err != nil {
		return nil, nil, "", err
	}
	authority, err := ca.Open(ctx, cfg, st)
	if err != nil {
		return nil, nil, "", err
	}
	node, err := authority.Sign(ctx, ca.NodeRequest("meshd", "localhost", "IP:127.0.0.1"), ca.WithGeneratedKey())
	if err != nil {
		return nil, nil, "", err
	}
	return authority, st, node.Cert.Subject.CommonName, nil
}

func openStore(ctx context.Context, caDir, url string) (store.Store, error) {
	return database.Open(ctx, caDir, url, database.Options{Follow: true})
}

// AdminClient talks to the admin API of the meshd whose unix socket is
// sock; its URLs' host is ignored.
func AdminClient(sock string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// startServer starts a meshd over st and authority with the admin API on
// sock.
func (m *Mesh) startServer(ctx context.Context, sock string, st store.Store, authority *ca.CA) (*meshd.Meshd, context.CancelFunc, error) {
	c := m.cfg
	srv, err := meshd.New(ctx, meshd.Config{Config: server.Config{
		Listen: "127.0.0.1:0", AdminSocket: sock, TLSMode: server.TLSStrict,
		CertFile: m.CA.Config().IssuedCertPath(m.cert), KeyFile: m.CA.Config().IssuedKeyPath(m.cert),
		MaxWatchStreams: c.MaxWatchStreams, MaxWatchStreamsPerSource: c.MaxWatchStreams,
		// strict: no caller without a certificate reaches the stream, so
		// its share is the least there is and every other slot is the
		// subscribers'.
		MaxCertlessWatchStreams: 1,
		AgentCertBurst:          c.AgentCertBurst, AgentCertInterval: time.Millisecond, MaxAgentsPerNode: c.MaxAgentsPerNode,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, Backends: []string{meshd.BackendLocalCA}, RevocationPoll: c.RevocationPoll}, st, authority)
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	if err := srv.Start(sctx); err != nil {
		cancel()
		return nil, nil, err
	}
	return srv, cancel, nil
}

// AddReplica starts one more meshd on the mesh's PostgreSQL database, with
// a store handle of its own and the CA opened on the same CA directory
// (the signing key shared by configuration, as replicas share it).
func (m *Mesh) AddReplica(ctx context.Context) (*Replica, error) {
	if !database.IsPostgres(m.cfg.Database) {
		return nil, errors.New("benchmesh: replicas need a postgres:// Database")
	}
	st, err := openStore(ctx, m.CA.Config().Dir, m.cfg.Database)
	if err != nil {
		return nil, err
	}
	authority, err := ca.Open(ctx, m.CA.Config(), st)
	if err != nil {
		st.Close()
		return nil, err
	}
	r := &Replica{Store: st}
	sock := filepath.Join(m.dir, fmt.Sprintf("admin-%d.sock", len(m.Replicas)+1))
	if r.Server, r.cancel, err = m.startServer(ctx, sock, st, authority); err != nil {
		st.Close()
		return nil, err
	}
	m.Replicas = append(m.Replicas, r)
	return r, nil
}

// Addr is the agent port's address.
func (m *Mesh) Addr() string { return m.Server.AgentAddr() }

// ClientCert issues the agent certificate <agent>@bench (key generated by
// the CA) for a client of meshd, such as a revocation stream subscriber.
func (m *Mesh) ClientCert(ctx context.Context, agent string) (tls.Certificate, error) {
	is, err := m.CA.Sign(ctx, ca.AgentRequest(agent, "bench"), ca.WithGeneratedKey())
	if err != nil {
		return tls.Certificate{}, err
	}
	cn := is.Cert.Subject.CommonName
	return tls.LoadX509KeyPair(m.CA.Config().IssuedCertPath(cn), m.CA.Config().IssuedKeyPath(cn))
}

// Revoke revokes the certificate with serial through the admin API, as
// `meshctl ca revoke` does against a running meshd, and returns once meshd
// has answered.
func (m *Mesh) Revoke(ctx context.Context, serial string) error {
	return Revoke(ctx, m.Admin, serial)
}

// Revoke revokes the certificate with serial through the admin API that
// admin reaches, as `meshctl ca revoke` does against a running meshd, and
// returns once meshd has answered: the revocation is durable then.
func Revoke(ctx context.Context, admin *http.Client, serial string) error {
	body, err := json.Marshal(meshapi.RevokeRequest{Target: serial, Reason: "keyCompromise"})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://meshd/admin/revoke", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := admin.Do(req)
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

// Agents lists the agents meshd holds, through its admin API's GET
// /admin/agents.
func (m *Mesh) Agents(ctx context.Context) ([]registry.View, error) {
	return Agents(ctx, m.Admin)
}

// Agents lists the agents held by the meshd whose admin API admin
// reaches.
func Agents(ctx context.Context, admin *http.Client) ([]registry.View, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://meshd/admin/agents", nil)
	if err != nil {
		return nil, err
	}
	resp, err := admin.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list struct {
		Agents []registry.View `json:"agents"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin agents: %s: %v", resp.Status, err)
	}
	return list.Agents, nil
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
	for _, r := range m.Replicas {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, r.Server.Shutdown(sctx))
		cancel()
		r.cancel()
		errs = append(errs, r.Store.Close())
	}
	errs = append(errs, m.Store.Close())
	return errors.Join(errs...)
}
