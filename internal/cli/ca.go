package cli

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Run the mesh certificate authority",
		Long: `Run the mesh certificate authority: an offline root, an online
intermediate, and the node, agent and client certificates it issues.

The root lives in --root-dir and is needed only by init, issue-intermediate
and rotate-intermediate prepare; everything else works with it offline.`,
	}
	cmd.AddCommand(
		caInitCmd(g), caIssueIntermediateCmd(g), caRotateCmd(g),
		caIssueNodeCmd(g), caIssueAgentCmd(g), caIssueClientCmd(g), caSignCmd(g),
		caRevokeCmd(g), caReinstateCmd(g), caCRLCmd(g), caVerifyCmd(g), caListCmd(g), caAuditCmd(g),
		caStatusCmd(g),
	)
	return cmd
}

func addKeyType(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVar(&g.keyType, "key-type", "ecdsa-p256", "key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048 or rsa-4096")
}

func addJSON(cmd *cobra.Command, g *globals) {
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
}

// certSummary is how a certificate is printed.
type certSummary struct {
	CommonName  string    `json:"common_name"`
	Serial      string    `json:"serial"`
	Fingerprint string    `json:"fingerprint_sha256"`
	SANs        []string  `json:"sans,omitempty"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	CertFile    string    `json:"cert_file,omitempty"`
	KeyFile     string    `json:"key_file,omitempty"`
}

func summarize(c *x509.Certificate) certSummary {
	return certSummary{
		CommonName: c.Subject.CommonName, Serial: c.SerialNumber.Text(16), Fingerprint: trust.Fingerprint(c),
		SANs: ca.SANs(c), NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
	}
}

func (g *globals) printCert(w io.Writer, verb string, s certSummary) error {
	if g.jsonOut {
		return printJSON(w, s)
	}
	fmt.Fprintf(w, "%s %s\n  serial      %s\n  sha256      %s\n  valid       %s to %s\n",
		verb, s.CommonName, s.Serial, s.Fingerprint, s.NotBefore.Format(time.RFC3339), s.NotAfter.Format(time.RFC3339))
	if len(s.SANs) > 0 {
		fmt.Fprintf(w, "  SANs        %s\n", strings.Join(s.SANs, ", "))
	}
	if s.CertFile != "" {
		fmt.Fprintf(w, "  certificate %s\n", s.CertFile)
	}
	if s.KeyFile != "" {
		fmt.Fprintf(w, "  key         %s\n", s.KeyFile)
	}
	return nil
}

// lifecycle is one step of the root and intermediate lifecycle: it opens
// the CA directory's store, runs, and prints the certificate it made and
// what to do next.
type lifecycle struct {
	use, short string
	// create lets the step create the CA directory (the first steps).
	create bool
	// keyType offers --key-type: the step generates a key.
	keyType bool
	run     func(context.Context, ca.Config, store.Store) (*x509.Certificate, error)
	verb    string
	// files names the certificate and key files the step wrote, if any.
	files func(ca.Config) (cert, key string)
	next  func(ca.Config) string
}

func lifecycleCmd(g *globals, l lifecycle) *cobra.Command {
	cmd := &cobra.Command{
		Use:   l.use,
		Short: l.short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			st, err := g.openStore(cmd.Context(), cfg, l.create)
			if err != nil {
				return err
			}
			defer st.Close()
			p := g.progress(cmd)
			cfg.Progress = func(step string) { p.Step("%s: %s", l.use, step) }
			cert, err := l.run(cmd.Context(), cfg, st)
			p.Done()
			if err != nil {
				return err
			}
			s := summarize(cert)
			if l.files != nil {
				s.CertFile, s.KeyFile = l.files(cfg)
			}
			if err := g.printCert(cmd.OutOrStdout(), l.verb, s); err != nil {
				return err
			}
			if !g.jsonOut {
				fmt.Fprintln(cmd.OutOrStdout(), l.next(cfg))
			}
			return nil
		},
	}
	if l.keyType {
		addKeyType(cmd, g)
	}
	addJSON(cmd, g)
	return cmd
}

func caInitCmd(g *globals) *cobra.Command {
	return lifecycleCmd(g, lifecycle{
		use: "init", short: "Create the self-signed root (once, ever)", create: true, keyType: true,
		run: ca.Init, verb: "created root",
		files: func(cfg ca.Config) (string, string) {
			// The root key's file, or its reference on the token.
			ext := ".key"
			if cfg.PKCS11.Configured() {
				ext = ".pkcs11"
			}
			return cfg.RootCertPath(), strings.TrimSuffix(cfg.RootCertPath(), ".crt") + ext
		},
		next: func(ca.Config) string { return "next: meshctl ca issue-intermediate" },
	})
}

func caIssueIntermediateCmd(g *globals) *cobra.Command {
	return lifecycleCmd(g, lifecycle{
		use: "issue-intermediate", short: "Create the online intermediate, signed by the root", create: true, keyType: true,
		run: ca.IssueIntermediate, verb: "created intermediate",
		next: func(cfg ca.Config) string {
			return fmt.Sprintf("chain: %s\nthe root key in %s can now be moved offline", cfg.ChainPath(), cfg.RootDir)
		},
	})
}

func caRotateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate-intermediate",
		Short: "Rotate the intermediate: prepare, activate; after a compromise taint and revoke the old one",
	}
	say := func(s string) func(ca.Config) string { return func(ca.Config) string { return s } }
	cmd.AddCommand(
		lifecycleCmd(g, lifecycle{
			use: "prepare", short: "Create a new intermediate beside the active one (needs the root key)", keyType: true,
			run: ca.PrepareIntermediate, verb: "prepared intermediate",
			next: say("the bundle now holds both intermediates; once verifiers have it, run: meshctl ca rotate-intermediate activate"),
		}),
		lifecycleCmd(g, lifecycle{
			use: "activate", short: "Make the prepared intermediate the signing one",
			run: ca.ActivateIntermediate, verb: "activated intermediate",
			next: say("new certificates are signed by it; certificates from the old one stay valid until they expire"),
		}),
		caTaintCmd(g), caRevokeIntermediateCmd(g),
	)
	return cmd
}

// issueCmd builds issue-node, issue-agent and issue-client.
func issueCmd(g *globals, use, short string, args cobra.PositionalArgs, issue func(context.Context, *ca.CA, []string) (*ca.Issued, error)) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				is, err := issue(cmd.Context(), c, a)
				if err != nil {
					return err
				}
				s := summarize(is.Cert)
				cn := is.Cert.Subject.CommonName
				s.CertFile, s.KeyFile = c.Config().IssuedCertPath(cn), c.Config().IssuedKeyPath(cn)
				return g.printCert(cmd.OutOrStdout(), "issued", s)
			})
		},
	}
	addKeyType(cmd, g)
	addJSON(cmd, g)
	return cmd
}

func caIssueNodeCmd(g *globals) *cobra.Command {
	return issueCmd(g, "issue-node <node-id> [SAN...]",
		"Issue a node's server+client certificate (re-issuing renews it under the same key)",
		cobra.MinimumNArgs(1),
		func(ctx context.Context, c *ca.CA, a []string) (*ca.Issued, error) {
			return c.Sign(ctx, ca.NodeRequest(a[0], a[1:]...), ca.WithGeneratedKey())
		})
}

func caIssueAgentCmd(g *globals) *cobra.Command {
	return issueCmd(g, "issue-agent <agent-id> <node-id>", "Issue an agent's client certificate, CN <agent-id>@<node-id>",
		cobra.ExactArgs(2),
		func(ctx context.Context, c *ca.CA, a []string) (*ca.Issued, error) {
			return c.Sign(ctx, ca.AgentRequest(a[0], a[1]), ca.WithGeneratedKey())
		})
}

func caIssueClientCmd(g *globals) *cobra.Command {
	return issueCmd(g, "issue-client <user>", "Issue an external user's client certificate, CN <user>@external",
		cobra.ExactArgs(1),
		func(ctx context.Context, c *ca.CA, a []string) (*ca.Issued, error) {
			return c.Sign(ctx, ca.ClientRequest(a[0]), ca.WithGeneratedKey())
		})
}

func caSignCmd(g *globals) *cobra.Command {
	var (
		profile, name, ttl, out string
		sans                    []string
	)
	cmd := &cobra.Command{
		Use:   "sign <csr.pem>",
		Short: "Sign a CSR whose key stays with its owner",
		Long: `Sign a certificate request. The profile decides the subject, SANs, key
usages and lifetime; the CSR only proves possession of the key and may ask
for nothing the profile would not grant.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, err := ca.ParseProfile(profile)
			if err != nil {
				return err
			}
			req := ca.Request{Profile: p, ExtraSANs: sans}
			if name != "" {
				if req.Identity, err = identity.Parse(name); err != nil {
					return err
				}
			}
			if ttl != "" {
				if req.TTL, err = ParseDuration(ttl); err != nil {
					return err
				}
			}
			data, err := os.ReadFile(a[0])
			if err != nil {
				return err
			}
			csr, err := ca.ParseCSR(data)
			if err != nil {
				return fmt.Errorf("%s: %w", a[0], err)
			}
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				is, err := c.Sign(cmd.Context(), req, ca.FromCSR(csr))
				if err != nil {
					return err
				}
				pemOut := append(append([]byte{}, is.PEM...), is.ChainPEM...)
				if out != "" {
					if err := pemfile.WriteAtomic(out, pemOut, 0o644); err != nil {
						return err
					}
					s := summarize(is.Cert)
					s.CertFile = out
					return g.printCert(cmd.OutOrStdout(), "signed", s)
				}
				if g.jsonOut {
					return printJSON(cmd.OutOrStdout(), struct {
						certSummary
						PEM   string `json:"pem"`
						Chain string `json:"chain"`
					}{summarize(is.Cert), string(is.PEM), string(is.ChainPEM)})
				}
				_, err = cmd.OutOrStdout().Write(pemOut)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&profile, "profile", "", "node, agent or client (required)")
	cmd.Flags().StringVar(&name, "name", "", "identity to issue for (default: the CSR's common name)")
	cmd.Flags().StringSliceVar(&sans, "san", nil, "extra SAN granted to a node: DNS:x, IP:x, URI:x (repeatable)")
	cmd.Flags().StringVar(&ttl, "ttl", "", "lifetime, at most the profile's (default the profile's)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "write certificate and chain to this file instead of stdout")
	cmd.MarkFlagRequired("profile")
	addJSON(cmd, g)
	return cmd
}

func caReinstateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reinstate <cn>",
		Short: "Lift the revocation of an identity, so certificates can be issued to it again",
		Long: `Lift the revocation of an identity (revoked with ` + "`meshctl ca revoke <name>`" + `), so
certificates can be issued to it again; for a node, to its agents too. The
certificates revoked with it stay revoked. The reinstatement is audited.

With --data-dir or --admin-url the running meshd reinstates it at once;
otherwise the CA directory's store is changed and meshd follows it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			if g.admin.wanted(cmd) {
				return g.reinstateViaAdmin(cmd, a[0])
			}
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				if err := c.Reinstate(cmd.Context(), a[0]); err != nil {
					return err
				}
				id, _ := identity.Parse(a[0])
				msg := meshapi.ReinstateResponse{Identity: id.CommonName(),
					Message: fmt.Sprintf("identity %s reinstated: certificates can be issued to it again; its revoked certificates stay revoked", id.CommonName())}
				if g.jsonOut {
					return printJSON(cmd.OutOrStdout(), msg)
				}
				fmt.Fprintln(cmd.OutOrStdout(), msg.Message)
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func caRevokeCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke <cn|serial>",
		Short: "Revoke a certificate by serial, or an identity by name",
		Long: `Revoke a certificate by serial, or an identity by name.

