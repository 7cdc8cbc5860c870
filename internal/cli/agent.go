package cli

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/meshapi"
)

// newAgentCmd groups the commands on agents: the operator's on registered
// ones, and run, the sidecar that makes any command an agent.
func newAgentCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a command as a mesh agent, or act on agents registered with meshd",
	}
	cmd.AddCommand(agentReleaseCmd(g), agentRunCmd(g))
	return cmd
}

func agentReleaseCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "release <agent-id>",
		Short: "Free an agent id from the certificate that claimed it",
		Long: `Free an agent id from whatever certificate claimed it first, so that the next
certificate that may speak for it claims it: for a node that registered
another node's agent name ahead of it. The release is audited (agent.release);
the first claim after it is audited too (agent.claim).

Use --force to confirm.`,
		Example: `  meshctl --data-dir ./meshtrust-data agent release opus --force`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			if !force {
				return errors.New("releasing drops the agent's record and lets another certificate claim its id; use --force to confirm")
			}
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.ReleaseResponse
				data, err := c.call(cmd.Context(), http.MethodDelete, meshapi.PathAdminAgents+"/"+url.PathEscape(a[0]), nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				fmt.Fprintln(cmd.OutOrStdout(), out.Message)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "confirm the release")
	addJSON(cmd, g)
	return cmd
}
