package cli

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
)

// intermediateSummary is how `ca status`, `taint` and `revoke` print an
// intermediate.
type intermediateSummary struct {
	KeyID     string     `json:"key_id"`
	Subject   string     `json:"subject"`
	State     string     `json:"state"`
	Slot      string     `json:"slot"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	TaintedAt *time.Time `json:"tainted_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// LiveCerts counts its leaves in use (the newest unexpired, unrevoked
	// certificate of their identity); Superseded the ones renewed away.
	LiveCerts  int `json:"live_certificates"`
	Superseded int `json:"superseded_certificates"`
}

func summarizeIntermediate(in ca.IntermediateStatus) intermediateSummary {
	s := intermediateSummary{KeyID: in.KeyID, Subject: in.Cert.Subject.String(), State: in.State, Slot: in.Slot,
		NotBefore: in.Cert.NotBefore.UTC(), NotAfter: in.Cert.NotAfter.UTC(), LiveCerts: in.LiveCerts, Superseded: in.Superseded}
	if !in.TaintedAt.IsZero() {
		at := in.TaintedAt.UTC()
		s.TaintedAt = &at
	}
	if !in.RevokedAt.IsZero() {
		at := in.RevokedAt.UTC()
		s.RevokedAt = &at
	}
	return s
}

func printIntermediates(w io.Writer, ints []intermediateSummary) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ID\tSTATE\tLIVE CERTS\tSUPERSEDED\tNOT AFTER\tSUBJECT")
	for _, in := range ints {
		state := in.State
		if in.TaintedAt != nil && in.RevokedAt == nil {
			state += " since " + in.TaintedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", in.KeyID, state, in.LiveCerts, in.Superseded, in.NotAfter.Format(time.RFC3339), in.Subject)
	}
	return tw.Flush()
}

// intermediateStatus lists the CA's intermediates with their live
// certificates, newest first.
func intermediateStatus(cmd *cobra.Command, c *ca.CA) ([]intermediateSummary, error) {
	ints, err := c.IntermediateStatus(cmd.Context())
	if err != nil {
		return nil, err
	}
	out := make([]intermediateSummary, 0, len(ints))
	for _, in := range ints {
		out = append(out, summarizeIntermediate(in))
	}
	return out, nil
}

func caStatusCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the intermediates: slot (active, prepared, retired, tainted, revoked) and live certificates",
		Long: `List every intermediate the CA's store records, newest first: its state
(active, prepared, retired, tainted or revoked) and how many unexpired,
unrevoked certificates it signed are still out there. A tainted
intermediate may be revoked once it has none left.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.openCA(cmd.Context(), func(c *ca.CA, _ store.Store) error {
				ints, err := intermediateStatus(cmd, c)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return printJSON(cmd.OutOrStdout(), ints)
				}
				return printIntermediates(cmd.OutOrStdout(), ints)
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

// printChanged prints the intermediate keyID after a taint or revocation.
func printChanged(cmd *cobra.Command, g *globals, c *ca.CA, keyID, verb string) error {
	ints, err := intermediateStatus(cmd, c)
	if err != nil {
		return err
	}
	for _, in := range ints {
		if in.KeyID != keyID {
			continue
		}
		if g.jsonOut {
			return printJSON(cmd.OutOrStdout(), in)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s intermediate %s\n", verb, in.KeyID)
		return printIntermediates(cmd.OutOrStdout(), []intermediateSummary{in})
	}
	return fmt.Errorf("intermediate %s is gone from the store", keyID)
}

// changeIntermediate runs op, a taint or revocation, on the CA's store,
// and prints the intermediate it changed as the CA now sees it.
func changeIntermediate(cmd *cobra.Command, g *globals, verb string, op func(ca.Config, store.Store) (*x509.Certificate, error)) error {
	cfg, err := g.config()
	if err != nil {
		return err
	}
	return g.openCA(cmd.Context(), func(c *ca.CA, st store.Store) error {
		cert, err := op(cfg, st)
		if err != nil {
			return err
		}
		if err := c.Reload(cmd.Context()); err != nil {
			return err
		}
		return printChanged(cmd, g, c, keyIDOf(cert), verb)
	})
}

func caTaintCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "taint <key-id>",
		Short: "Mark a retired intermediate tainted: every certificate it signed renews now",
		Long: `Mark a retired intermediate tainted (after its key may have leaked). meshd
then tells every holder of a certificate it signed to renew now, spread
over a few minutes, and renewals are signed by the active intermediate.
Only a retired intermediate can be tainted: prepare and activate a new one
first. Follow the renewals with ` + "`meshctl ca status`" + `, then revoke it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			return changeIntermediate(cmd, g, "tainted", func(cfg ca.Config, st store.Store) (*x509.Certificate, error) {
				return ca.TaintIntermediate(cmd.Context(), cfg, st, a[0])
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func caRevokeIntermediateCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "revoke <key-id>",
		Short: "Revoke a tainted intermediate: nothing trusts it any more",
		Long: `Revoke a tainted intermediate: it leaves the bundle and meshd's trust, so
every chain through it is refused. Where the root key is at hand, a
root-signed CRL listing it is written too (intermediate/root-crl.pem, and
crl.pem beside the intermediates' CRLs), for verifiers that check every
CRL of a chain; run it again where the root key is to write that CRL
later. It refuses while the intermediate still signs live certificates,
naming how many, unless --force, which cuts their holders off.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			var rev ca.Revoked
			err := changeIntermediate(cmd, g, "revoked", func(cfg ca.Config, st store.Store) (*x509.Certificate, error) {
				var err error
				rev, err = ca.RevokeIntermediate(cmd.Context(), cfg, st, a[0], force)
				return rev.Cert, err
			})
			if err == nil && !g.jsonOut && rev.RootCRL == nil {
				fmt.Fprintln(cmd.OutOrStdout(), "the root key is not at hand: no root CRL lists it yet; run this again where the root key is")
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "revoke even while it signs live certificates")
	addJSON(cmd, g)
	return cmd
}

// keyIDOf is a CA certificate's subject key id as the CA names it:
// lowercase hex.
func keyIDOf(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }
