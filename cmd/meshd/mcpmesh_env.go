package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store/database"
)

// MCP Mesh's registry reads its settings from the environment. meshd
// honours each with the same meaning, or refuses to start naming what to
// use instead: a setting an MCP Mesh operator relies on is never silently
// ignored. The flags win over the variables only when they say the same
// thing; a flag and a variable that disagree are an error.

// mcpmeshEnv applies MCP Mesh's registry variables to o. flags tells which
// flags were given on the command line.
func mcpmeshEnv(o *options, flags *pflag.FlagSet, getenv func(string) string) error {
	for _, apply := range []func(*options, *pflag.FlagSet, func(string) string) error{
		listenEnv, adminPortEnv, adminTLSEnv, requestBodyEnv, databaseURLEnv, livenessEnv, logLevelEnv, tlsCAEnv, unsupportedEnv,
	} {
		if err := apply(o, flags, getenv); err != nil {
			return err
		}
	}
	return nil
}

// listenEnv: HOST and PORT are the agent port's address, default
// localhost:8000 in MCP Mesh; meshd's default is 127.0.0.1:8000.
func listenEnv(o *options, flags *pflag.FlagSet, getenv func(string) string) error {
	host, port := getenv("HOST"), getenv("PORT")
	if host == "" && port == "" {
		return nil
	}
	h, p, err := net.SplitHostPort(o.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	if host != "" {
		h = host
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("PORT=%q is not a port number", port)
		}
		p = port
	}
	addr := net.JoinHostPort(h, p)
	if (flags.Changed("listen") || os.Getenv("MESHD_LISTEN") != "") && addr != o.listen {
		return fmt.Errorf("HOST/PORT say the agent port is %s, --listen (or MESHD_LISTEN) says %s: set one of them", addr, o.listen)
	}
	o.listen = addr
	return nil
}

// adminPortEnv: MCP_MESH_ADMIN_PORT moves the admin routes to their own
// port. MCP Mesh binds it on every interface, in plain HTTP, to anyone;
// meshd binds it on loopback and admits admin identities' certificates
// only (the --admin-listen listener). `--admin-listen 0.0.0.0:<port>`
// opens it on every interface, still to admin identities only.
func adminPortEnv(o *options, flags *pflag.FlagSet, getenv func(string) string) error {
	port := getenv("MCP_MESH_ADMIN_PORT")
	if port == "" {
		return nil
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("MCP_MESH_ADMIN_PORT=%q is not a port number", port)
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	if flags.Changed("admin-listen") {
		if _, p, err := net.SplitHostPort(o.adminListen); err != nil || p != port {
			return fmt.Errorf("MCP_MESH_ADMIN_PORT=%s and --admin-listen %s disagree: set one of them", port, o.adminListen)
		}
		return nil // --admin-listen names the interface
	}
	o.adminListen = addr
	return nil
}

// adminTLSEnv: MCP_MESH_ADMIN_TLS=true serves MCP Mesh's admin port over
// TLS (since 3.7.1). meshd's admin listener is mTLS to admin identities
// whatever it says: true is what meshd does, and false does not turn TLS
// off (a note at start says so). Any other value is refused.
func adminTLSEnv(o *options, _ *pflag.FlagSet, getenv func(string) string) error {
	s := getenv("MCP_MESH_ADMIN_TLS")
	if s == "" {
		return nil
	}
	on, err := parseBool(s)
	if err != nil {
		return fmt.Errorf("MCP_MESH_ADMIN_TLS=%q: want true or false", s)
	}
	if !on {
		o.envNotes = append(o.envNotes, "MCP_MESH_ADMIN_TLS=false is not followed: meshd serves its admin API over mTLS to admin identities only (the unix socket, and the listener MCP_MESH_ADMIN_PORT or --admin-listen opens), never in plain HTTP")
	}
	return nil
}

// parseBool reads MCP Mesh's booleans: true, false, 1, 0, yes, no, any
// case.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "1", "yes":
		return true, nil
	case "false", "0", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", s)
}