A serial revokes that certificate; with --reason keyCompromise its key is
never certified again either. A name (ct111.mesh, opus@ct111, alice@external)
revokes the identity: every live certificate of it, and every later issuance
for it on every path, until ` + "`meshctl ca reinstate <name>`" + `. Revoking a node
(ct200.mesh) revokes its agents (*@ct200) too.

With --data-dir or --admin-url (or MESHTRUST_DATA_DIR holding meshd's admin
socket), the running meshd revokes through its CA and evicts the certificate's
agents before it answers. Otherwise the CA directory is changed directly, and a
running meshd applies the revocation when it next polls its store.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			r, err := ca.ParseReason(reason)
			if err != nil {
				return err
			}
			if g.admin.wanted(cmd) {
				return g.revokeViaAdmin(cmd, a[0], reason)
			}
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				revs, err := c.Revoke(cmd.Context(), a[0], r)
				if err != nil && len(revs) == 0 {
					return err
				}
				if g.jsonOut {
					if perr := printJSON(cmd.OutOrStdout(), revocations(revs)); perr != nil {
						return perr
					}
				} else {
					for _, rv := range revs {
						fmt.Fprintf(cmd.OutOrStdout(), "revoked %s serial %s (%s)\n", rv.CommonName, rv.Serial, ca.Reason(rv.Reason))
					}
					if id, perr := identity.Parse(a[0]); perr == nil {
						printIdentityRevoked(cmd.OutOrStdout(), id.CommonName())
					}
					if err == nil {
						fmt.Fprintf(cmd.OutOrStdout(), "CRL rebuilt: %s\n", c.Config().CRLPath())
					}
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, affiliationChanged, privilegeWithdrawn, ...")
	addJSON(cmd, g)
	return cmd
}

func caCRLCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "crl",
		Short: "Rebuild and sign the CRL",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				crls, err := c.RebuildCRL(cmd.Context())
				if err != nil {
					return err
				}
				type crlInfo struct {
					Issuer     string    `json:"issuer"`
					Number     string    `json:"number"`
					Entries    int       `json:"entries"`
					NextUpdate time.Time `json:"next_update"`
				}
				var infos []crlInfo
				for _, l := range crls {
					infos = append(infos, crlInfo{l.Issuer.CommonName, l.Number.String(), len(l.RevokedCertificateEntries), l.NextUpdate.UTC()})
				}
				if g.jsonOut {
					return printJSON(cmd.OutOrStdout(), infos)
				}
				for _, i := range infos {
					fmt.Fprintf(cmd.OutOrStdout(), "CRL #%s by %s: %d revoked, next update %s\n", i.Number, i.Issuer, i.Entries, i.NextUpdate.Format(time.RFC3339))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", c.Config().CRLPath())
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func caVerifyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify <cert.pem>",
		Short: "Check a certificate: chain, revocation, expiry and identity",
		Long:  "Check a certificate: chain, revocation, expiry and identity. Exits 0 when it may be used, 1 otherwise.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			data, err := os.ReadFile(a[0])
			if err != nil {
				return err
			}
			certs, err := pemfile.ParseCerts(data)
			if err != nil {
				return fmt.Errorf("%s: %w", a[0], err)
			}
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				v, err := c.Verify(cmd.Context(), certs)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if g.jsonOut {
					if err := printJSON(w, verdictOf(v)); err != nil {
						return err
					}
				} else {
					verdict := "OK"
					if !v.OK() {
						verdict = "REJECTED"
					}
					fmt.Fprintf(w, "%s: %s is %s\n", verdict, v.Subject, v.Status)
					fmt.Fprintf(w, "  serial   %s\n  expires  %s\n", v.Serial, v.NotAfter.Format(time.RFC3339))
					if v.Identity != "" {
						fmt.Fprintf(w, "  identity %s\n", v.Identity)
					}
					if v.Problem != "" {
						fmt.Fprintf(w, "  problem  %s\n", v.Problem)
					}
				}
				if !v.OK() {
					return exitError{1}
				}
				return nil
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func caListCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every issued certificate with its status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withCA(cmd.Context(), func(c *ca.CA) error {
				list, err := c.List(cmd.Context())
				if err != nil {
					return err
				}
				if g.jsonOut {
					type row struct {
						CommonName  string     `json:"common_name"`
						Kind        string     `json:"kind"`
						Serial      string     `json:"serial"`
						Status      ca.Status  `json:"status"`
						NotAfter    time.Time  `json:"not_after"`
						Fingerprint string     `json:"fingerprint_sha256"`
						SANs        []string   `json:"sans,omitempty"`
						RevokedAt   *time.Time `json:"revoked_at,omitempty"`
						Reason      string     `json:"reason,omitempty"`
					}
					rows := make([]row, 0, len(list))
					for _, l := range list {
						rows = append(rows, row{l.CommonName, l.Kind, l.Serial, l.Status, l.NotAfter, l.Fingerprint, l.SANs, l.RevokedAt, l.Reason})
					}
					return printJSON(cmd.OutOrStdout(), rows)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tKIND\tSTATUS\tEXPIRES\tSERIAL")
				for _, l := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.CommonName, l.Kind, l.Status, l.NotAfter.Format("2006-01-02"), l.Serial)
				}
				return tw.Flush()
			})
		},
	}
	addJSON(cmd, g)
	return cmd
}

