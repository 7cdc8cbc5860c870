package vault

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
)

// The environment variables of MCP Mesh's vault provider, which FromEnv
// reads. EnvCA is credentials.EnvCA: for this provider it verifies Vault
// itself, not peers (the peers' roots come from Vault).
const (
	EnvAddr        = "MCP_MESH_VAULT_ADDR"
	EnvPKIPath     = "MCP_MESH_VAULT_PKI_PATH"
	EnvToken       = "VAULT_TOKEN"
	EnvTTL         = "MCP_MESH_VAULT_TTL"
	EnvTrustDomain = "MCP_MESH_TRUST_DOMAIN"
	EnvCA          = credentials.EnvCA
)

// The defaults of the settings MCP Mesh documents.
const (
	DefaultTTL         = 24 * time.Hour
	DefaultTrustDomain = "mcp-mesh.local"
)

// Config says where a Source gets its certificate, and for whom.
type Config struct {
	// Addr is Vault's address, such as https://vault.example.com:8200
	// (MCP_MESH_VAULT_ADDR). Required. Use http:// only on loopback: the
	// token and, for an issue path, the private key cross the connection.
	Addr string
	// PKIPath is the PKI endpoint that issues the certificate, such as
	// pki_int/issue/mesh-agent (MCP_MESH_VAULT_PKI_PATH). Required. An
	// issue path has Vault make the key; a sign path
	// (pki_int/sign/mesh-agent) has an RSA 2048 key made here, and only
	// a CSR is sent.
	PKIPath string
	// Token authenticates to Vault (VAULT_TOKEN). Required. It is renewed
	// while renewable, and never logged.
	Token string
	// AgentName names the agent: the certificate's common name is
	// AgentName.TrustDomain, which is also its DNS SAN. Required.
	AgentName string
	// TrustDomain is the common name's suffix (MCP_MESH_TRUST_DOMAIN); ""
	// means mcp-mesh.local.
	TrustDomain string
	// Host is the agent's advertised host: an IP address becomes an IP
	// SAN, a name a second DNS SAN. "" adds neither.
	Host string
	// TTL is the lifetime asked of Vault (MCP_MESH_VAULT_TTL); 0 means
	// 24h. The role's max_ttl may shorten it.
	TTL time.Duration
	// CAFile is a PEM bundle that verifies Vault's own TLS certificate
	// (MCP_MESH_TLS_CA); "" means the system's roots.
	CAFile string
}

// withEnv returns c with each empty setting read from its variable, with
// lookup (os.LookupEnv outside tests).
func (c Config) withEnv(lookup func(string) (string, bool)) (Config, error) {
	fill := func(field *string, name string) {
		if *field == "" {
			if v, ok := lookup(name); ok {
				*field = strings.TrimSpace(v)
			}
		}
	}
	fill(&c.Addr, EnvAddr)
	fill(&c.PKIPath, EnvPKIPath)
	fill(&c.TrustDomain, EnvTrustDomain)
	fill(&c.CAFile, EnvCA)
	if c.Token == "" {
		// A token is not trimmed: it is used exactly as given.
		c.Token, _ = lookup(EnvToken)
	}
	if c.TTL == 0 {
		if v, ok := lookup(EnvTTL); ok && strings.TrimSpace(v) != "" {
			ttl, err := parseTTL(strings.TrimSpace(v))
			if err != nil {
				return c, fmt.Errorf("vault: %s=%q: %w", EnvTTL, v, err)
			}
			c.TTL = ttl
		}
	}
	return c, nil
}

// parseTTL reads a TTL as Vault does: a Go duration ("24h", "90m") or a
// number of seconds.
func parseTTL(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration such as 24h, 90m or 3600")
	}
	return d, nil
}

// check fills in the defaults and reports the first setting that is
// missing or malformed, naming its variable.
func (c *Config) check() error {
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	c.PKIPath = strings.Trim(c.PKIPath, "/")
	switch {
	case c.Addr == "":
		return fmt.Errorf("vault: no Vault address: set %s (Config.Addr), such as https://vault.example.com:8200", EnvAddr)
	case c.PKIPath == "":
		return fmt.Errorf("vault: no PKI path: set %s (Config.PKIPath), such as pki_int/issue/mesh-agent", EnvPKIPath)
	case c.Token == "":
		return fmt.Errorf("vault: no token: set %s (Config.Token)", EnvToken)
	case c.AgentName == "":
		return errors.New("vault: no agent name (Config.AgentName): it names the certificate")
	case c.TTL < MinTTL:
		return fmt.Errorf("vault: TTL %s is under %s (%s): the source issues a certificate at most every %s, so a shorter one would expire before its successor", c.TTL, MinTTL, EnvTTL, minReissue)
	}
	u, err := url.Parse(c.Addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("vault: %s=%q is not an http(s) URL such as https://vault.example.com:8200", EnvAddr, c.Addr)
	}
	if _, err := pkiMode(c.PKIPath); err != nil {
		return err
	}
	// A comma would split Vault's alt_names and ip_sans lists: a name
	// could smuggle in another SAN.
	for _, f := range []struct{ what, v string }{
		{"agent name", c.AgentName}, {"trust domain (" + EnvTrustDomain + ")", c.TrustDomain}, {"advertised host", c.Host},
	} {
		if strings.ContainsAny(f.v, ", \t\r\n") {
			return fmt.Errorf("vault: %s %q holds a comma or a space", f.what, f.v)
		}
	}
	return nil
}

// commonName is the name the certificate is issued for.
func (c *Config) commonName() string { return c.AgentName + "." + c.TrustDomain }

// plainRemote reports whether Addr is http:// to a host other than
// loopback, which is worth a warning.
func (c *Config) plainRemote() bool {
	u, err := url.Parse(c.Addr)
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil {
		return !ip.IsLoopback()
	}
	return host != "localhost"
}

// mode is how a PKI path gets a certificate.
type mode int

const (
	issueMode mode = iota // Vault makes the key: pki/issue/<role>
	signMode              // the key is made here: pki/sign/<role>
)

// pkiMode reads path as <mount>/issue/<role> or <mount>/sign/<role>.
func pkiMode(path string) (mode, error) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if n := len(parts); n >= 3 && parts[n-1] != "" {
		switch parts[n-2] {
		case "issue":
			return issueMode, nil
		case "sign":
			return signMode, nil
		}
	}
	return 0, fmt.Errorf("vault: %s=%q is not a PKI issue path such as pki_int/issue/mesh-agent (or a sign path, pki_int/sign/mesh-agent)", EnvPKIPath, path)
}

// Option configures how a Source runs.
type Option func(*options)

type options struct {
	log        *slog.Logger
	clock      credentials.Clock
	rand       func(n int64) int64
	maxBackoff time.Duration
}

// WithLogger receives issuances, token renewals and failures; the default
// discards them. The token and the PEM of keys and certificates are never
// logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// withClock sets the clock the schedule runs on; the default is the
// system clock. Tests move a manual one.
func withClock(c credentials.Clock) Option { return func(o *options) { o.clock = c } }

// withRand sets the source of the jitter: it returns a uniform random
// number in [0, n). The default is math/rand/v2's Int64N. Tests fix it.
func withRand(r func(n int64) int64) Option { return func(o *options) { o.rand = r } }

// withMaxBackoff caps the delay between attempts while Vault cannot issue
// a certificate or renew the token: it starts at about a second and
// doubles up to this cap, 5 minutes by default. Tests lower it.
func withMaxBackoff(d time.Duration) Option { return func(o *options) { o.maxBackoff = d } }