// requestBodyEnv: MCP_MESH_MAX_REQUEST_BODY_BYTES bounds every request
// body, 413 above it (MCP Mesh 3.7.1). meshd bounds each route on its own
// already (a heartbeat 1 MiB, /agent-cert 64 KiB): the variable bounds
// every body on every listener to its value, lowering a route's own
// bound, never raising it.
func requestBodyEnv(o *options, _ *pflag.FlagSet, getenv func(string) string) error {
	s := getenv("MCP_MESH_MAX_REQUEST_BODY_BYTES")
	if s == "" {
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("MCP_MESH_MAX_REQUEST_BODY_BYTES=%q: want a whole number of bytes above 0", s)
	}
	o.limits.maxRequestBody = n
	return nil
}

// databaseURLEnv: DATABASE_URL is MCP Mesh's store, a SQLite path or a
// PostgreSQL URL. A PostgreSQL URL is meshd's --database: the database its
// replicas share (meshctl reads DATABASE_URL the same way). Otherwise
// meshd keeps one store, <ca-dir>/meshtrust.db, where meshctl's offline
// commands (ca revoke, entity) find it too, so a SQLite path is honoured
// when it names that file and refused otherwise: meshd neither reads MCP
// Mesh's database (its agents register again within one heartbeat) nor
// keeps its state where meshctl would not look.
func databaseURLEnv(o *options, flags *pflag.FlagSet, getenv func(string) string) error {
	u := getenv("DATABASE_URL")
	if u == "" {
		return nil
	}
	if database.IsPostgres(u) {
		if flags.Changed("database") && o.Database != u {
			return errors.New("DATABASE_URL and --database name different databases: set one of them")
		}
		o.Database = u
		return nil
	}
	m := o.Mesh
	if m.DataDir == "" && o.dev {
		m.DataDir = "meshtrust-data" // as run defaults it
	}
	_, caDir := m.Dirs("")
	want := ca.Config{Dir: caDir}.StorePath()
	path := strings.TrimPrefix(strings.TrimPrefix(u, "sqlite://"), "file:")
	if path == ":memory:" {
		return errors.New("DATABASE_URL=:memory: would lose every revocation and entity at restart; meshd's store is a file: unset DATABASE_URL")
	}
	if samePath(path, want) {
		return nil
	}
	return fmt.Errorf("DATABASE_URL=%s: meshd keeps its store at %s (in the CA directory, where meshctl's offline commands find it), and does not read MCP Mesh's registry database: its agents register again within one heartbeat. Unset DATABASE_URL, or choose the directory with --ca-dir / --data-dir", u, want)
}

func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

// livenessEnv: DEFAULT_TIMEOUT_THRESHOLD is how long (seconds) an agent
// may be silent before it is unhealthy, HEALTH_CHECK_INTERVAL how often
// (seconds) the registry looks for silent agents.
func livenessEnv(o *options, flags *pflag.FlagSet, getenv func(string) string) error {
	for _, v := range []struct {
		env, flag string
		dst       *time.Duration
	}{
		{"DEFAULT_TIMEOUT_THRESHOLD", "heartbeat-timeout", &o.heartbeatTimeout},
		{"HEALTH_CHECK_INTERVAL", "health-check-interval", &o.healthCheckInterval},
	} {
		s := getenv(v.env)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return fmt.Errorf("%s=%q: want a whole number of seconds above 0", v.env, s)
		}
		d := time.Duration(n) * time.Second
		if flags.Changed(v.flag) && *v.dst != d {
			return fmt.Errorf("%s=%s and --%s %s disagree: set one of them", v.env, s, v.flag, *v.dst)
		}
		*v.dst = d
	}
	return nil
}

