// Package provider picks an agent's credential provider the way MCP Mesh
// does, by MCP_MESH_TLS_PROVIDER, and returns its credentials.Source:
//
//   - file (the default): the PEM files MCP_MESH_TLS_CERT, MCP_MESH_TLS_KEY
//     and MCP_MESH_TLS_CA name (package credentials/file);
//   - vault: a certificate from Vault's PKI engine (MCP_MESH_VAULT_*,
//     VAULT_TOKEN);
//   - spire: the X.509-SVID of the SPIRE agent at MCP_MESH_SPIRE_SOCKET
//     (package credentials/spire), the one of MCP_MESH_SPIFFE_ID when the
//     agent sends several;
//   - enroll: this mesh's CA, through a node enrolled with `meshctl enroll`:
//     the agent's certificate from the node directory (MESHTRUST_NODE_DIR,
//     default /etc/meshtrust), renewed with the node's (package
//     credentials/enroll).
//
// MCP_MESH_TLS_CA, when set, names CA certificates that verify meshd and
// peers whatever the provider: the file provider's roots, and for the
// others CAs added to their own anchors (credentials.AddRoots), so that an
// agent on SPIRE or Vault reaches a meshd serving a mesh-CA certificate.
// MCP Mesh ignores the variable for its Vault and SPIRE providers (and
// this module's vault provider verifies Vault's own certificate with it
// too); adding is meshtrust's extension, and the operator's explicit
// choice. The SPIFFE rule stays: the added CAs never vouch for a SPIFFE
// ID of a trust domain the SPIRE agent sent a bundle for. A missing file,
// one without PEM certificates, or a certificate that is not a CA is an
// error before any credential is fetched.
//
// A program that runs as an agent takes its credentials with one call and
// stays the same whichever provider the operator configures:
//
//	src, err := provider.FromEnv(ctx, "opus")
//	...
//	defer src.Close()
package provider

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/credentials/vault"
)

// The environment variables FromEnv reads to choose and configure a
// provider. The providers read their own (MCP_MESH_TLS_CERT, ...).
const (
	// EnvProvider names the provider: file, vault, spire or enroll.
	EnvProvider = "MCP_MESH_TLS_PROVIDER"
	// EnvNodeDir is the enroll provider's node directory, as for the
	// meshctl node commands.
	EnvNodeDir = "MESHTRUST_NODE_DIR"
	// EnvServer is meshd's agent port for the enroll provider's renewals,
	// when it is not the one recorded at enrollment.
	EnvServer = "MESHTRUST_SERVER"
	// EnvSPIFFEID is the SPIFFE ID whose X.509-SVID the spire provider
	// serves when the Workload API sends several: meshtrust's extension
	// (MCP Mesh takes the first).
	EnvSPIFFEID = "MCP_MESH_SPIFFE_ID"
)

// The providers' names, as MCP_MESH_TLS_PROVIDER takes them.
const (
	File   = "file"
	Vault  = "vault"
	SPIRE  = "spire"
	Enroll = "enroll"
)

// DefaultNodeDir is the enroll provider's node directory when neither
// WithNodeDir nor MESHTRUST_NODE_DIR gives one.
const DefaultNodeDir = "/etc/meshtrust"

// Names returns the providers FromEnv knows, the default first.
func Names() []string { return []string{File, Vault, SPIRE, Enroll} }

// ErrUnknown is what FromEnv's error wraps when the provider named is
// none of Names.
var ErrUnknown = errors.New("provider: unknown credential provider")

// Option configures FromEnv.
type Option func(*config)

type config struct {
	name     string
	nodeDir  string
	server   string
	spiffeID string
	log      *slog.Logger
}

// WithProvider picks the provider by name, overriding MCP_MESH_TLS_PROVIDER
// (a command-line flag, say). "" leaves the choice to the variable.
func WithProvider(name string) Option { return func(c *config) { c.name = name } }

// WithNodeDir sets the enroll provider's node directory, overriding
// MESHTRUST_NODE_DIR. "" leaves it to the variable.
func WithNodeDir(dir string) Option { return func(c *config) { c.nodeDir = dir } }

// WithServer sets meshd's agent port (https://host:port) the enroll
// provider renews through, overriding MESHTRUST_SERVER and the URL
// recorded at enrollment. "" leaves it to them.
func WithServer(url string) Option { return func(c *config) { c.server = url } }