func caAuditCmd(g *globals) *cobra.Command {
	var (
		verify      bool
		checkpoints string
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the hash-chained audit log of CA operations",
		Long: `Show the hash-chained audit log of CA operations.

With --verify, check it instead: the hash chain, and the signed checkpoints
that meshctl and meshd append to audit.checkpoints in the CA directory. The
chain finds an entry edited in place; the checkpoints find a log cut short or
rewritten with every hash recomputed. Entries newer than the last checkpoint,
or a checkpoints file deleted along with them, cannot be checked from this
host: keep a copy of the file elsewhere and verify against it with
--checkpoints.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			st, err := g.openStore(cmd.Context(), cfg, false)
			if err != nil {
				return err
			}
			defer st.Close()
			w := cmd.OutOrStdout()
			if verify {
				// The CA directory's own file may not exist yet; a file
				// named on the command line must.
				path := checkpoints
				if path == "" {
					path = cfg.CheckpointsPath()
				}
				p := g.progress(cmd)
				rep, err := ca.VerifyLog(cmd.Context(), cfg, st, checkpoints, func(n, total int) { p.Count("verified audit entries", n, total) })
				p.Done()
				if errors.Is(err, store.ErrAuditTampered) {
					return fmt.Errorf("%w (keep %s and %s as they are, for the investigation)", err, cfg.StorePath(), path)
				}
				if err != nil {
					return err
				}
				if g.jsonOut {
					out := auditReport{Intact: true, Entries: rep.Entries, Head: rep.Head, CheckpointsFile: path, Checkpoints: rep.Checkpoints}
					if rep.Checkpoints > 0 {
						n := rep.Newest
						out.Newest = &checkpoint{Seq: n.Seq, Hash: n.Hash, Time: n.Time.UTC(), KeyID: n.KeyID}
					}
					return printJSON(w, out)
				}
				fmt.Fprintf(w, "audit log intact: %d entries, head %s\n", rep.Entries, cmp.Or(rep.Head, "(empty)"))
				switch {
				case rep.File == "":
					fmt.Fprintf(w, "no checkpoints yet (%s); the chain alone was checked\n", path)
				case rep.Checkpoints == 0:
					fmt.Fprintf(w, "%s holds no checkpoints; the chain alone was checked\n", path)
				default:
					fmt.Fprintf(w, "%d checkpoints verified (%s); the newest vouches for entries 1 to %d, signed %s by intermediate %s\n",
						rep.Checkpoints, path, rep.Newest.Seq, rep.Newest.Time.Format(time.RFC3339), rep.Newest.KeyID)
					if n := int64(rep.Entries); n > rep.Newest.Seq {
						fmt.Fprintf(w, "entries %d to %d are newer: the chain alone covers them until the next checkpoint\n", rep.Newest.Seq+1, n)
					}
				}
				return nil
			}
			log, err := st.AuditLog(cmd.Context())
			if err != nil {
				return err
			}
			if g.jsonOut {
				return printJSON(w, auditEntries(log))
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tACTION\tIDENTITY\tOUTCOME\tDETAIL")
			for _, e := range log {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.UTC().Format(time.RFC3339), e.Action, e.Identity, e.Outcome, e.Detail)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&verify, "verify", false, "check the hash chain and the signed checkpoints instead of printing the log")
	cmd.Flags().StringVar(&checkpoints, "checkpoints", "", "with --verify: the checkpoints file to check against, e.g. a copy kept off this host (default <ca-dir>/audit.checkpoints)")
	addJSON(cmd, g)
	return cmd
}