// logLevelEnv: MCP_MESH_LOG_LEVEL (TRACE, DEBUG, INFO, WARNING, ERROR,
// CRITICAL) and MCP_MESH_DEBUG_MODE, which forces DEBUG.
func logLevelEnv(o *options, flags *pflag.FlagSet, getenv func(string) string) error {
	level := ""
	if s := getenv("MCP_MESH_LOG_LEVEL"); s != "" {
		switch strings.ToUpper(s) {
		case "TRACE", "DEBUG":
			level = "debug"
		case "INFO":
			level = "info"
		case "WARNING", "WARN":
			level = "warn"
		case "ERROR", "CRITICAL":
			level = "error"
		default:
			return fmt.Errorf("MCP_MESH_LOG_LEVEL=%q: want TRACE, DEBUG, INFO, WARNING, ERROR or CRITICAL", s)
		}
	}
	if s := getenv("MCP_MESH_DEBUG_MODE"); s != "" {
		on, err := parseBool(s)
		if err != nil {
			return fmt.Errorf("MCP_MESH_DEBUG_MODE=%q: want true or false", s)
		}
		if on {
			level = "debug"
		}
	}
	if level == "" {
		return nil
	}
	if flags.Changed("log-level") && o.logLevel != level {
		return fmt.Errorf("MCP_MESH_LOG_LEVEL/MCP_MESH_DEBUG_MODE say %s, --log-level says %s: set one of them", level, o.logLevel)
	}
	o.logLevel = level
	return nil
}

// tlsCAEnv: MCP_MESH_TLS_CA names the CA certificates agents verify the
// registry with. MCP Mesh's registry does not read it; meshd refuses to
// start when it names no readable PEM certificate, so an agent set up
// from the same variables does not fail later, one handshake at a time.
func tlsCAEnv(_ *options, _ *pflag.FlagSet, getenv func(string) string) error {
	path := getenv("MCP_MESH_TLS_CA")
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("MCP_MESH_TLS_CA: %w: point it at the CA certificate (PEM) agents verify meshd with, or unset it", err)
	}
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return fmt.Errorf("MCP_MESH_TLS_CA=%s holds no PEM certificate", path)
		}
		if b.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(b.Bytes); err != nil {
				return fmt.Errorf("MCP_MESH_TLS_CA=%s: %w", path, err)
			}
			return nil
		}
	}
}

// unsupportedEnv refuses MCP Mesh's registry settings of features meshd
// does not have, each with what to do.
func unsupportedEnv(_ *options, _ *pflag.FlagSet, getenv func(string) string) error {
	for _, v := range []struct{ env, why string }{
		{"MCP_MESH_RETENTION", "meshd keeps an unhealthy agent, listed as unhealthy, until it registers again or is deleted (DELETE /agents/{id}, meshctl agent release); it has no retention sweep"},
		{"MCP_MESH_SWEEP_INTERVAL", "meshd has no retention sweep (see MCP_MESH_RETENTION); HEALTH_CHECK_INTERVAL sets how often silent agents are marked unhealthy"},
		{"DEFAULT_EVICTION_THRESHOLD", "meshd evicts on revocation, at once, and marks silent agents unhealthy after DEFAULT_TIMEOUT_THRESHOLD; it has no eviction threshold"},
		{"MCP_MESH_PUBLIC_URL_PREFIX", "meshd does not serve MCP Mesh's A2A surfaces (/a2a/agents)"},
		{"MCP_MESH_JOB_STALE_TIMEOUT", "meshd does not coordinate MeshJobs"},
		{"MCP_MESH_CANCEL_EVENT_GRACE_MS", "meshd does not coordinate MeshJobs"},
		{"MCP_MESH_EVENT_MAX_ROWS", "meshd keeps no event rows: meshctl audit's events are computed when asked, and its audit log is meshctl ca audit"},
		{"DB_BUSY_TIMEOUT", "meshd's SQLite store has its own settings"},
		{"DB_CONNECTION_TIMEOUT", "meshd's SQLite store has its own settings"},
	} {
		if s := getenv(v.env); s != "" {
			return fmt.Errorf("%s=%s is MCP Mesh's registry setting, and %s: unset it", v.env, s, v.why)
		}
	}
	if s := strings.ToLower(getenv("MCP_MESH_DISTRIBUTED_TRACING_ENABLED")); s == "true" || s == "1" || s == "yes" {
		return errors.New("MCP_MESH_DISTRIBUTED_TRACING_ENABLED: meshd has no distributed tracing (its REDIS_URL, TEMPO_URL, TRACE_* and TELEMETRY_* settings are not read): unset it; meshd's metrics are at GET /metrics on the admin API")
	}
	return nil
}