// WithSPIFFEID picks, for the spire provider, the SPIFFE ID whose
// X.509-SVID the agent serves (spiffe://mcp-mesh.local/agent/opus),
// overriding MCP_MESH_SPIFFE_ID; FromEnv refuses it for another provider.
// "" leaves it to the variable.
func WithSPIFFEID(id string) Option { return func(c *config) { c.spiffeID = id } }

// WithLogger receives the provider's events (reloads, renewals, outages);
// the default discards them. No key or credential is ever logged.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// FromEnv returns the credentials.Source of agent agentID from the
// provider that WithProvider, else MCP_MESH_TLS_PROVIDER, names (file when
// neither does). The source follows its provider (reloads, renewals,
// rotations) until ctx ends or it is closed, whichever provider it is;
// then its Current fails with credentials.ErrClosed. A provider that
// fetches its credentials (spire, vault) returns once it has the first
// ones, or fails when ctx ends first; spire fails after 30 s without an
// SVID too (spire.ErrNoSVID, saying what the agent last answered).
//
// agentID selects the agent's certificate for the enroll provider, and
// names the certificate Vault issues. The spire provider serves the
// X.509-SVID of WithSPIFFEID, else MCP_MESH_SPIFFE_ID, when set; else,
// when the agent sends several, it prefers the one whose SPIFFE ID's path
// is /agent/<agentID>, then the one whose entry's hint is agentID (see
// package credentials/spire). The file provider serves whatever
// certificate it is given. meshd decides what a certificate may speak
// for.
func FromEnv(ctx context.Context, agentID string, opts ...Option) (credentials.Source, error) {
	cfg := config{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	name, from := cfg.name, ""
	if name == "" {
		name, from = strings.TrimSpace(os.Getenv(EnvProvider)), " (from "+EnvProvider+")"
	}
	if name == "" {
		name = File
	}
	if !slices.Contains(Names(), name) {
		return nil, fmt.Errorf("%w %q%s; want one of %s", ErrUnknown, name, from, strings.Join(Names(), ", "))
	}
	log := cfg.log.With("provider", name)
	roots, err := operatorRoots(name)
	if err != nil {
		return nil, err
	}
	src, err := fromEnv(ctx, name, agentID, cfg, log)
	if err != nil || roots == nil {
		return src, err
	}
	withRoots, err := credentials.AddRoots(src, roots)
	if err != nil {
		src.Close()
		return nil, err
	}
	log.Info("adding the operator's CAs to the anchors that verify meshd and peers", "variable", credentials.EnvCA, "cas", len(roots), "except", "SPIFFE IDs of a trust domain with a bundle")
	return withRoots, nil
}

// fromEnv returns the Source of the provider name, one of Names.
func fromEnv(ctx context.Context, name, agentID string, cfg config, log *slog.Logger) (credentials.Source, error) {
	if name != SPIRE {
		if cfg.spiffeID != "" {
			return nil, fmt.Errorf("provider %s: a SPIFFE ID (%s) chooses among the SVIDs of the spire provider only", name, cfg.spiffeID)
		}
		if id := os.Getenv(EnvSPIFFEID); id != "" {
			log.Warn("ignoring "+EnvSPIFFEID+": it chooses among the SVIDs of the spire provider only", "spiffe_id", id)
		}
	}
	switch name {
	case File:
		src, err := file.FromEnv(ctx, file.WithLogger(log))
		if err != nil {
			return nil, err
		}
		return src, nil
	case SPIRE:
		opts, err := spireChoice(agentID, cfg)
		if err != nil {
			return nil, err
		}
		waitCtx, cancel := context.WithTimeout(ctx, firstSVIDTimeout)
		src, err := spire.New(waitCtx, append(opts, spire.WithLogger(log))...)
		cancel()
		if err != nil {
			return nil, err
		}
		// spire.New's ctx bounds only the first fetch: end the source
		// with ctx, as the other providers do.
		context.AfterFunc(ctx, func() { src.Close() })
		return src, nil
	case Enroll:
		return fromNode(ctx, agentID, cfg, log)
	case Vault:
		// The agent id is the host label of its certificate's CN,
		// <agent-id>.<trust domain>, as MCP Mesh's Vault provider names it.
		src, err := vault.FromEnv(ctx, vault.Config{AgentName: agentID}, vault.WithLogger(log))
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, func() { src.Close() })
		return src, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknown, name)
}

// operatorRoots returns the CA certificates MCP_MESH_TLS_CA names, which
// a provider other than file adds to its own anchors; nil when it is
// unset. A bad bundle is an error before any credential is fetched.
func operatorRoots(name string) ([]*x509.Certificate, error) {
	path := os.Getenv(credentials.EnvCA)
	if path == "" || name == File {
		return nil, nil
	}
	roots, err := credentials.ReadCAs(path)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %s: %w; point it at the CA certificates (PEM) that issued meshd's and the peers' certificates, or unset it", name, credentials.EnvCA, err)
	}
	return roots, nil
}

