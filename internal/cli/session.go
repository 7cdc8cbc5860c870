package cli

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/meshapi"
)

// newSessionCmd groups the commands on meshd's session token signing
// keys.
func newSessionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "session",
		Short: "List, rotate and drop the keys meshd signs session tokens with",
		Long: `meshd signs the session tokens of POST /session/attach with one current key
and publishes the keys that verify them at GET /session/jwks. A rotation makes a
new key current; the rotated-out key stays accepted for one token lifetime
(--session-ttl) so that its tokens live out their time. An operator who no
longer trusts a rotated-out key drops it: meshd refuses its tokens at once, and
every service verifying from the JWKS refuses them when it next fetches it.`,
	}
	cmd.AddCommand(sessionKeysCmd(g), sessionRotateKeyCmd(g), sessionDropKeyCmd(g))
	return cmd
}

func sessionKeysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "keys",
		Short:   "List the session signing keys whose tokens are accepted",
		Example: `  meshctl --data-dir ./meshtrust-data session keys`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.SessionKeysResponse
				data, err := c.call(cmd.Context(), http.MethodGet, meshapi.PathAdminSessionKeys, nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				printSessionKeys(cmd.OutOrStdout(), out)
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func printSessionKeys(w io.Writer, out meshapi.SessionKeysResponse) {
	for _, k := range out.Keys {
		if k.Current {
			fmt.Fprintf(w, "%s  current\n", k.KeyID)
			continue
		}
		fmt.Fprintf(w, "%s  rotated out, accepted until %s\n", k.KeyID, k.Until.UTC().Format(time.RFC3339))
	}
}

func sessionRotateKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Make a new session signing key current; the previous one stays accepted for one token lifetime",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.SessionKeyRotateResponse
				data, err := c.call(cmd.Context(), http.MethodPost, meshapi.PathAdminSessionKeys+"/rotate", nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "session signing key rotated: %s is current\n", out.KeyID)
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func sessionDropKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "drop-key <key-id>",
		Short: "Stop accepting the tokens of a rotated-out session signing key at once",
		Long: `Drops a rotated-out session signing key before its overlap ends: meshd refuses
the tokens it signed at once, and services verifying from meshd's JWKS refuse
them when they next fetch it. The current key cannot be dropped: rotate first.`,
		Example: `  meshctl session rotate-key
  meshctl session keys
  meshctl session drop-key -- <the rotated-out key id>

A key id is a base64url JWK thumbprint and may begin with "-": put it after
"--" so it is not read as a flag.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.withAdmin(cmd, func(c *adminClient) error {
				var out meshapi.SessionKeysResponse
				data, err := c.call(cmd.Context(), http.MethodDelete, meshapi.PathAdminSessionKeys+"/"+url.PathEscape(a[0]), nil, &out)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printRaw(cmd.OutOrStdout(), data)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "session signing key %s dropped; its tokens are refused. Keys still accepted:\n", a[0])
				printSessionKeys(cmd.OutOrStdout(), out)
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}
