package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/meshapi"
)

// Exit codes of `meshctl status`.
const (
	statusHealthy     = 0
	statusAttention   = 1
	statusUnreachable = 2
)

func newStatusCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Is my mesh healthy? meshd, CA, CRL, agents, certificates due, audit log, change feed on one screen",
		Long: `Ask meshd's admin API (GET /admin/status) whether the mesh is healthy and print
one line per part: meshd (version, uptime, health), the CA (root and
intermediates, days left), the CRL (number, age), live agents, certificates
due for renewal, the audit log (meshd verifies the whole chain and its signed
checkpoints for this request), and the change feed.

A line starts with ✓ (fine), ! (needs attention soon) or ✗ (broken now); what
needs attention is named below the lines.

Exit status: 0 healthy, 1 something needs attention (or meshd could not
compute its status), 2 meshd could not be reached or refused the caller.`,
		Example: `  meshctl --data-dir ./meshtrust-data status
  meshctl --data-dir ./meshtrust-data status --json | jq .problems`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient(cmd)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "meshctl:", err)
				return exitError{statusUnreachable}
			}
			defer c.Close()
			var st meshapi.Status
			data, err := c.call(cmd.Context(), http.MethodGet, meshapi.PathAdminStatus, nil, &st)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "meshctl:", err)
				// meshd answered but could not say (its database away, a
				// 5xx): something needs attention. Not reached, or refused
				// (not an admin identity): no status to judge.
				if ae, answered := errors.AsType[*apiError](err); answered && ae.Status != http.StatusUnauthorized && ae.Status != http.StatusForbidden {
					return exitError{statusAttention}
				}
				return exitError{statusUnreachable}
			}
			if g.jsonOut {
				if err := printRaw(cmd.OutOrStdout(), data); err != nil {
					return err
				}
			} else {
				printStatus(cmd.OutOrStdout(), c.where, st, terminal(cmd.OutOrStdout()))
			}
			if len(st.Problems) > 0 {
				return exitError{statusAttention}
			}
			return nil
		},
	}
	addJSON(cmd, g)
	return cmd
}

// printStatus writes st as aligned lines, each with its marker; colour
// only on a terminal.
func printStatus(w io.Writer, where string, st meshapi.Status, colour bool) {
	worst := map[string]string{}
	for _, p := range st.Problems {
		if worst[p.Component] != meshapi.SeverityError {
			worst[p.Component] = p.Severity
		}
	}
	mark := func(component string) string {
		m, c := "✓", "\x1b[32m"
		switch worst[component] {
		case meshapi.SeverityError:
			m, c = "✗", "\x1b[31m"
		case meshapi.SeverityWarning:
			m, c = "!", "\x1b[33m"
		}
		if colour {
			return c + m + "\x1b[0m"
		}
		return m
	}
	line := func(component, label, format string, args ...any) {
		fmt.Fprintf(w, "%s %-13s %s\n", mark(component), label, fmt.Sprintf(format, args...))
	}
	more := func(format string, args ...any) { fmt.Fprintf(w, "  %-13s %s\n", "", fmt.Sprintf(format, args...)) }
	day := func(t time.Time) string { return t.UTC().Format("2006-01-02") }

	line(meshapi.ComponentHealth, "meshd", "reachable at %s, version %s, up %s, %s", where, st.Version, (time.Duration(st.UptimeSeconds) * time.Second).String(), st.Health)
	for _, d := range st.Degraded {
		more("degraded: %s (%s) since %s", d.Component, d.Reason, d.Since.UTC().Format(time.RFC3339))
	}
	if st.CA != nil {
		line(meshapi.ComponentCA, "CA", "root %s, ends %s (%d days)", st.CA.Root.Subject, day(st.CA.Root.NotAfter), st.CA.Root.DaysLeft)
		more("active intermediate %s, ends %s (%d days)", st.CA.Active.Subject, day(st.CA.Active.NotAfter), st.CA.Active.DaysLeft)
		if p := st.CA.Prepared; p != nil {
			more("prepared intermediate %s, ends %s (%d days)", p.Subject, day(p.NotAfter), p.DaysLeft)
		}
	} else {
		line(meshapi.ComponentCA, "CA", "none: this meshd has no mesh CA")
	}
	if crl := st.CRL; crl != nil {
		line(meshapi.ComponentCRL, "CRL", "number %s, signed %s ago, next update %s", crl.Number, (time.Duration(crl.AgeSeconds) * time.Second).String(), crl.NextUpdate.UTC().Format(time.RFC3339))
	} else if st.CA != nil {
		line(meshapi.ComponentCRL, "CRL", "none of the active intermediate")
	}
	a := st.Agents
	line("agents", "agents", "%d live (%s)", a.Total-a.ByStatus["evicted"], counts(a.ByStatus))
	if len(a.ByEntity) > 0 {
		more("by entity: %s", groups(a.ByEntity, "mesh"))
		more("by source: %s", groups(a.BySource, "no certificate"))
	}
	if c := st.Certificates; c != nil {
		line(meshapi.ComponentCertificates, "certificates", "%d live, %d due for renewal, %d end within %d days", c.Live, c.RenewalDue, c.ExpiringSoon, c.ExpiringWithinDays)
		for _, d := range c.Due {
			more("due: %s (serial %s) ends %s", d.CommonName, d.Serial, d.NotAfter.UTC().Format(time.RFC3339))
		}
		if n := c.RenewalDue - len(c.Due); n > 0 {
			more("… and %d more (meshctl ca list)", n)
		}
	}
	au := st.Audit
	how := "verified by meshd on its own"
	if au.OnRequest {
		how = "verified for this request"
	}
	if au.OK {
		line(meshapi.ComponentAudit, "audit log", "intact: %d entries, %d checkpoint(s) match, %s at %s", au.Entries, au.Checkpoints, how, au.VerifiedAt.UTC().Format(time.RFC3339))
	} else {
		line(meshapi.ComponentAudit, "audit log", "does not verify (%s at %s): %s", how, au.VerifiedAt.UTC().Format(time.RFC3339), au.Error)
	}
	last := "never read"
	if st.Feed.LastPoll != nil {
		last = fmt.Sprintf("read %s ago", (time.Duration(st.Feed.SinceLastPollSeconds * float64(time.Second))).Round(time.Millisecond))
	}
	line(meshapi.ComponentFeed, "change feed", "%d pending, %s", st.Feed.Pending, last)
	if len(st.Problems) == 0 {
		fmt.Fprintln(w, "\nhealthy")
		return
	}
	fmt.Fprintln(w, "\nneeds attention:")
	for _, p := range st.Problems {
		m := "!"
		if p.Severity == meshapi.SeverityError {
			m = "✗"
		}
		fmt.Fprintf(w, "%s %s: %s\n", m, p.Component, p.Message)
	}
}

// counts prints m as "name n, name n", by name.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// groups prints gs as "name n, name n", the name "" as unnamed.
func groups(gs []meshapi.StatusGroup, unnamed string) string {
	var parts []string
	for _, g := range gs {
		parts = append(parts, fmt.Sprintf("%s %d", cmp.Or(g.Name, unnamed), g.Agents))
	}
	return strings.Join(parts, ", ")
}
