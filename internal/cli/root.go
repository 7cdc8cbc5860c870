// Package cli implements the meshctl command line.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/config"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/database"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Execute runs meshctl with args, writing to stdout and stderr, and returns
// the process exit code.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := NewRoot()
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	defer ca.CloseTokens()
	if err := cmd.ExecuteContext(ctx); err != nil {
		var ex exitError
		if errors.As(err, &ex) {
			return ex.code
		}
		fmt.Fprintln(stderr, "meshctl:", err)
		return 1
	}
	return 0
}

// exitError ends a command with a code after it has printed its own
// explanation (a failed verification, say).
type exitError struct{ code int }

func (e exitError) Error() string { return "exit " + strconv.Itoa(e.code) }

// globals are the flags every command shares.
type globals struct {
	// The data, root and CA directories, the store and the trust
	// domain: the settings meshd reads too, with the same defaults.
	config.Mesh
	leafTTL         string
	renewAfter      string
	rootTTL, intTTL string
	crlValidity     string
	jsonOut         bool
	keyType         string
	// pkcs11 is the token the CA's keys are on, if any.
	pkcs11 config.PKCS11
	admin  adminFlags
}

// NewRoot returns the meshctl command tree.
func NewRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "meshctl",
		Short:         "Operate a meshtrust mesh: its CA, registry and entities",
		Version:       Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	pf := root.PersistentFlags()
	g.Mesh.Register(pf, config.Help{
		DataDir:     "meshd's data directory; its admin API is the unix socket <data-dir>/admin.sock (env MESHTRUST_DATA_DIR)",
		RootDir:     "root CA directory, kept apart so it can go offline (default <data-dir>/root with --data-dir, as meshd keeps it, else ~/.meshtrust/root; env MESHTRUST_ROOT_DIR)",
		CADir:       "CA directory: intermediate, issued certs, CRL, database (default <data-dir>/ca with --data-dir, as meshd keeps it, else ~/.meshtrust/ca; env MESHTRUST_CA_DIR)",
		Database:    "the store: an SQLite file, or postgres://user:password@host:port/database shared by meshd replicas (default <ca-dir>/meshtrust.db; env DATABASE_URL)",
		TrustDomain: "SPIFFE trust domain, fixed when the first intermediate is issued (env MCP_MESH_TRUST_DOMAIN)",
	})
	g.admin.dataDir = &g.DataDir
	pf.StringVar(&g.leafTTL, "leaf-ttl", "90d", "lifetime of node, agent and client certificates")
	pf.StringVar(&g.renewAfter, "renew-after", "", "age at which a leaf is due for renewal (default 2/3 of --leaf-ttl)")
	pf.StringVar(&g.rootTTL, "root-ttl", "3650d", "lifetime of the root")
	pf.StringVar(&g.intTTL, "intermediate-ttl", "1825d", "lifetime of an intermediate")
	pf.StringVar(&g.crlValidity, "crl-validity", "7d", "time from a CRL's this-update to its next-update")
	g.pkcs11.Register(pf)
	g.admin.register(pf)
	root.AddCommand(newCACmd(g), newEntityCmd(g), newAgentCmd(g), newPolicyCmd(g), newSessionCmd(g), newStatusCmd(g), newConsoleCmd(g))
	root.AddCommand(newNodeCmds(g)...)
	refuseUnknownSubcommands(root)
	registerCompletions(root, g)
	return root
}

// refuseUnknownSubcommands makes every command that only groups others
// (meshctl, ca, entity, ...) fail on an argument that names none of them.
// cobra checks that for the root alone: `meshctl ca revok x` would print
// ca's help and exit 0, so a typo in a script would pass for success.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, sub := range cmd.Commands() {
		refuseUnknownSubcommands(sub)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() {
		return
	}
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		return unknownCommand(c, args[0])
	}
	// A flag of the intended command (`meshctl token creat --node x`) is
	// unknown to the group; the typo before it is the error to report.
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		if args := c.Flags().Args(); len(args) > 0 {
			return unknownCommand(c, args[0])
		}
		return err
	})
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
}

func unknownCommand(c *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, c.CommandPath())
	c.SuggestionsMinimumDistance = 2
	if s := c.SuggestionsFor(name); len(s) > 0 {
		return fmt.Errorf("%s; did you mean %s?", msg, strings.Join(s, " or "))
	}
	return fmt.Errorf("%s; run '%s --help' for its commands", msg, c.CommandPath())
}

// Version is the version of the running binary, as the Go toolchain
// recorded it, followed by the Go version: the module version (go build in
// a git work tree records a pseudo-version naming the revision, "+dirty"
// when the tree had changes), else the VCS revision alone, else "devel".
func Version() string {
	v := "devel"
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v + " " + runtime.Version()
	}
	if mv := info.Main.Version; mv != "" && mv != "(devel)" {
		v = mv
	} else {
		var rev, modified string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			v = rev[:min(len(rev), 12)]
			if modified == "true" {
				v += "-dirty"
			}
		}
	}
	return v + " " + info.GoVersion
}

