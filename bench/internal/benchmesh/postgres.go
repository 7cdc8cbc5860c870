package benchmesh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
)

// PostgresURL returns MESHTRUST_POSTGRES_URL, or starts a server with
// scripts/postgres.sh and returns its URL and how to stop it.
func PostgresURL(ctx context.Context) (string, func(), error) {
	if u := os.Getenv("MESHTRUST_POSTGRES_URL"); u != "" {
		return u, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "meshtrust-bench-pg")
	if err != nil {
		return "", nil, err
	}
	script := filepath.Join("scripts", "postgres.sh")
	cmd := exec.CommandContext(ctx, "bash", script, "start", dir)
	cmd.Env = append(os.Environ(), fmt.Sprintf("POSTGRES_SH_PARENT=%d", os.Getpid()))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("scripts/postgres.sh start (run from the repository root): %w", err)
	}
	stop := func() {
		exec.Command("bash", script, "stop", dir, "--purge").Run()
		os.RemoveAll(dir)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "MESHTRUST_POSTGRES_URL="); ok {
			return v, stop, nil
		}
	}
	stop()
	return "", nil, errors.New("scripts/postgres.sh printed no URL")
}

// Schema creates a fresh schema and returns dsn with search_path on it.
func Schema(ctx context.Context, dsn string) (string, error) {
	b := make([]byte, 6)
	rand.Read(b)
	name := "bench_" + hex.EncodeToString(b)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		return "", err
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
