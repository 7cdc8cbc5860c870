package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The entity commands keep MCP Mesh meshctl's names, flags and messages
// where meshd allows. Two things differ: entities live in meshd's store,
// reached through its admin API, not in files of a trust dir; and a
// revocation evicts the entity's agents at once.
func newEntityCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "entity",
		Short: "Manage trusted entity CAs in meshd",
		Long: `Manage trusted entity CAs for meshd.

Entities represent organizations or teams whose agents are allowed to register
with the mesh. Each entity is identified by a CA certificate — any agent
presenting a certificate signed by a trusted entity CA can join the mesh, under
agent ids that start with "<entity>-".

Entities live in meshd's store. These commands call meshd's admin API: the unix
socket <data-dir>/admin.sock (--data-dir, MESHTRUST_DATA_DIR), or mTLS
(--admin-url with an admin identity's --cert and --key).`,
		Example: `  meshctl --data-dir /var/lib/meshd entity register "partner-corp" --ca-cert /path/to/ca.pem
  meshctl entity list
  meshctl entity revoke "partner-corp" --force
  meshctl entity rotate`,
	}
	cmd.AddCommand(entityRegisterCmd(g), entityListCmd(g), entityRevokeCmd(g), entityRotateCmd(g))
	return cmd
}

// movedFlag adds a hidden flag MCP Mesh's meshctl has and meshd does not
// need, which explains what to do instead when it is used.
func movedFlag(cmd *cobra.Command, name, why string) {
	cmd.Flags().String(name, "", why)
	cmd.Flags().MarkHidden(name)
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, a []string) error {
		if c.Flags().Changed(name) {
			return fmt.Errorf("--%s: %s", name, why)
		}
		return run(c, a)
	}
}

const trustDirMoved = "meshd keeps entities in its store, not in a trust dir; point meshctl at meshd with --data-dir or --admin-url instead " +
	"(a CA file in the trust dir is trusted by meshd's filestore backend without meshctl)"

// withAdmin runs fn with a client of meshd's admin API.
func (g *globals) withAdmin(cmd *cobra.Command, fn func(*adminClient) error) error {
	c, err := g.adminClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

func entityRegisterCmd(g *globals) *cobra.Command {
	var (
		caFile, namespace string
		force             bool
	)
	cmd := &cobra.Command{
		Use:   "register <entity-name>",
		Short: "Register a trusted entity CA certificate",
		Long: `Register a CA certificate for a trusted entity.

Any agent presenting a certificate signed by this entity CA will be allowed
to register with the mesh, under the agent ids of its namespace (--namespace):
by default those that start with "<entity-name>-"; or a listed set of ids
(ids:weather-agent-1,geo-agent-1); or any id no one claimed, the first claim
binding it to the entity (first-claim, which lets the entity take names the
mesh would have used: prefer a list). The file must hold CA certificates
inside their validity period; a CA already registered under another name is
refused (one CA, one entity).`,
		Example: `  meshctl entity register "partner-corp" --ca-cert /path/to/ca.pem
  meshctl entity register "acme" --ca-cert ./acme-ca.pem --namespace ids:weather-agent-1,geo-agent-1
  meshctl entity register "internal-team" --ca-cert ./team-ca.pem --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			name := a[0]
			if err := identity.ValidateID(name); err != nil {
				return fmt.Errorf("entity name: %w", err)
			}
			if _, err := registry.ParseNamespace(namespace); err != nil {
				return fmt.Errorf("--namespace: %w", err)
			}
			pemData, err := readEntityCA(caFile, time.Now())
			if err != nil {
				return err
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.RegisterEntityResponse
				body := meshapi.RegisterEntityRequest{Name: name, CACert: string(pemData), Force: force, Namespace: namespace}
				data, err := c.call(cmd.Context(), http.MethodPost, meshapi.PathAdminEntities, body, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s (CA %s, expires %s)\n", orDefault(out.Message, fmt.Sprintf("Entity '%s' registered", name)), out.Subject, out.Expires)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&caFile, "ca-cert", "", "Path to entity CA PEM file (required)")
	cmd.Flags().BoolVar(&force, "force", false, "Overwrite if entity already registered")
	cmd.Flags().StringVar(&namespace, "namespace", "prefix", "agent ids the entity's agents may claim: prefix (<entity-name>-…), ids:<id>,<id>,… or first-claim")
	cmd.MarkFlagRequired("ca-cert")
	addJSON(cmd, g)
	movedFlag(cmd, "trust-dir", trustDirMoved)
	return cmd
}

// readEntityCA reads a CA file and checks what can be checked before
// meshd does: PEM certificates, each a CA, each valid at now.
func readEntityCA(path string, now time.Time) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read CA cert file: %w", err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		if !hasCertBlock(data) {
			return nil, fmt.Errorf("no CERTIFICATE PEM blocks found in %s", path)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, c := range certs {
		if err := checkCA(c, now); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return data, nil
}

func hasCertBlock(data []byte) bool {
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return false
		}
		if b.Type == "CERTIFICATE" {
			return true
		}
	}
}

func checkCA(c *x509.Certificate, now time.Time) error {
	subj := c.Subject.String()
	switch {
	case !c.BasicConstraintsValid || !c.IsCA:
		return fmt.Errorf("%q is not a CA certificate (BasicConstraints CA flag not set)", subj)
	case now.After(c.NotAfter):
		return fmt.Errorf("CA certificate %q has expired (expired %s)", subj, c.NotAfter.UTC().Format("2006-01-02"))
	case now.Before(c.NotBefore):
		return fmt.Errorf("CA certificate %q is not yet valid (valid from %s)", subj, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func entityListCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List all trusted entity CAs",
		Long: `List the entities meshd knows: those registered in its store (source meshd)
and those its filestore backend finds in the trust dir (source filestore).

Displays entity name, status, source, live agents, certificate subject and
expiry date.`,
		Example: `  meshctl entity list
  meshctl entity list --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.EntityList
				data, err := c.call(cmd.Context(), http.MethodGet, meshapi.PathAdminEntities, nil, &out)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if g.jsonOut {
					return printRaw(w, data)
				}
				if len(out.Entities) == 0 {
					fmt.Fprintln(w, "No trusted entities registered. Use 'meshctl entity register' to add one.")
					return nil
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSTATUS\tSOURCE\tAGENTS\tNAMESPACE\tSUBJECT\tEXPIRES")
				for _, e := range out.Entities {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.Name, e.Status, e.Source, e.Agents, orDefault(e.Namespace, "prefix"), e.Subject, e.Expires)
				}
				return tw.Flush()
			})
		},
	}
	addJSON(cmd, g)
	movedFlag(cmd, "trust-dir", trustDirMoved)
	return cmd
}

func entityRevokeCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "revoke <entity-name>",
		Short: "Revoke a trusted entity CA",
		Long: `Revoke a trusted entity: meshd records the revocation in its store, stops
trusting the entity's CA, evicts the entity's agents and closes their
connections, all before it answers. Registering the entity again undoes it.

Use --force to confirm.`,
		Example: `  meshctl entity revoke "partner-corp" --force`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			name := a[0]
			if !force {
				fmt.Fprintf(cmd.ErrOrStderr(), "Revoking entity '%s' will:\n"+
					"  - Stop trusting the entity's CA in meshd, durably\n"+
					"  - Evict the entity's agents at once and close their connections\n\n", name)
				return errors.New("use --force to confirm revocation")
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.RevokeEntityResponse
				data, err := c.call(cmd.Context(), http.MethodDelete, meshapi.PathAdminEntities+"/"+url.PathEscape(name), nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				msg := orDefault(out.Message, fmt.Sprintf("Entity '%s' revoked; %d agent(s) evicted", name, out.EvictedAgents))
				fmt.Fprintf(cmd.OutOrStdout(), "%s, %d connection(s) closed\n", msg, out.ClosedConnections)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "Confirm the revocation (it evicts the entity's agents)")
	addJSON(cmd, g)
	movedFlag(cmd, "trust-dir", trustDirMoved)
	return cmd
}

func entityRotateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate [entity-name]",
		Short: "Trigger certificate rotation for agents",
		Long: `Triggers all agents (or agents of a specific entity) to re-register on their
next heartbeat (HEAD answers 202), with a certificate issued after the rotation.
Agents with revoked or expired certificates are refused when they re-register.`,
		Example: `  meshctl entity rotate
  meshctl entity rotate "partner-corp"`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			path := meshapi.PathAdminRotate
			if len(a) == 1 {
				path += "?entity_id=" + url.QueryEscape(a[0])
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.RotateResponse
				data, err := c.call(cmd.Context(), http.MethodPost, path, nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %d agent(s) will re-register on next heartbeat\n", orDefault(out.Message, "Rotation triggered"), out.AffectedAgents)
				return nil
			})
		},
	}
	addJSON(cmd, g)
	movedFlag(cmd, "registry-url", "meshd serves its admin API on its unix socket or its mTLS admin listener, not on the agent port; pass --data-dir or --admin-url instead")
	return cmd
}
