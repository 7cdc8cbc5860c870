package cli

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
)

// adminPolicy is meshd's admin policy, the default of the policy
// commands.
const adminPolicy = "meshd-admin"

// newPolicyCmd groups the commands on the allow-list policies kept in
// meshd's store.
func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Read, set and check the allow-list policies kept by meshd (meshd-admin guards its admin API)",
		Long: `Allow-list policies are meshauth's YAML documents: rules of who (an identity,
*@node, entity:<name>, a SPIFFE ID or trust domain, globs) may do what (HTTP
method and path, gRPC methods, MCP methods, tools, resources, prompts).
Whatever no rule allows is refused. The policy meshd-admin decides who may call
meshd's admin API over mTLS (--admin-listen); until it is set, it allows every
route to the --admin-identity list.`,
	}
	cmd.AddCommand(policyGetCmd(g), policySetCmd(g), policyCheckCmd(g))
	return cmd
}

func policyPath(name string) string { return meshapi.PathAdminPolicies + "/" + url.PathEscape(name) }

func policyGetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "get [name]",
		Short:   "Print a policy's document (default meshd-admin)",
		Example: `  meshctl --data-dir ./meshtrust-data policy get > admin.yaml`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			name := adminPolicy
			if len(a) == 1 {
				name = a[0]
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.Policy
				data, err := c.call(cmd.Context(), http.MethodGet, policyPath(name), nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				doc := out.Document
				if !strings.HasSuffix(doc, "\n") {
					doc += "\n"
				}
				_, err = io.WriteString(cmd.OutOrStdout(), doc)
				return err
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func policySetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "set <name> <file|->",
		Short: "Set a policy from a YAML file; a document that does not compile is refused and nothing changes",
		Example: `  meshctl --data-dir ./meshtrust-data policy set meshd-admin admin.yaml
  meshctl --data-dir ./meshtrust-data policy set mcp-tools - < tools.yaml`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			name, file := a[0], a[1]
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 16<<20))
				file = "<stdin>"
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			// Checked here first, so the error names the file.
			p, err := meshauth.ParsePolicy(file, data)
			if err != nil {
				return err
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.Policy
				resp, err := c.call(cmd.Context(), http.MethodPut, policyPath(name), meshapi.Policy{Name: name, Document: string(data)}, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "policy %s set: %d rules, in force now\n", name, p.Rules())
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func policyCheckCmd(g *globals) *cobra.Command {
	var name, source, entity string
	cmd := &cobra.Command{
		Use:   "check <identity> <operation>",
		Short: "Say whether an identity may perform an operation, and which rule decides",
		Long: `The identity is a certificate's name (opus@ct111, ct111.mesh, alice@external,
weather-agent, or a SPIFFE ID), anonymous or legacy:bearer. --source names the
trust backend that would admit its certificate (localca, the mesh CA, by
default; filestore, entities, spire, k8s-secrets) and --entity the partner
entity whose CA would sign it: the identity is checked with only the names
that source may vouch for, as a real certificate would be (a partner's CA
never satisfies a rule for opus@ct111). The operation is "METHOD /path", "grpc /pkg.Service/Method",
or "mcp <method> [tool, prompt or resource]".`,
		Example: `  meshctl --data-dir ./meshtrust-data policy check alice@external GET /admin/agents
  meshctl --data-dir ./meshtrust-data policy check --policy mcp-tools --entity partner-corp ops@dev1 mcp tools/call search_docs
  meshctl --data-dir ./meshtrust-data policy check --policy mcp-tools opus@ct111 mcp tools/call search_docs`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			op := strings.Join(a[1:], " ")
			if _, err := meshauth.ParseOperation(op); err != nil {
				return err
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.PolicyCheckResponse
				data, err := c.call(cmd.Context(), http.MethodPost, policyPath(name)+"/check",
					meshapi.PolicyCheckRequest{Identity: a[0], Source: source, Entity: entity, Operation: op}, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				verdict := "deny"
				if out.Allowed {
					verdict = "allow"
				}
				if out.Rule == meshauth.DefaultDeny {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: no rule of %s allows %s %s (default deny)\n", verdict, name, a[0], op)
					return nil
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: rule %q of %s\n", verdict, out.Rule, name)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&name, "policy", adminPolicy, "the policy to check against")
	cmd.Flags().StringVar(&source, "source", "", "the trust backend that admits the identity's certificate (default: the mesh CA, localca; with --entity, entities)")
	cmd.Flags().StringVar(&entity, "entity", "", "the partner entity whose CA signs the identity's certificate")
	addJSON(cmd, g)
	return cmd
}
