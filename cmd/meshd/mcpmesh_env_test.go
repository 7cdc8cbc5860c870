package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMCPMeshEnv: MCP Mesh's registry variables mean what they mean to MCP
// Mesh, or meshd refuses to start and says what to use.
func TestMCPMeshEnv(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, selfSignedPEM(t), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "data", "ca", "meshtrust.db")
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(*options) bool
		wantErr string // empty: no error
	}{
		{name: "HOST and PORT", env: map[string]string{"HOST": "0.0.0.0", "PORT": "9000"}, check: func(o *options) bool { return o.listen == "0.0.0.0:9000" }},
		{name: "PORT alone", env: map[string]string{"PORT": "9001"}, check: func(o *options) bool { return o.listen == "127.0.0.1:9001" }},
		{name: "PORT and --listen agree", env: map[string]string{"PORT": "9002"}, args: []string{"--listen", "127.0.0.1:9002"}},
		{name: "PORT and --listen disagree", env: map[string]string{"PORT": "9003"}, args: []string{"--listen", "127.0.0.1:9"}, wantErr: "set one of them"},
		{name: "bad PORT", env: map[string]string{"PORT": "http"}, wantErr: "not a port"},
		{name: "admin port on loopback", env: map[string]string{"MCP_MESH_ADMIN_PORT": "9443"}, check: func(o *options) bool { return o.adminListen == "127.0.0.1:9443" }},
		{name: "admin port on every interface, said twice", env: map[string]string{"MCP_MESH_ADMIN_PORT": "9443"}, args: []string{"--admin-listen", "0.0.0.0:9443"},
			check: func(o *options) bool { return o.adminListen == "0.0.0.0:9443" }},
		{name: "admin port disagrees", env: map[string]string{"MCP_MESH_ADMIN_PORT": "9443"}, args: []string{"--admin-listen", "127.0.0.1:9444"}, wantErr: "disagree"},
		{name: "DATABASE_URL is the store", env: map[string]string{"DATABASE_URL": store}},
		{name: "DATABASE_URL elsewhere", env: map[string]string{"DATABASE_URL": filepath.Join(dir, "mcp_mesh_registry.db")}, wantErr: "keeps its store at " + store},
		{name: "DATABASE_URL in memory", env: map[string]string{"DATABASE_URL": ":memory:"}, wantErr: "lose every revocation"},
		{name: "DATABASE_URL PostgreSQL", env: map[string]string{"DATABASE_URL": "postgresql://u:p@db/mesh"},
			check: func(o *options) bool { return o.Database == "postgresql://u:p@db/mesh" }},
		{name: "DATABASE_URL and --database disagree", env: map[string]string{"DATABASE_URL": "postgresql://u:p@db/mesh"},
			args: []string{"--database", "postgres://u:p@other/mesh"}, wantErr: "set one of them"},
		{name: "timeout threshold", env: map[string]string{"DEFAULT_TIMEOUT_THRESHOLD": "30", "HEALTH_CHECK_INTERVAL": "2"},
			check: func(o *options) bool {
				return o.heartbeatTimeout == 30*time.Second && o.healthCheckInterval == 2*time.Second
			}},
		{name: "bad timeout threshold", env: map[string]string{"DEFAULT_TIMEOUT_THRESHOLD": "20s"}, wantErr: "whole number of seconds"},
		{name: "timeout threshold disagrees", env: map[string]string{"DEFAULT_TIMEOUT_THRESHOLD": "30"}, args: []string{"--heartbeat-timeout", "40s"}, wantErr: "disagree"},
		{name: "log level WARNING", env: map[string]string{"MCP_MESH_LOG_LEVEL": "WARNING"}, check: func(o *options) bool { return o.logLevel == "warn" }},
		{name: "debug mode", env: map[string]string{"MCP_MESH_LOG_LEVEL": "ERROR", "MCP_MESH_DEBUG_MODE": "yes"}, check: func(o *options) bool { return o.logLevel == "debug" }},
		{name: "bad log level", env: map[string]string{"MCP_MESH_LOG_LEVEL": "LOUD"}, wantErr: "CRITICAL"},
		{name: "TLS CA readable", env: map[string]string{"MCP_MESH_TLS_CA": ca}},
		{name: "TLS CA missing", env: map[string]string{"MCP_MESH_TLS_CA": filepath.Join(dir, "nope.pem")}, wantErr: "no such file"},
		{name: "TLS CA not PEM", env: map[string]string{"MCP_MESH_TLS_CA": notPEM}, wantErr: "no PEM certificate"},
		{name: "retention", env: map[string]string{"MCP_MESH_RETENTION": "1h"}, wantErr: "no retention sweep"},
		{name: "eviction threshold", env: map[string]string{"DEFAULT_EVICTION_THRESHOLD": "60"}, wantErr: "unset it"},
		{name: "tracing", env: map[string]string{"MCP_MESH_DISTRIBUTED_TRACING_ENABLED": "true"}, wantErr: "no distributed tracing"},
		{name: "request body bound", env: map[string]string{"MCP_MESH_MAX_REQUEST_BODY_BYTES": "65536"}, check: func(o *options) bool { return o.limits.maxRequestBody == 65536 }},
		{name: "bad request body bound", env: map[string]string{"MCP_MESH_MAX_REQUEST_BODY_BYTES": "1MB"}, wantErr: "whole number of bytes"},
		{name: "zero request body bound", env: map[string]string{"MCP_MESH_MAX_REQUEST_BODY_BYTES": "0"}, wantErr: "above 0"},
		{name: "admin TLS on", env: map[string]string{"MCP_MESH_ADMIN_TLS": "true"}, check: func(o *options) bool { return len(o.envNotes) == 0 }},
		{name: "admin TLS off is noted, not followed", env: map[string]string{"MCP_MESH_ADMIN_TLS": "false"},
			check: func(o *options) bool { return len(o.envNotes) == 1 && strings.Contains(o.envNotes[0], "mTLS") }},
		{name: "bad admin TLS", env: map[string]string{"MCP_MESH_ADMIN_TLS": "maybe"}, wantErr: "want true or false"},
		{name: "tracing off", env: map[string]string{"MCP_MESH_DISTRIBUTED_TRACING_ENABLED": "false", "REDIS_URL": "redis://x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"MESHD_LISTEN"} {
				t.Setenv(k, "")
			}
			o := &options{}
			cmd := commandFor(o, io.Discard, io.Discard)
			if err := cmd.ParseFlags(append([]string{"--data-dir", filepath.Join(dir, "data")}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			err := mcpmeshEnv(o, cmd.Flags(), func(k string) string { return tc.env[k] })
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
			case err == nil && tc.check != nil && !tc.check(o):
				t.Fatalf("options after %v: %+v", tc.env, o)
			}
		})
	}
}

func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
