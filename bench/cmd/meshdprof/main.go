// Command meshdprof runs meshd in-process, set up as cmd/meshd sets it up
// over an existing mesh CA (one SQLite store for the CA and the registry,
// the localca backend), and writes a CPU profile of it until SIGINT/SIGTERM
// or -max-time. meshd has no pprof endpoint; this is how the benchmark
// gets profile evidence for meshd's hot path under hbload.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlite"
)

func main() {
	var (
		rootDir, caDir, dataDir = flag.String("root-dir", "", "root CA directory"), flag.String("ca-dir", "", "CA directory"), flag.String("data-dir", "", "data directory (admin socket)")
		listen                  = flag.String("listen", "127.0.0.1:0", "agent port (127.0.0.1 only)")
		cert, key               = flag.String("tls-cert", "", "agent port certificate"), flag.String("tls-key", "", "agent port key")
		cpuProfile              = flag.String("cpuprofile", "", "write a CPU profile here")
		maxTime                 = flag.Duration("max-time", 5*time.Minute, "stop by itself after this long")
	)
	flag.Parse()
	benchmesh.Main("meshdprof", *maxTime, func(ctx context.Context) error {
		return run(ctx, *rootDir, *caDir, *dataDir, *listen, *cert, *key, *cpuProfile)
	})
}

func run(ctx context.Context, rootDir, caDir, dataDir, listen, cert, key, cpuProfile string) error {
	if host, _, err := net.SplitHostPort(listen); err != nil || host != "127.0.0.1" {
		return fmt.Errorf("-listen %s: a benchmark server binds 127.0.0.1 only", listen)
	}
	cfg := ca.Config{RootDir: rootDir, Dir: caDir}
	st, err := sqlite.Open(ctx, cfg.StorePath())
	if err != nil {
		return err
	}
	defer st.Close()
	authority, err := ca.Open(ctx, cfg, st)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := server.New(ctx, server.Config{Listen: listen, AdminSocket: filepath.Join(dataDir, "admin.sock"),
		TLSMode: server.TLSStrict, CertFile: cert, KeyFile: key, Backends: []string{server.BackendLocalCA}, Logger: log,
		// Issuance is what bench/renew.sh measures: no per-node rate.
		AgentCertBurst: 1 << 30, AgentCertInterval: time.Nanosecond}, st, authority)
	if err != nil {
		return err
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	fmt.Printf("addr=%s\n", srv.AgentAddr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
