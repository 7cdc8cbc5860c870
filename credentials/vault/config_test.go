package vault

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	env := map[string]string{
		EnvAddr: "https://vault:8200", EnvPKIPath: "pki_int/issue/mesh-agent", EnvToken: "s.token",
		EnvTTL: "30s", EnvTrustDomain: "example.org", EnvCA: "/etc/certs/vault-ca.pem",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for _, tt := range []struct {
		name string
		in   Config
		want Config
	}{
		{"all from the environment", Config{AgentName: "alpha"}, Config{
			Addr: "https://vault:8200", PKIPath: "pki_int/issue/mesh-agent", Token: "s.token", AgentName: "alpha",
			TrustDomain: "example.org", TTL: 30 * time.Second, CAFile: "/etc/certs/vault-ca.pem",
		}},
		{"the caller's settings win", Config{AgentName: "alpha", Addr: "https://other:8200", TTL: time.Hour, Token: "s.mine"}, Config{
			Addr: "https://other:8200", PKIPath: "pki_int/issue/mesh-agent", Token: "s.mine", AgentName: "alpha",
			TrustDomain: "example.org", TTL: time.Hour, CAFile: "/etc/certs/vault-ca.pem",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.withEnv(lookup)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{AgentName: "alpha"}.withEnv(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	c.Addr, c.PKIPath, c.Token = "https://vault:8200", "/pki_int/issue/mesh-agent/", "s.token"
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	if c.TTL != 24*time.Hour || c.TrustDomain != "mcp-mesh.local" || c.PKIPath != "pki_int/issue/mesh-agent" {
		t.Errorf("defaults: TTL %s, trust domain %q, path %q", c.TTL, c.TrustDomain, c.PKIPath)
	}
	if got := c.commonName(); got != "alpha.mcp-mesh.local" {
		t.Errorf("common name %q", got)
	}
}

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]time.Duration{"24h": 24 * time.Hour, "90m": 90 * time.Minute, "3600": time.Hour, "1h30m": 90 * time.Minute} {
		if got, err := parseTTL(in); err != nil || got != want {
			t.Errorf("parseTTL(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a day", "1d", "-"} {
		if _, err := parseTTL(in); err == nil {
			t.Errorf("parseTTL(%q) succeeded", in)
		}
	}
	_, err := Config{}.withEnv(func(k string) (string, bool) { return "a day", k == EnvTTL })
	if err == nil || !strings.Contains(err.Error(), EnvTTL) {
		t.Errorf("a bad %s: %v, want an error naming it", EnvTTL, err)
	}
}

// TestConfigRefused: every missing or malformed setting is refused before
// Vault is called, naming what to set.
func TestConfigRefused(t *testing.T) {
	good := Config{Addr: "https://vault:8200", PKIPath: "pki_int/issue/mesh-agent", Token: "s.token", AgentName: "alpha"}
	for _, tt := range []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"no address", func(c *Config) { c.Addr = "" }, EnvAddr},
		{"no path", func(c *Config) { c.PKIPath = "" }, EnvPKIPath},
		{"no token", func(c *Config) { c.Token = "" }, EnvToken},
		{"no agent name", func(c *Config) { c.AgentName = "" }, "agent name"},
		{"not a URL", func(c *Config) { c.Addr = "vault:8200" }, EnvAddr},
		{"not an issue path", func(c *Config) { c.PKIPath = "pki_int/roles/mesh-agent" }, "not a PKI issue path"},
		{"path without a role", func(c *Config) { c.PKIPath = "pki_int/issue" }, "not a PKI issue path"},
		{"a comma in the name", func(c *Config) { c.AgentName = "alpha,admin.mcp-mesh.local" }, "comma"},
		{"a comma in the host", func(c *Config) { c.Host = "10.0.0.1,10.0.0.2" }, "comma"},
		{"a negative TTL", func(c *Config) { c.TTL = -time.Hour }, "TTL"},
		{"a TTL under the floor", func(c *Config) { c.TTL = 9 * time.Second }, "under 10s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.modify(&c)
			_, err := New(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error saying %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "s.token") {
				t.Error("the error shows the token")
			}
		})
	}
}

func TestPKIMode(t *testing.T) {
	for path, want := range map[string]mode{
		"pki_int/issue/mesh-agent": issueMode, "pki/sign/r": signMode, "team/pki/issue/r": issueMode,
	} {
		if got, err := pkiMode(path); err != nil || got != want {
			t.Errorf("pkiMode(%q) = %v, %v", path, got, err)
		}
	}
}

func TestPlainRemote(t *testing.T) {
	for addr, want := range map[string]bool{
		"http://127.0.0.1:8200": false, "http://localhost:8200": false, "http://[::1]:8200": false,
		"https://vault:8200": false, "http://vault:8200": true, "http://10.0.0.5:8200": true,
	} {
		if got := (&Config{Addr: addr}).plainRemote(); got != want {
			t.Errorf("plainRemote(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestErrorMessages(t *testing.T) {
	for _, tt := range []struct {
		err  *Error
		kind error
		want []string
	}{
		{&Error{Addr: "https://v:8200", Path: "pki/issue/r", Status: 400, Messages: []string{"common name x.evil not allowed by this role"}, kind: ErrRefused},
			ErrRefused, []string{"PKI role at pki/issue/r", "400 Bad Request", "not allowed by this role", "allowed_domains"}},
		{&Error{Addr: "https://v:8200", Path: "pki/issue/nope", Status: 404, kind: ErrRefused},
			ErrRefused, []string{"404", EnvPKIPath}},
		{&Error{Addr: "https://v:8200", Path: "auth/token/renew-self", Status: 403, Messages: []string{"permission denied"}, kind: ErrTokenRejected},
			ErrTokenRejected, []string{"refused the token", "permission denied", EnvToken}},
		{&Error{Addr: "https://v:8200", Path: "pki/issue/r", Status: 503, Messages: []string{"Vault is sealed"}, kind: ErrUnavailable},
			ErrUnavailable, []string{"sealed", "unseal"}},
		{&Error{Addr: "https://v:8200", Path: "pki/issue/r", kind: ErrUnavailable, cause: errors.New("dial tcp: connection refused")},
			ErrUnavailable, []string{"cannot reach Vault at https://v:8200", "connection refused", EnvAddr}},
	} {
		msg := tt.err.Error()
		if !errors.Is(tt.err, tt.kind) {
			t.Errorf("%q does not wrap %v", msg, tt.kind)
		}
		for _, w := range tt.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%q does not say %q", msg, w)
			}
		}
	}
}

// TestScheduled: a certificate's successor is due at 2/3 of the life it
// had left when it was received (Vault backdates NotBefore), plus the
// jitter, and never sooner than the floor after it was received.
func TestScheduled(t *testing.T) {
	issued := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	s := &Source{opts: options{rand: func(n int64) int64 { return n - 1 }}}
	for _, tt := range []struct {
		name   string
		ttl    time.Duration // NotAfter - issued
		wantAt time.Duration // after issued
	}{
		// 2/3 of 15 s, plus the longest jitter (5% of 15 s, less 1 ns).
		{"15 s with a 30 s backdate", 15 * time.Second, 10*time.Second + 750*time.Millisecond - time.Nanosecond},
		{"a day", 24 * time.Hour, 16*time.Hour + 72*time.Minute - time.Nanosecond},
		{"3 s: the floor", 3 * time.Second, minReissue},
		{"already expired by this clock: the floor", -time.Minute, minReissue},
	} {
		t.Run(tt.name, func(t *testing.T) {
			leaf := &x509.Certificate{NotBefore: issued.Add(-30 * time.Second), NotAfter: issued.Add(tt.ttl)}
			if got := s.scheduled(leaf, issued).Sub(issued); got != tt.wantAt {
				t.Errorf("due %s after issue, want %s", got, tt.wantAt)
			}
		})
	}
}
