package cli

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// completionTimeout bounds one dynamic completion: a shell waits for it
// on every tab, so a meshd that does not answer (or a database that
// hangs) must cost a moment, never the prompt.
const completionTimeout = 2 * time.Second

// complete answers a shell's completion request with the names list
// returns that start with toComplete ("name" or "name\tdescription"). A
// failure, or no answer within completionTimeout, suggests nothing; it is
// never printed (the shell would show it as a candidate), and file names
// are never suggested in its place. The lookup runs on its own goroutine,
// so one that ignores its context cannot hold the shell either.
func complete(cmd *cobra.Command, toComplete string, list func(ctx context.Context) ([]string, error)) ([]string, cobra.ShellCompDirective) {
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, completionTimeout)
	defer cancel()
	done := make(chan []string, 1) // buffered: an abandoned lookup never blocks
	go func() {
		names, err := list(ctx)
		if err != nil {
			names = nil
		}
		done <- names
	}()
	var names []string
	select {
	case names = <-done:
	case <-ctx.Done():
	}
	out := []string{}
	for _, n := range names {
		if strings.HasPrefix(n, toComplete) {
			out = append(out, n)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// firstArg completes a command's first argument with list, and nothing
// after it.
func firstArg(list func(g *globals, cmd *cobra.Command, ctx context.Context) ([]string, error), g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return complete(cmd, toComplete, func(ctx context.Context) ([]string, error) { return list(g, cmd, ctx) })
	}
}

// adminGet reads path from the admin API the flags name into out.
func (g *globals) adminGet(ctx context.Context, cmd *cobra.Command, path string, out any) error {
	c, err := g.adminClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.call(ctx, http.MethodGet, path, nil, out)
	return err
}

// agentIDs lists the ids of the agents meshd holds (GET /admin/agents),
// with their status.
func agentIDs(g *globals, cmd *cobra.Command, ctx context.Context) ([]string, error) {
	var list struct {
		Agents []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"agents"`
	}
	if err := g.adminGet(ctx, cmd, meshapi.PathAdminAgents, &list); err != nil {
		return nil, err
	}
	var out []string
	for _, a := range list.Agents {
		out = append(out, a.ID+"\t"+a.Status)
	}
	slices.Sort(out)
	return out, nil
}

// activeEntities lists the entities meshd trusts (GET /admin/entities),
// with their trust source; revoked ones are left out.
func activeEntities(g *globals, cmd *cobra.Command, ctx context.Context) ([]string, error) {
	var list meshapi.EntityList
	if err := g.adminGet(ctx, cmd, meshapi.PathAdminEntities, &list); err != nil {
		return nil, err
	}
	var out []string
	for _, e := range list.Entities {
		if e.Status != "revoked" {
			out = append(out, e.Name+"\t"+e.Source)
		}
	}
	return out, nil
}

// revocable lists what `ca revoke` takes: the identities that hold a
// live certificate, then the serials of those certificates (described by
// their identity), from the CA's store.
func revocable(g *globals, _ *cobra.Command, ctx context.Context) ([]string, error) {
	var names, serials []string
	err := g.openCA(ctx, func(c *ca.CA, _ store.Store) error {
		listed, err := c.List(ctx)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, l := range listed {
			if l.Kind == "intermediate" || (l.Status != ca.StatusValid && l.Status != ca.StatusExpiring) {
				continue
			}
			serials = append(serials, l.Serial+"\t"+l.CommonName)
			if !seen[l.CommonName] {
				seen[l.CommonName] = true
				names = append(names, l.CommonName+"\tidentity")
			}
		}
		return nil
	})
	slices.Sort(names)
	return append(names, serials...), err
}

// revokedIdentities lists what `ca reinstate` takes: the revoked
// identities in the CA's store.
func revokedIdentities(g *globals, _ *cobra.Command, ctx context.Context) ([]string, error) {
	var out []string
	err := g.openCA(ctx, func(_ *ca.CA, st store.Store) error {
		revoked, err := st.RevokedIdentities(ctx)
		for _, r := range revoked {
			out = append(out, r.Name+"\trevoked "+r.RevokedAt.UTC().Format("2006-01-02"))
		}
		return err
	})
	return out, err
}

// revocationReasons completes --reason of `ca revoke`.
func revocationReasons(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []string
	for _, r := range ca.Reasons() {
		if strings.HasPrefix(strings.ToLower(r), strings.ToLower(toComplete)) {
			out = append(out, r)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// registerCompletions attaches the dynamic completions to the commands
// that take an agent id, an entity name, a serial or an identity.
func registerCompletions(root *cobra.Command, g *globals) {
	args := map[string]cobra.CompletionFunc{
		"agent release": firstArg(agentIDs, g),
		"entity revoke": firstArg(activeEntities, g),
		"entity rotate": firstArg(activeEntities, g),
		"ca revoke":     firstArg(revocable, g),
		"ca reinstate":  firstArg(revokedIdentities, g),
	}
	for path, fn := range args {
		cmd, _, err := root.Find(strings.Fields(path))
		if err != nil || cmd == root {
			panic("meshctl: no command " + path + " to complete") // a renamed command; caught by the tests
		}
		cmd.ValidArgsFunction = fn
	}
	if cmd, _, err := root.Find([]string{"ca", "revoke"}); err == nil {
		_ = cmd.RegisterFlagCompletionFunc("reason", revocationReasons)
	}
}
