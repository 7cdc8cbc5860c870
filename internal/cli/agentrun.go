package cli

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshtrust/meshtrust/agent"
	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/provider"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
)

// envRegistryURL is the seed's variable naming the registry, which the
// sidecar reads and hands on to the command it runs.
const envRegistryURL = "MCP_MESH_REGISTRY_URL"

// childSecrets are variables the sidecar uses and the command never sees:
// the command gets files, not the means of fetching them.
var childSecrets = []string{"VAULT_TOKEN"}

// agentRun is `meshctl agent run`'s configuration.
type agentRun struct {
	agentID, providerName, registryURL string
	nodeDir, server, spiffeID          string
	registration                       string // a file with the heartbeat payload
	httpHost                           string
	httpPort                           int
	interval, registerWait             time.Duration
}

func agentRunCmd(g *globals) *cobra.Command {
	var o agentRun
	cmd := &cobra.Command{
		Use:   "run --agent-id <id> [flags] -- <command> [args...]",
		Short: "Run a command as a mesh agent: its credentials as files, its heartbeat, its signals",
		Long: `Run a command, in any language, as the mesh agent --agent-id.

meshctl takes the agent's credentials from the provider (--provider, else
MCP_MESH_TLS_PROVIDER: file, vault, spire or enroll), writes them to a private
directory on tmpfs (0700, files 0600) and keeps them current. It registers the
agent with meshd (POST /heartbeat, then HEAD /heartbeat/<id>) for the
command, and re-registers when the credentials change or meshd asks.

With the spire provider, when the SPIRE agent sends several SVIDs (one per
matching registration entry), meshctl uses the one of --spiffe-id (else
MCP_MESH_SPIFFE_ID), else the one whose SPIFFE ID's path is /agent/<agent-id>,
else the one whose entry hint is the agent id, else the one it used before;
it logs which, and warns when no rule decided.

Once meshd has accepted the registration (or --register-wait has passed), it
starts the command with paths, never PEM, in its environment:
MCP_MESH_TLS_CERT, MCP_MESH_TLS_KEY, MCP_MESH_TLS_CA, MCP_MESH_REGISTRY_URL,
and MCP_MESH_TLS_PROVIDER=file; VAULT_TOKEN, and any variable holding PEM, is
not passed on. SIGINT, SIGTERM and SIGHUP are forwarded to the command, and
SIGHUP is also sent after every rewrite of the files, for it to reload them.

When the command exits, meshctl deregisters the agent (DELETE
/agents/<id>), removes the files, and exits with the command's status (128+n
for a command killed by signal n). When meshd evicts the agent (its
certificate was revoked), the command gets SIGTERM and meshctl exits non-zero.

With --json, meshctl's log lines (on stderr) are JSON, and once the command
has exited a summary follows its output on stdout.`,
		Example: `  meshctl agent run --agent-id opus --provider enroll --dir /etc/meshtrust \
      --registry-url https://meshd.mesh:8000 --http-host 10.0.0.7 --http-port 9443 -- python agent.py
  MCP_MESH_TLS_CERT=opus.crt MCP_MESH_TLS_KEY=opus.key MCP_MESH_TLS_CA=root.crt \
      meshctl agent run --agent-id opus --registry-url https://127.0.0.1:8000 --registration opus.json -- ./agent`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("give the command to run after --, e.g. `meshctl agent run --agent-id opus -- python agent.py`")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, args, g.jsonOut, g.progress(cmd)) },
	}
	f := cmd.Flags()
	// Flags end at the command: `meshctl agent run --agent-id x sh -c ...`
	// hands -c to sh, with or without --.
	f.SetInterspersed(false)
	f.StringVar(&o.agentID, "agent-id", "", "the agent id to register (required)")
	f.StringVar(&o.providerName, "provider", "", "credential provider: "+strings.Join(provider.Names(), ", ")+" (default: MCP_MESH_TLS_PROVIDER, else file)")
	f.StringVar(&o.registryURL, "registry-url", os.Getenv(envRegistryURL), "meshd's agent port, https://host:port (env "+envRegistryURL+")")
	f.StringVar(&o.nodeDir, "dir", "", "enroll provider: the node's credential directory (default: MESHTRUST_NODE_DIR, else "+provider.DefaultNodeDir+")")
	f.StringVar(&o.server, "server", "", "enroll provider: meshd to renew through (default: MESHTRUST_SERVER, else the one recorded at enrollment)")
	f.StringVar(&o.spiffeID, "spiffe-id", "", "spire provider: the SPIFFE ID whose SVID the agent uses when the SPIRE agent sends several (default: "+provider.EnvSPIFFEID+", else the one whose path is /agent/<agent-id>, else the one whose entry hint is <agent-id>)")
	f.StringVar(&o.registration, "registration", "", "file holding the agent's heartbeat payload (MCP Mesh's POST /heartbeat JSON)")
	f.StringVar(&o.httpHost, "http-host", "", "where other agents reach this one (without --registration)")
	f.IntVar(&o.httpPort, "http-port", 0, "the port other agents reach this one on (without --registration)")
	f.DurationVar(&o.interval, "heartbeat-interval", 5*time.Second, "time between heartbeats")
	f.DurationVar(&o.registerWait, "register-wait", 10*time.Second, "how long to wait for the first registration before starting the command anyway")
	cmd.MarkFlagRequired("agent-id")
	addJSON(cmd, g)
	return cmd
}

