// Command agent is an example mesh agent written with package agent: it
// takes its credentials from the provider MCP_MESH_TLS_PROVIDER names
// (file by default), registers with meshd and keeps heartbeating, and
// serves GET /greet over mTLS to the mesh's agents that meshd has not
// revoked. Its GET /greet-peer calls the /greet of the agent meshd
// resolved for its "greeting" dependency, over mTLS with
// agent.ClientTLS. It stops on SIGINT or SIGTERM (deregistering), or
// when meshd evicts it. README.md beside it runs it against `make run`'s meshd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/meshtrust/meshtrust/agent"
	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/file"
	"github.com/meshtrust/meshtrust/credentials/provider"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust/watch"
)

func main() {
	agentID := flag.String("agent-id", "hello", "the agent id to register")
	listen := flag.String("listen", "127.0.0.1:9443", "where to serve GET /greet; registered as the agent's endpoint")
	registry := flag.String("registry-url", os.Getenv("MCP_MESH_REGISTRY_URL"), "meshd's agent port, https://host:port (env MCP_MESH_REGISTRY_URL)")
	serveCert := flag.String("serve-cert", "", "certificate to serve with, if not the agent's (the mesh CA's agent certificates are for clients only: give the node's)")
	serveKey := flag.String("serve-key", "", "the key of --serve-cert")
	peerName := flag.String("peer-name", "", "the common name GET /greet-peer requires of the peer's server certificate, e.g. dev2.mesh (default: any mesh peer meshd has not revoked)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*agentID, *listen, *registry, *serveCert, *serveKey, *peerName, log); err != nil {
		log.Error("agent stopped", "err", err)
		os.Exit(1)
	}
}

func run(agentID, listen, registry, serveCert, serveKey, peerName string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The agent's own credentials: presented to meshd and on calls to
	// other agents, rotated in place.
	src, err := provider.FromEnv(ctx, agentID, provider.WithLogger(log))
	if err != nil {
		return err
	}
	defer src.Close()
	serving := credentials.Source(src)
	if serveCert != "" {
		fs, err := file.New(ctx, serveCert, serveKey, os.Getenv(credentials.EnvCA), file.WithLogger(log))
		if err != nil {
			return fmt.Errorf("--serve-cert: %w", err)
		}
		defer fs.Close()
		serving = fs
	}

	// meshd's revocations, followed live, so a revoked caller is refused
	// at its next handshake.
	w, err := agent.NewWatcher(src, watch.Config{Server: registry, Logger: log})
	if err != nil {
		return err
	}
	go w.Run(ctx)

	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	a, err := agent.New(agent.Config{
		RegistryURL: registry, AgentID: agentID, Source: src, Logger: log,
		Registration: meshapi.Registration{
			HTTPHost: host, HTTPPort: port, Description: "meshtrust's example agent",
			Tools: []meshapi.Tool{
				{FunctionName: "greet", Capability: "greeting", Version: "1.0.0"},
				{FunctionName: "greet_peer", Capability: "greeting-relay", Version: "1.0.0", Dependencies: []meshapi.Dependency{{Capability: "greeting"}}},
			},
		},
	})
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /greet", func(w http.ResponseWriter, r *http.Request) {
		// ServerTLS verified the caller: the mesh's trust, meshd's
		// revocations. Its certificate says who it is.
		fmt.Fprintf(w, "hello, %s: this is %s\n", r.TLS.PeerCertificates[0].Subject.CommonName, agentID)
	})
	// Calls to other agents present the agent's own certificate and
	// accept a server of the mesh that meshd has not revoked and, with
	// --peer-name, only the one of that name.
	authorizePeer := credentials.AuthorizeAny()
	if peerName != "" {
		authorizePeer = credentials.AuthorizeIdentity(peerName)
	}
	peers := &http.Client{
		Transport: &http.Transport{TLSClientConfig: agent.ClientTLS(src, w, authorizePeer)},
		Timeout:   10 * time.Second,
	}
	mux.HandleFunc("GET /greet-peer", func(w http.ResponseWriter, r *http.Request) {
		greetPeer(w, r, a, peers)
	})
	srv := &http.Server{
		Addr: listen, Handler: mux, TLSConfig: agent.ServerTLS(serving, w),
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, // a revoked peer's connection ends soon
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	go func() {
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			log.Error("server", "err", err)
			stop()
		}
	}()
	log.Info("serving", "addr", listen)

	err = a.Run(ctx) // until SIGINT/SIGTERM (then it deregisters) or eviction
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if errors.Is(err, agent.ErrEvicted) {
		return fmt.Errorf("meshd evicted the agent; it needs new credentials: %w", err)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// greetPeer calls GET /greet on the agent meshd last resolved for the
// greet_peer tool's "greeting" dependency and relays its answer.
func greetPeer(w http.ResponseWriter, r *http.Request, a *agent.Agent, peers *http.Client) {
	var endpoint string
	for _, res := range a.Dependencies()["greet_peer"] {
		if res.Status == "available" {
			endpoint = res.Endpoint
			break
		}
	}
	if endpoint == "" {
		http.Error(w, "no agent provides greeting yet", http.StatusServiceUnavailable)
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, endpoint+"/greet", nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	resp, err := peers.Do(req)
	if err != nil {
		http.Error(w, fmt.Sprintf("calling %s: %v", endpoint, err), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, 64<<10))
}
