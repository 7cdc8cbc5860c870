package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// defaultNodeDir is where a node keeps its credentials.
const defaultNodeDir = "/etc/meshtrust"

// nodeTimeout bounds a whole enroll, agent-cert or renew command.
const nodeTimeout = 2 * time.Minute

// The node commands run on a node against meshd's agent port. They never
// need the CA directory; their only secret (the bootstrap credential) is
// sent once, to POST /enroll, and never printed.
func newNodeCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{enrollCmd(g), agentCertCmd(g), renewCmd(g), tokenCmd(g)}
}

func nodeDirFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "dir", envOr("MESHTRUST_NODE_DIR", defaultNodeDir), "the node's credential directory (env MESHTRUST_NODE_DIR)")
}

func serverFlag(cmd *cobra.Command, server *string, usage string) {
	cmd.Flags().StringVar(server, "server", os.Getenv("MESHTRUST_SERVER"), usage+" (env MESHTRUST_SERVER)")
}

func enrollCmd(g *globals) *cobra.Command {
	var (
		server, secretFile, token, nodeID, dir, caCert, caFingerprint string
		force                                                         bool
	)
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll this node: get its certificate from meshd with the bootstrap secret or a join token",
		Long: `Enroll this node with meshd.

A private key (ECDSA P-256) is generated here and never leaves this machine;
meshd signs a certificate request for <node-id>.mesh after checking the
bootstrap credential: the mesh's bootstrap secret (--secret-file) or a one-time
join token from 'meshctl token create' (--token). The credential is sent once,
to POST /enroll, and never printed.

meshd is trusted through the mesh root certificate (--ca-cert) or, on a fresh
machine, its SHA-256 fingerprint (--ca-fingerprint), which 'meshctl token
create' prints.

Written to --dir: node.key (0600), node.crt, ca.crt (intermediate + root),
server (meshd's URL, for agent-cert and renew) and an empty agents/ (0700).
Then an mTLS call to meshd's /health with the new certificate proves it works.`,
		Example: `  meshctl enroll --server https://meshd.mesh:8443 --node-id ct112 --secret-file /run/secrets/bootstrap --ca-cert root.pem
  meshctl enroll --server https://meshd.mesh:8443 --node-id ct112 --token <token> --ca-fingerprint <sha256>`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := identity.NewNode(nodeID); err != nil {
				return fmt.Errorf("--node-id: %w", err)
			}
			if (secretFile == "") == (token == "") {
				return errors.New("give the bootstrap credential: --secret-file <file with the bootstrap secret> or --token <join token>, one of them")
			}
			if (caCert == "") == (caFingerprint == "") {
				return errors.New("say how to trust meshd: --ca-cert <mesh root PEM> or --ca-fingerprint <its SHA-256>, one of them")
			}
			server = strings.TrimSuffix(server, "/")
			d := enroll.Dir(dir)
			if d.HasNode() && !force {
				return fmt.Errorf("%s already holds a node key or certificate%s; pass --force to replace them (the old certificate stays valid until revoked: `meshctl ca revoke`)", dir, describeNode(d))
			}
			credential := token
			if secretFile != "" {
				data, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("--secret-file: %w", err)
				}
				credential = strings.TrimSpace(string(data))
				if credential == "" {
					return fmt.Errorf("--secret-file %s is empty", secretFile)
				}
			}
			client := &enroll.Client{Server: server, RootFingerprint: caFingerprint}
			if caCert != "" {
				roots, err := readRoots(caCert)
				if err != nil {
					return err
				}
				client.Roots = roots
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nodeTimeout)
			defer cancel()
			key, err := enroll.GenerateKey()
			if err != nil {
				return err
			}
			b, err := client.Enroll(ctx, credential, nodeID, key)
			if err != nil {
				return fmt.Errorf("enroll %s with meshd at %s: %w", nodeID, server, err)
			}
			if err := d.WriteNode(key, b); err != nil {
				return fmt.Errorf("enrolled, but writing the credentials failed (enroll again with --force, and revoke serial %s): %w", b.Serial, err)
			}
			if err := d.WriteServer(server); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if !g.jsonOut {
				fmt.Fprintf(w, "enrolled %s: serial %s, valid until %s\n", b.Certificate.Subject.CommonName, b.Serial, b.NotAfter.UTC().Format(time.RFC3339))
				fmt.Fprintf(w, "wrote %s (0600; the private key, generated here, never sent)\n", d.Path(enroll.NodeKeyFile))
				fmt.Fprintf(w, "wrote %s (certificate and intermediate)\n", d.Path(enroll.NodeCertFile))
				fmt.Fprintf(w, "wrote %s (chain: %s)\n", d.Path(enroll.CAFile), chainNames(b.Chain))
				fmt.Fprintf(w, "wrote %s (%s)\n", d.Path(enroll.ServerFile), server)
				fmt.Fprintf(w, "created %s/ (0700) for agent certificates\n", d.Path(enroll.AgentsDir))
			}
			if err := client.Health(ctx, b.TLSCertificate(key)); err != nil {
				return fmt.Errorf("enrolled and written, but an mTLS call to meshd with the new certificate failed: %w", err)
			}
			if g.jsonOut {
				return printJSON(w, enrolled{
					certSummary: fileSummary(b.Certificate, d.Path(enroll.NodeCertFile), d.Path(enroll.NodeKeyFile)),
					CAFile:      d.Path(enroll.CAFile), AgentsDir: d.Path(enroll.AgentsDir), Server: server, Verified: true,
				})
			}
			fmt.Fprintf(w, "verified: meshd at %s accepts %s over mTLS (GET /health: 200)\n", server, b.Certificate.Subject.CommonName)
			fmt.Fprintf(w, "next: `meshctl agent-cert <agent-id> --dir %s` for each agent; enable meshtrust-renew.timer for renewal\n", dir)
			return nil
		},
	}
	serverFlag(cmd, &server, "meshd's agent port, https://host:port")
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "file holding the mesh's bootstrap secret (surrounding whitespace is ignored)")
	cmd.Flags().StringVar(&token, "token", "", "one-time join token from 'meshctl token create'")
	cmd.Flags().StringVar(&nodeID, "node-id", "", "this node's id, e.g. ct112 (its certificate is ct112.mesh)")
	nodeDirFlag(cmd, &dir)
	cmd.Flags().StringVar(&caCert, "ca-cert", "", "the mesh root certificate (PEM) meshd's certificate must chain to")
	cmd.Flags().StringVar(&caFingerprint, "ca-fingerprint", "", "SHA-256 fingerprint of the mesh root, to fetch and pin it on first contact")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing node key and certificate")
	cmd.MarkFlagRequired("server")
	cmd.MarkFlagRequired("node-id")
	addJSON(cmd, g)
	return cmd
}