// spireChoice returns the options by which the spire source chooses the
// agent's SVID among several: WithSPIFFEID's ID, else MCP_MESH_SPIFFE_ID's,
// and no other; without one, the ID whose path is /agent/<agent id> (the
// ID meshd's default spire binding, spiffe://<td>/agent/{agent}, expects
// of this agent), then the entry whose hint is the agent id.
func spireChoice(agentID string, cfg config) ([]spire.Option, error) {
	raw, from := cfg.spiffeID, "WithSPIFFEID"
	if raw == "" {
		raw, from = strings.TrimSpace(os.Getenv(EnvSPIFFEID)), EnvSPIFFEID
	}
	if raw != "" {
		// The SPIRE agent vouches for the ID (it issued the SVID);
		// the source compares its canonical string with the SVIDs'.
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return nil, fmt.Errorf("provider spire: %s %q: %w; give the SPIFFE ID of one of the agent's registration entries, such as spiffe://mcp-mesh.local/agent/%s", from, raw, err, agentID)
		}
		return []spire.Option{spire.WithSPIFFEID(id)}, nil
	}
	if agentID == "" {
		return nil, nil
	}
	// Preferences only: the source compares the path and the hint
	// exactly, and meshd alone decides which agent the SVID may speak for.
	return []spire.Option{spire.WithPreferredPath("/agent/" + agentID), spire.WithPreferredHint(agentID)}, nil
}

// firstSVIDTimeout bounds the wait for the SPIRE agent's first X.509-SVID,
// as meshd's spire backend bounds its own: a workload with no registration
// entry, or a socket it may not open, gets spire.ErrNoSVID with what the
// agent last answered instead of waiting forever.
var firstSVIDTimeout = 30 * time.Second

// fromNode is the enroll provider: agentID's certificate in the node
// directory, renewed with the node's by a Renewer that runs until the
// source is closed or ctx ends.
func fromNode(ctx context.Context, agentID string, cfg config, log *slog.Logger) (credentials.Source, error) {
	dir := firstOf(cfg.nodeDir, os.Getenv(EnvNodeDir), DefaultNodeDir)
	d := enroll.Dir(dir)
	n, err := d.Load()
	if err != nil {
		return nil, fmt.Errorf("provider enroll: %w", err)
	}
	server := firstOf(cfg.server, os.Getenv(EnvServer))
	if server == "" {
		if server, err = d.Server(); err != nil {
			return nil, fmt.Errorf("provider enroll: no meshd URL to renew through: set %s to https://host:port (%s was not written at enrollment: %w)", EnvServer, d.Path(enroll.ServerFile), err)
		}
	}
	client := &enroll.Client{Server: strings.TrimSuffix(server, "/"), Roots: n.Roots()}
	r, err := enroll.NewRenewer(client, d, enroll.RenewerConfig{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("provider enroll: %w", err)
	}
	src, err := r.AgentSource(agentID)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("provider enroll: %w", err)
	}
	s := &nodeSource{Source: src, r: r, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		r.Run(ctx) // its error is ctx's, or ErrClosed from Close
		r.Close()  // when ctx ended: the agent's source with it
	}()
	return s, nil
}

// nodeSource is an agent's view of a Renewer that it owns: closing it
// stops the renewals.
type nodeSource struct {
	credentials.Source
	r    *enroll.Renewer
	done chan struct{}
	once sync.Once
}

// Rotate renews the node's and its agents' certificates now, whether due
// or not: the answer to meshd's request for fresh credentials. The new
// ones are served (Changed fires) before it returns.
func (s *nodeSource) Rotate(ctx context.Context) error {
	_, err := s.r.RenewNow(ctx)
	return err
}

// RenewBy passes meshd's request to renew by at (its
// Meshtrust-Renew-After header) on to the node's Renewer: the node and
// its agents renew together.
func (s *nodeSource) RenewBy(at time.Time) { s.r.RenewBy(at) }

// Tainted passes a ca.tainted event on to the node's Renewer.
func (s *nodeSource) Tainted(issuerKeyID string) bool { return s.r.Tainted(issuerKeyID) }

// Close stops the renewals and waits for them to end.
func (s *nodeSource) Close() error {
	s.once.Do(func() {
		s.r.Close()
		<-s.done
	})
	return nil
}

func firstOf(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
