// Command rekey measures forced re-keying (package bench/rekey): a fleet
// of enrolled nodes with their agents heartbeating to meshd on loopback,
// an intermediate tainted, and the time until the last node and agent
// re-keyed, with the heartbeats refused meanwhile; the run ends by
// revoking the old intermediate without --force and reports whether that
// was accepted (Revoked in -json).
//
//	go run ./bench/cmd/rekey -nodes 1000 -agents 4
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/bench/rekey"
)

func main() {
	var (
		cfg     rekey.Config
		limit   time.Duration
		jsonOut bool
		tmp     string
	)
	flag.IntVar(&cfg.Nodes, "nodes", 1000, "enrolled nodes")
	flag.IntVar(&cfg.Agents, "agents", 4, "agents per node")
	flag.DurationVar(&cfg.Interval, "interval", time.Second, "each agent's heartbeat interval")
	flag.DurationVar(&cfg.TaintWindow, "window", 10*time.Second, "the CA's taint window, over which meshd spreads the renewals")
	flag.DurationVar(&cfg.Timeout, "timeout", 0, "most time for the re-keying after the taint (0: window + 1m)")
	flag.IntVar(&cfg.Parallel, "parallel", 16, "concurrent requests while enrolling the fleet")
	flag.DurationVar(&limit, "limit", 15*time.Minute, "most time for the whole run")
	flag.BoolVar(&jsonOut, "json", false, "print the result as JSON")
	flag.StringVar(&tmp, "tmp", "", "where the run's CA directory and store go (default the system's temp dir; /dev/shm leaves fsync out of it)")
	flag.Parse()
	benchmesh.Main("rekey", limit, func(ctx context.Context) error {
		dir, err := os.MkdirTemp(tmp, "rekey")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		res, err := rekey.Run(ctx, dir, cfg)
		if err != nil {
			return err
		}
		if jsonOut {
			return json.NewEncoder(os.Stdout).Encode(res)
		}
		fmt.Println(res)
		return nil
	})
}