// enrolled is `enroll --json`: the node certificate and where its files are.
type enrolled struct {
	certSummary
	CAFile    string `json:"ca_file"`
	AgentsDir string `json:"agents_dir"`
	Server    string `json:"server"`
	// Verified reports the mTLS call to meshd with the new certificate.
	Verified bool `json:"verified"`
}

// fileSummary is how the node commands print a certificate and its files.
func fileSummary(c *x509.Certificate, certFile, keyFile string) certSummary {
	s := summarize(c)
	s.CertFile, s.KeyFile = certFile, keyFile
	return s
}

// describeNode names the certificate already in d, for a refusal.
func describeNode(d enroll.Dir) string {
	n, err := d.Load()
	if err != nil {
		return ""
	}
	l := n.Certificate.Leaf
	return fmt.Sprintf(" (%s, valid until %s)", l.Subject.CommonName, l.NotAfter.UTC().Format(time.RFC3339))
}

func chainNames(chain []*x509.Certificate) string {
	names := make([]string, len(chain))
	for i, c := range chain {
		names[i] = fmt.Sprintf("%q", c.Subject.CommonName)
	}
	return strings.Join(names, ", ")
}

// readRoots reads a PEM file of CA certificates into a pool.
func readRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("--ca-cert %s: %q is not a CA certificate; give the mesh root", path, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

// nodeClient loads the node in dir and a client of the meshd it enrolled
// with (or server, when given), trusting the node's own chain.
func nodeClient(dir, server string) (*enroll.Node, *enroll.Client, error) {
	d := enroll.Dir(dir)
	n, err := d.Load()
	if err != nil {
		return nil, nil, err
	}
	if server == "" {
		if server, err = d.Server(); err != nil {
			return nil, nil, fmt.Errorf("no meshd URL: pass --server https://host:port (%s was not written at enrollment: %w)", d.Path(enroll.ServerFile), err)
		}
	}
	return n, &enroll.Client{Server: strings.TrimSuffix(server, "/"), Roots: n.Roots()}, nil
}

func agentCertCmd(g *globals) *cobra.Command {
	var (
		dir, server string
		force       bool
	)
	cmd := &cobra.Command{
		Use:   "agent-cert <agent-id>",
		Short: "Mint a certificate for an agent of this node, over mTLS with the node's certificate",
		Long: `Mint <agent-id>@<node-id>'s client certificate. The key is generated here;
meshd signs over mTLS with the node certificate in --dir, and only for agents of
this node. Written to <dir>/agents/<agent-id>.key (0600) and .crt. Agent
certificates are renewed together with the node's ('meshctl renew').`,
		Example: `  meshctl agent-cert opus --dir /etc/meshtrust`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			agentID := a[0]
			if err := identity.ValidateID(agentID); err != nil {
				return fmt.Errorf("agent id: %w", err)
			}
			n, client, err := nodeClient(dir, server)
			if err != nil {
				return err
			}
			d := enroll.Dir(dir)
			if d.HasAgent(agentID) && !force {
				return fmt.Errorf("%s already exists; pass --force to replace it", d.AgentCertPath(agentID))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nodeTimeout)
			defer cancel()
			key, err := enroll.GenerateKey()
			if err != nil {
				return err
			}
			b, err := client.AgentCert(ctx, n.Certificate, agentID, key)
			if err != nil {
				return fmt.Errorf("agent certificate for %s@%s from %s: %w", agentID, n.ID, client.Server, err)
			}
			if err := d.WriteAgent(agentID, key, b); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.jsonOut {
				return printJSON(w, fileSummary(b.Certificate, d.AgentCertPath(agentID), d.AgentKeyPath(agentID)))
			}
			fmt.Fprintf(w, "minted %s: serial %s, valid until %s\n", b.Certificate.Subject.CommonName, b.Serial, b.NotAfter.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "wrote %s (0600)\n", d.AgentKeyPath(agentID))
			fmt.Fprintf(w, "wrote %s\n", d.AgentCertPath(agentID))
			return nil
		},
	}
	nodeDirFlag(cmd, &dir)
	serverFlag(cmd, &server, "meshd's agent port, https://host:port (default: the one recorded at enrollment)")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing certificate of this agent")
	addJSON(cmd, g)
	return cmd
}