// caDirs are the root and CA directories the command works on: the ones
// named by --root-dir and --ca-dir (or their variables); without them, the
// ones in the data dir, as meshd keeps them; without a data dir either,
// ~/.meshtrust. from says where the CA directory came from, for messages.
func (g *globals) caDirs() (rootDir, caDir, from string) {
	base := ".meshtrust"
	if home, err := os.UserHomeDir(); err == nil {
		base = filepath.Join(home, ".meshtrust")
	}
	rootDir, caDir = g.Mesh.Dirs(base)
	switch {
	case g.CADir != "":
		from = "--ca-dir"
	case g.DataDir != "":
		from = "--data-dir"
	default:
		from = "the default"
	}
	return rootDir, caDir, from
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// ParseDuration is time.ParseDuration that also accepts whole days ("90d").
func ParseDuration(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 90d, 36h, 30m)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 90d, 36h, 30m)", s)
	}
	return d, nil
}

// config builds the CA configuration from the flags.
func (g *globals) config() (ca.Config, error) {
	rootDir, caDir, _ := g.caDirs()
	cfg := ca.Config{RootDir: rootDir, Dir: caDir, TrustDomain: g.TrustDomain}
	var err error
	if cfg.KeyType, err = ca.ParseKeyType(g.keyType); err != nil {
		return cfg, err
	}
	for _, d := range []struct {
		s   string
		dst *time.Duration
	}{
		{g.leafTTL, &cfg.LeafTTL}, {g.renewAfter, &cfg.RenewAfter}, {g.rootTTL, &cfg.RootTTL},
		{g.intTTL, &cfg.IntermediateTTL}, {g.crlValidity, &cfg.CRLValidity},
	} {
		if d.s == "" {
			continue
		}
		if *d.dst, err = ParseDuration(d.s); err != nil {
			return cfg, err
		}
	}
	if cfg.RenewAfter > cfg.LeafTTL {
		return cfg, fmt.Errorf("--renew-after %s is beyond --leaf-ttl %s", g.renewAfter, g.leafTTL)
	}
	if cfg.PKCS11, err = g.pkcs11.Resolve(os.Getenv); err != nil {
		return cfg, err
	}
	// A configured token is opened now: a wrong PIN or a missing token
	// stops the command before it touches anything.
	if cfg.PKCS11.Configured() {
		if err := ca.OpenToken(cfg.PKCS11); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// openStore opens the CA directory's store (--database, DATABASE_URL,
// or the one the directory records; see database.Open), creating the CA
// directory when create is set.
func (g *globals) openStore(ctx context.Context, cfg ca.Config, create bool) (store.Store, error) {
	if create {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(cfg.Dir); err != nil {
		return nil, g.noCA(fmt.Errorf("CA directory %s: %w", cfg.Dir, err))
	}
	return database.Open(ctx, cfg.Dir, g.DatabaseOrEnv(), database.Options{CAExists: pemfile.Exists(cfg.BundlePath())})
}

// noCA explains a CA directory without a CA: where meshctl looked and why
// there, and how to point it at the CA that exists rather than create a
// second one.
func (g *globals) noCA(err error) error {
	_, dir, from := g.caDirs()
	switch from {
	case "--data-dir":
		return fmt.Errorf("%w: %w; it is the CA directory of --data-dir %s, where meshd keeps the mesh CA (meshd --dev creates it on first start). Is that meshd's data dir? If its CA lives elsewhere, pass --ca-dir and --root-dir",
			ca.ErrNotInitialized, err, g.DataDir)
	case "the default":
		return fmt.Errorf("%w: %w; it is the default CA directory. To use meshd's CA, pass --data-dir <meshd's data dir> (or --ca-dir <its CA dir>); to create a CA here, run `meshctl ca init` and `meshctl ca issue-intermediate`",
			ca.ErrNotInitialized, err)
	}
	return fmt.Errorf("%w: %w (run `meshctl ca init` and `meshctl ca issue-intermediate` to create a CA in %s, or set --ca-dir / MESHTRUST_CA_DIR to the one that exists)", ca.ErrNotInitialized, err, dir)
}

// withCA opens the store and the CA for the duration of fn. When fn
// succeeds it checkpoints the audit log, so what the command appended is
// anchored outside the database; a refusal leaves every file alone, and the
// next checkpoint covers its audit entry.
func (g *globals) withCA(ctx context.Context, fn func(*ca.CA) error) error {
	return g.openCA(ctx, func(c *ca.CA, _ store.Store) error {
		if err := fn(c); err != nil {
			return err
		}
		if _, err := c.Checkpoint(ctx); err != nil {
			return fmt.Errorf("the command succeeded, but its audit checkpoint was not written: %w", err)
		}
		return nil
	})
}

// openCA opens the store and the CA for the duration of fn, and writes
// nothing of its own; a directory without a CA is refused before a
// database is created in it.
func (g *globals) openCA(ctx context.Context, fn func(*ca.CA, store.Store) error) error {
	cfg, err := g.config()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "intermediate", "state.json")); err != nil {
		return g.noCA(fmt.Errorf("no intermediate in %s", cfg.Dir))
	}
	st, err := g.openStore(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer st.Close()
	c, err := ca.Open(ctx, cfg, st)
	if err != nil {
		return err
	}
	return fn(c, st)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