// agentRunResult is `agent run --json`'s summary, printed once the
// command has exited.
type agentRunResult struct {
	AgentID string `json:"agent_id"`
	// ExitStatus is the command's (128+n when signal n killed it).
	ExitStatus int `json:"exit_status"`
	// Registered reports that meshd accepted the agent's registration;
	// Deregistered, that it was deleted when the command exited.
	Registered   bool `json:"registered"`
	Deregistered bool `json:"deregistered"`
	// Subject and SPIFFEID name the certificate the agent presented last:
	// its common name, and its SPIFFE ID (for the spire provider, the SVID
	// it chose among those the SPIRE agent sent).
	Subject  string `json:"subject,omitempty"`
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Error is why the heartbeat stopped on its own (an eviction).
	Error string `json:"error,omitempty"`
}

// presented returns the log attributes that name the certificate leaf:
// what meshd will see of the agent.
func presented(leaf *x509.Certificate) []any {
	return []any{"subject", leaf.Subject.CommonName, "spiffe_id", spiffeIDOf(leaf), "serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter}
}

// spiffeIDOf returns leaf's SPIFFE ID, or "" when it has none (for the
// display only: meshd decides what it may speak for).
func spiffeIDOf(leaf *x509.Certificate) string {
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return ""
	}
	return id.String()
}