func renewCmd(g *globals) *cobra.Command {
	var (
		dir, server string
		force       bool
	)
	cmd := &cobra.Command{
		Use:   "renew",
		Short: "Renew the node's certificate and its agents' when past 2/3 of the lifetime",
		Long: `Renew the node certificate in --dir over mTLS with itself, keeping its key,
once 2/3 of its lifetime has passed (or at once with --force). Every agent
certificate in <dir>/agents is renewed in the same call. New certificates
replace the files atomically.

It also asks meshd (GET /health over mTLS) whether it wants the certificates
renewed early: meshd says so, with the Meshtrust-Renew-After header, while
the intermediate that issued them is tainted (after a CA compromise), and
the renewal is then due at the time it names, spread by meshd over the
fleet. A meshd that sends no header leaves the local rule alone.

When nothing is due it prints when renewal will be due and exits 0, so it can
run from a timer (deploy/systemd/meshtrust-renew.timer).`,
		Example: `  meshctl renew --dir /etc/meshtrust
  meshctl renew --dir /etc/meshtrust --force`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, client, err := nodeClient(dir, server)
			if err != nil {
				return err
			}
			p := g.progress(cmd)
			stopWait := func() {}
			var node string
			r, err := enroll.NewRenewer(client, enroll.Dir(dir), enroll.RenewerConfig{Progress: func(done, total int) {
				if done == 0 {
					stopWait = p.Wait("meshd at %s is renewing %s and %d agent certificate(s)", client.Server, node, total)
					return
				}
				stopWait()
				p.Count("wrote agent certificates", done, total)
			}})
			if err != nil {
				return err
			}
			defer p.Done()
			w := cmd.OutOrStdout()
			d := enroll.Dir(dir)
			n := r.Node()
			leaf := n.Certificate.Leaf
			node = leaf.Subject.CommonName
			out := renewal{Node: fileSummary(leaf, d.Path(enroll.NodeCertFile), d.Path(enroll.NodeKeyFile)), Agents: []agentRenewal{}}
			for _, a := range n.Agents {
				out.Agents = append(out.Agents, agentRenewal{certSummary: fileSummary(a.Certificate.Leaf, d.AgentCertPath(a.ID), d.AgentKeyPath(a.ID))})
			}
			if !force && time.Now().Before(r.Due()) {
				askEarly(cmd.Context(), cmd.ErrOrStderr(), client, n, r)
			}
			if due := r.Due(); !force && time.Now().Before(due) {
				if g.jsonOut {
					out.DueAt = due.UTC()
					return printJSON(w, out)
				}
				fmt.Fprintf(w, "not due until %s (%s valid until %s)\n", due.UTC().Format(time.RFC3339), leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
				return nil
			}
			if time.Now().After(leaf.NotAfter) {
				return fmt.Errorf("%s expired at %s and cannot renew; enroll the node again (meshctl enroll --force, with a join token)", leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nodeTimeout)
			defer cancel()
			res, err := r.RenewNow(ctx)
			stopWait()
			p.Done()
			if res == nil {
				return fmt.Errorf("renew %s at %s: %w", leaf.Subject.CommonName, client.Server, err)
			}
			out.Renewed = true
			out.Node = fileSummary(res.Node.Certificate, out.Node.CertFile, out.Node.KeyFile)
			for i, a := range n.Agents {
				if b, ok := res.Agents[a.ID]; ok {
					out.Agents[i] = agentRenewal{certSummary: fileSummary(b.Certificate, out.Agents[i].CertFile, out.Agents[i].KeyFile), Renewed: true}
				}
			}
			if g.jsonOut {
				if perr := printJSON(w, out); perr != nil {
					return perr
				}
				return err
			}
			fmt.Fprintf(w, "renewed %s: serial %s, valid until %s\n", res.Node.Certificate.Subject.CommonName, res.Node.Serial, res.Node.NotAfter.UTC().Format(time.RFC3339))
			for _, a := range n.Agents {
				if b, ok := res.Agents[a.ID]; ok {
					fmt.Fprintf(w, "renewed %s: serial %s, valid until %s\n", b.Certificate.Subject.CommonName, b.Serial, b.NotAfter.UTC().Format(time.RFC3339))
				} else {
					fmt.Fprintf(w, "meshd did not renew %s; it keeps its certificate valid until %s\n", a.Certificate.Leaf.Subject.CommonName, a.Certificate.Leaf.NotAfter.UTC().Format(time.RFC3339))
				}
			}
			return err
		},
	}
	nodeDirFlag(cmd, &dir)
	serverFlag(cmd, &server, "meshd's agent port, https://host:port (default: the one recorded at enrollment)")
	cmd.Flags().BoolVar(&force, "force", false, "renew now, even when not due")
	addJSON(cmd, g)
	return cmd
}

// askEarly asks meshd whether it wants the node's certificate, or an agent
// certificate of another intermediate, renewed before the local rule says
// (Meshtrust-Renew-After: the intermediate was tainted), and passes the
// earliest answer on to r. meshd out of reach is reported and changes
// nothing: the certificates are then renewed when the local rule says.
func askEarly(ctx context.Context, errw io.Writer, client *enroll.Client, n *enroll.Node, r *enroll.Renewer) {
	ctx, cancel := context.WithTimeout(ctx, nodeTimeout)
	defer cancel()
	certs := []tls.Certificate{n.Certificate}
	asked := map[string]bool{string(n.Certificate.Leaf.AuthorityKeyId): true}
	for _, a := range n.Agents {
		if k := string(a.Certificate.Leaf.AuthorityKeyId); !asked[k] {
			asked[k] = true
			certs = append(certs, a.Certificate)
		}
	}
	for _, c := range certs {
		at, err := client.RenewAfter(ctx, c)
		if err != nil {
			fmt.Fprintf(errw, "warning: cannot ask meshd at %s whether %s is to be renewed early: %v\n", client.Server, c.Leaf.Subject.CommonName, err)
			return
		}
		if !at.IsZero() {
			r.RenewBy(at)
		}
	}
}

// renewal is `renew --json`: the node's certificate and its agents', the
// renewed ones when Renewed, else the current ones and when they are due.
type renewal struct {
	Renewed bool           `json:"renewed"`
	DueAt   time.Time      `json:"due_at,omitzero"`
	Node    certSummary    `json:"node"`
	Agents  []agentRenewal `json:"agents"`
}

// agentRenewal is one agent of a renewal; Renewed is false for an agent
// meshd did not renew, which keeps its certificate.
type agentRenewal struct {
	certSummary
	Renewed bool `json:"renewed"`
}

func tokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage one-time join tokens for enrolling nodes",
	}
	var (
		node, ttl, server string
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a one-time join token that enrolls one node",
		Long: `Create a join token through meshd's admin API. It enrolls exactly --node,
once, before --ttl passes. It is shown once: meshd keeps only its SHA-256.
The printed command, run on the node, enrolls it and pins the mesh root by
its fingerprint.`,
		Example: `  meshctl --data-dir /var/lib/meshd token create --node ct112 --ttl 1h --server https://meshd.mesh:8443`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := identity.NewNode(node); err != nil {
				return fmt.Errorf("--node: %w", err)
			}
			d, err := ParseDuration(ttl)
			if err != nil || d <= 0 {
				return fmt.Errorf("--ttl %q: want a positive duration such as 30m, 1h or 1d", ttl)
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.TokenResponse
				data, err := c.call(cmd.Context(), http.MethodPost, meshapi.PathAdminTokens, meshapi.TokenRequest{NodeID: node, TTL: d.String()}, &out)
				if err != nil {
					return err
				}
				if out.Token == "" {
					return errors.New("meshd's answer carries no token")
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				printToken(cmd.OutOrStdout(), out.Token, orDefault(out.NodeID, node), out.ExpiresAt, out.RootFingerprint, server)
				return nil
			})
		},
	}
	create.Flags().StringVar(&node, "node", "", "the node id the token enrolls (required)")
	create.Flags().StringVar(&ttl, "ttl", "1h", "how long the token stays valid")
	serverFlag(create, &server, "meshd's agent port as the node reaches it, for the printed enroll command")
	create.MarkFlagRequired("node")
	addJSON(create, g)
	cmd.AddCommand(create)
	return cmd
}

func printToken(w io.Writer, token, node string, expires time.Time, fingerprint, server string) {
	if server == "" {
		server = "https://<meshd-host>:<port>"
	}
	fmt.Fprintf(w, "join token for node %s, valid until %s (shown once; meshd keeps only its hash):\n\n  %s\n\n", node, expires.UTC().Format(time.RFC3339), token)
	fmt.Fprintf(w, "on %s, run:\n\n  meshctl enroll --server %s --node-id %s --token %s", node, server, node, token)
	if fingerprint != "" {
		fmt.Fprintf(w, " --ca-fingerprint %s", fingerprint)
	} else {
		fmt.Fprint(w, " --ca-cert <mesh root PEM>")
	}
	fmt.Fprintln(w)
}
