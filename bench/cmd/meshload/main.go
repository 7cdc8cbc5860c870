// Command meshload runs the live-agent load harness (package bench/load)
// against a meshd process built from this repository: -agents agents, each
// with its own certificate and kept-alive connection, heartbeating as MCP
// Mesh's agents do for -duration while one random live agent is revoked
// every -revoke-every. It prints a Markdown table for BENCHMARKS.md and
// writes the full result as JSON to -out.
//
//	go run ./bench/cmd/meshload -agents 10000 -duration 10m -out load.json
//	go run ./bench/cmd/meshload -agents 10000 -duration 10m -replicas 2 -out load-pg.json
//
// With -replicas 2 the two meshd replicas share one PostgreSQL:
// MESHTRUST_POSTGRES_URL's, or one scripts/postgres.sh starts for the run
// (run from the repository root); each run gets a schema of its own.
// Without -meshd it builds cmd/meshd into the run's directory first.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/bench/load"
)

func main() {
	var (
		cfg      load.Config
		out, tmp string
	)
	flag.StringVar(&cfg.Meshd, "meshd", "", "meshd binary to run (default: go build ./cmd/meshd into the run's directory)")
	flag.IntVar(&cfg.Agents, "agents", 1000, "live agents, each with its own certificate and connection")
	flag.DurationVar(&cfg.Duration, "duration", time.Minute, "how long the agents heartbeat once registered")
	flag.DurationVar(&cfg.Interval, "interval", 5*time.Second, "each agent's heartbeat interval (jittered ±10%)")
	flag.DurationVar(&cfg.RevokeEvery, "revoke-every", time.Second, "how often a random live agent is revoked (negative: never)")
	flag.Float64Var(&cfg.ChangeRate, "change-rate", 0.01, "share of cycles in which an agent's tools change (a POST)")
	flag.Float64Var(&cfg.Providers, "providers", 0.03, "share of the agents offering a shared capability; every agent depends on one or two (negative: no dependencies)")
	flag.IntVar(&cfg.Capabilities, "capabilities", 20, "how many shared capabilities the providers offer")
	flag.IntVar(&cfg.Replicas, "replicas", 1, "1: one meshd on SQLite; 2: two replicas on one PostgreSQL")
	flag.IntVar(&cfg.Parallel, "parallel", 32, "concurrent issuances and handshakes while setting up")
	flag.Func("meshd-env", "KEY=VALUE added to meshd's environment (GOGC=50, GOMEMLIMIT=...); repeatable", func(kv string) error {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("%q is not KEY=VALUE", kv)
		}
		cfg.Env = append(cfg.Env, kv)
		return nil
	})
	flag.StringVar(&out, "out", "meshload.json", "write the result here as JSON (empty: do not)")
	flag.StringVar(&tmp, "tmp", "", "where the run's directory goes (default the system's temp dir)")
	flag.Parse()
	cfg.Progress = os.Stderr
	limit := cfg.Duration + 30*time.Minute // setup of the largest runs, and stopping
	benchmesh.Main("meshload", limit, func(ctx context.Context) error {
		dir, err := os.MkdirTemp(tmp, "meshload")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if cfg.Meshd == "" {
			cfg.Meshd = filepath.Join(dir, "meshd")
			build := exec.CommandContext(ctx, "go", "build", "-o", cfg.Meshd, "./cmd/meshd")
			build.Stdout, build.Stderr = os.Stderr, os.Stderr
			if err := build.Run(); err != nil {
				return fmt.Errorf("go build ./cmd/meshd (run from the repository root, or give -meshd): %w", err)
			}
		}
		if cfg.Replicas > 1 {
			dsn, stop, err := benchmesh.PostgresURL(ctx)
			if err != nil {
				return err
			}
			defer stop()
			if cfg.Database, err = benchmesh.Schema(ctx, dsn); err != nil {
				return err
			}
		}
		res, err := load.Run(ctx, filepath.Join(dir, "run"), cfg)
		if err != nil {
			return err
		}
		fmt.Print(res.Table())
		if out != "" {
			b, err := json.MarshalIndent(res, "", "  ")
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
				return err
			}
		}
		return res.Clean()
	})
}