func (o *agentRun) run(cmd *cobra.Command, args []string, jsonOut bool, p *progress) error {
	if err := identity.ValidateID(o.agentID); err != nil {
		return fmt.Errorf("--agent-id: %w", err)
	}
	if o.registryURL == "" {
		return fmt.Errorf("no registry: pass --registry-url https://host:port or set %s", envRegistryURL)
	}
	// Checked before any credential is fetched.
	if u, err := url.Parse(o.registryURL); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("--registry-url %q: want https://host:port (meshd's agent port; the agent always uses mTLS)", o.registryURL)
	}
	cfg := agent.Config{
		RegistryURL: o.registryURL, AgentID: o.agentID, HeadInterval: o.interval,
		Registration: meshapi.Registration{HTTPHost: o.httpHost, HTTPPort: o.httpPort},
	}
	if o.registration != "" {
		if o.httpHost != "" || o.httpPort != 0 {
			return errors.New("--registration gives the whole payload: put http_host and http_port in it rather than --http-host and --http-port")
		}
		data, err := os.ReadFile(o.registration)
		if err != nil {
			return fmt.Errorf("--registration: %w", err)
		}
		cfg.Payload = json.RawMessage(data)
	}
	// The command and meshctl's log share stderr; the log's lines go
	// above the progress line while meshctl waits.
	stdout, stderr := shared(cmd.OutOrStdout()), shared(cmd.ErrOrStderr())
	var handler slog.Handler = slog.NewTextHandler(p.Above(stderr), nil)
	if jsonOut {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	// package agent names the agent in its own lines.
	cfg.Logger = slog.New(handler)
	log := cfg.Logger.With("agent", o.agentID)

	// The credentials outlive a signal to meshctl: the command gets it,
	// and they are needed until it has exited and the agent is
	// deregistered. Only their first fetch is cut short by one.
	life, end := context.WithCancel(context.WithoutCancel(cmd.Context()))
	defer end()
	stopSetup := context.AfterFunc(cmd.Context(), end)
	waited := p.Wait("agent %s: waiting for its first credential from the %s provider", o.agentID, cmp.Or(o.providerName, "configured"))
	defer func() { waited() }() // whichever wait is current
	src, err := provider.FromEnv(life, o.agentID, provider.WithProvider(o.providerName),
		provider.WithNodeDir(o.nodeDir), provider.WithServer(o.server), provider.WithSPIFFEID(o.spiffeID), provider.WithLogger(log))
	waited()
	if !stopSetup() {
		err = errors.Join(err, cmd.Context().Err())
	}
	if err != nil {
		return fmt.Errorf("credentials of agent %s: %w", o.agentID, err)
	}
	defer src.Close()
	if c, err := src.Current(); err == nil {
		log.Info("credentials ready", presented(c.Certificate.Leaf)...)
	}
	cfg.Source = src
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	files, err := credentials.Materialize(life, src, o.agentID, credentials.MaterializeLogger(log))
	if err != nil {
		return err
	}
	defer files.Close()

	hbCtx, stopHeartbeat := context.WithCancel(life)
	defer stopHeartbeat()
	hbDone := make(chan error, 1)
	go func() { hbDone <- a.Run(hbCtx) }()
	waited = p.Wait("agent %s: waiting for %s to accept its registration", o.agentID, o.registryURL)
	select {
	case <-a.Ready():
	case err := <-hbDone:
		return fmt.Errorf("registering agent %s with %s: %w", o.agentID, o.registryURL, err)
	case <-time.After(o.registerWait):
		log.Warn("not registered yet; starting the command anyway, and registering in the background", "waited", o.registerWait)
	case <-cmd.Context().Done():
		stopHeartbeat()
		return errors.Join(cmd.Context().Err(), ignoreCanceled(<-hbDone))
	}

	waited()
	// Registered before the command starts, so that no signal meant for
	// it falls to the default action and kills meshctl instead.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	child := exec.Command(args[0], args[1:]...)
	child.Env = childEnv(os.Environ(), files, o.registryURL, log)
	child.Stdin, child.Stdout, child.Stderr = cmd.InOrStdin(), stdout, stderr
	if err := child.Start(); err != nil {
		stopHeartbeat()
		return errors.Join(fmt.Errorf("start %s: %w", args[0], err), ignoreCanceled(<-hbDone))
	}
	log.Info("started the command", "command", args[0], "pid", child.Process.Pid, "files", files.Dir)
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()

	var (
		hbErr     error
		waitErr   error
		stopped   = cmd.Context().Done()
		forwarded bool // a SIGINT or SIGTERM went to the command
	)
	forward := func(s os.Signal) {
		if s != syscall.SIGHUP {
			forwarded = true
		}
		if err := child.Process.Signal(s); err != nil && !errors.Is(err, os.ErrProcessDone) {
			log.Warn("cannot signal the command", "signal", s, "err", err)
		}
	}
	for done := false; !done; {
		select {
		case s := <-sigs:
			forward(s)
		case <-files.Rewritten():
			log.Info("credential files rewritten; sending SIGHUP")
			forward(syscall.SIGHUP)
		case err := <-hbDone:
			hbDone = nil
			hbErr = err
			log.Error("the heartbeat stopped; stopping the command", "err", err)
			forward(syscall.SIGTERM)
		case <-stopped:
			stopped = nil
			// meshctl's own context ends on the SIGINT or SIGTERM it
			// was sent, which sigs receives too, maybe a moment later:
			// give it that moment, so the command gets that signal,
			// once, rather than a second one of ours.
			if !forwarded {
				select {
				case s := <-sigs:
					forward(s)
				case <-time.After(100 * time.Millisecond):
					forward(syscall.SIGTERM)
				}
			}
		case waitErr = <-exited:
			done = true
		}
	}
	stopHeartbeat()
	if hbDone != nil {
		hbErr = <-hbDone // deregistered (DELETE) by now
	}
	if err := files.Close(); err != nil {
		log.Warn("removing the credential files", "err", err)
	}
	res := agentRunResult{AgentID: o.agentID, ExitStatus: exitCode(waitErr)}
	if c, err := src.Current(); err == nil {
		res.Subject, res.SPIFFEID = c.Certificate.Leaf.Subject.CommonName, spiffeIDOf(c.Certificate.Leaf)
	}
	log.Info("the command exited", "status", res.ExitStatus)
	select {
	case <-a.Ready():
		res.Registered = true
		res.Deregistered = errors.Is(hbErr, context.Canceled) && ignoreCanceled(hbErr) == nil
	default:
	}
	code := res.ExitStatus
	if hbErr = ignoreCanceled(hbErr); hbErr != nil {
		res.Error = hbErr.Error()
		code = max(code, 1)
	}
	if jsonOut {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	}
	if hbErr != nil {
		fmt.Fprintln(stderr, "meshctl:", hbErr)
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// childEnv is environ for the command: the seed's variables naming the
// files and the registry, the file provider to read them, and none of the
// sidecar's secrets or any PEM.
func childEnv(environ []string, files *credentials.Files, registryURL string, log *slog.Logger) []string {
	set := append(files.Env(), envRegistryURL+"="+registryURL, provider.EnvProvider+"="+provider.File)
	drop := append([]string{}, childSecrets...)
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		drop = append(drop, k)
	}
	out := make([]string, 0, len(environ)+len(set))
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case slices.Contains(drop, k):
		case strings.Contains(v, "-----BEGIN"):
			log.Warn("not passing a variable that holds PEM to the command; it gets files", "variable", k)
		default:
			out = append(out, kv)
		}
	}
	return append(out, set...)
}

// shared returns w for writers on several goroutines: a file as it is (the
// command inherits it, and each write is one system call), anything else
// behind a lock.
func shared(w io.Writer) io.Writer {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return &lockedWriter{w: w}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// Write writes p whole before another Write starts.
func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// exitCode is the shell's status of a command that ended with err: its
// exit code, or 128+n when signal n killed it.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 1
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}

// ignoreCanceled drops the context error of a heartbeat stopped on
// purpose, keeping what else it reports (a failed DELETE is joined to it).
func ignoreCanceled(err error) error {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var rest []error
		for _, e := range joined.Unwrap() {
			if !errors.Is(e, context.Canceled) {
				rest = append(rest, e)
			}
		}
		return errors.Join(rest...)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
