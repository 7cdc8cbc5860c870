// Package pgtest gives tests a real PostgreSQL: the one
// MESHTRUST_POSTGRES_URL names, or one that scripts/postgres.sh installs
// (apt) and starts on 127.0.0.1 for the test binary. Without PostgreSQL the
// tests that need it skip, unless MESHTRUST_REQUIRE_POSTGRES is set, as CI
// sets it: there they fail.
package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a PostgreSQL server for tests.
type Server struct {
	// URL is the DSN of its database meshtrust.
	URL string
	// dir is where scripts/postgres.sh keeps it; "" for a server named by
	// MESHTRUST_POSTGRES_URL, which tests cannot stop.
	dir string
}

// script is scripts/postgres.sh, found from this file.
func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "scripts", "postgres.sh")
}

// Start returns a server for tb: MESHTRUST_POSTGRES_URL's, or a new one
// started by scripts/postgres.sh and stopped when tb ends. It skips tb
// when PostgreSQL is not installed, unless MESHTRUST_REQUIRE_POSTGRES is
// set.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if u := os.Getenv("MESHTRUST_POSTGRES_URL"); u != "" {
		return &Server{URL: u}
	}
	if _, err := run(nil, "bin"); err != nil {
		if os.Getenv("MESHTRUST_REQUIRE_POSTGRES") != "" {
			tb.Fatalf("no PostgreSQL and MESHTRUST_REQUIRE_POSTGRES is set: install it with scripts/postgres.sh install (%v)", err)
		}
		tb.Skipf("no PostgreSQL: install it with scripts/postgres.sh install, or set MESHTRUST_POSTGRES_URL (%v)", err)
	}
	s := &Server{dir: tb.TempDir()}
	if err := s.start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if _, err := run(nil, "stop", s.dir, "--purge"); err != nil {
			tb.Errorf("stop PostgreSQL: %v", err)
		}
	})
	return s
}

func (s *Server) start() error {
	// Should the test binary die (a timeout), the server goes with it.
	out, err := run([]string{fmt.Sprintf("POSTGRES_SH_PARENT=%d", os.Getpid())}, "start", s.dir)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && k == "MESHTRUST_POSTGRES_URL" {
			s.URL = v
		}
	}
	if s.URL == "" {
		return fmt.Errorf("scripts/postgres.sh start printed no MESHTRUST_POSTGRES_URL:\n%s", out)
	}
	return nil
}

// Restartable reports whether the test may stop and start the server.
func (s *Server) Restartable() bool { return s.dir != "" }

// Stop shuts the server down (fast shutdown); its data stays.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if !s.Restartable() {
		tb.Fatal("the server MESHTRUST_POSTGRES_URL names cannot be stopped by a test")
	}
	if _, err := run(nil, "stop", s.dir); err != nil {
		tb.Fatal(err)
	}
}

// Restart starts the stopped server again, at the same URL with its data.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.start(); err != nil {
		tb.Fatal(err)
	}
}

// Schema creates a fresh schema for tb and returns the server's URL with
// search_path set to it, so every test (and every "directory" of the
// conformance suite) has a database state of its own on one server.
func (s *Server) Schema(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		tb.Fatalf("connect to the test PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	u, err := url.Parse(s.URL)
	if err != nil {
		tb.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// run runs scripts/postgres.sh with args and returns its standard output.
func run(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script()}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("scripts/postgres.sh %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
