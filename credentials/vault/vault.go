// Package vault is the Vault credential provider: a credentials.Source
// whose certificate HashiCorp Vault's PKI secrets engine issues, and
// issues again before it expires. It is MCP Mesh's "vault" provider
// (MCP_MESH_TLS_PROVIDER=vault), configured by MCP_MESH_VAULT_ADDR,
// MCP_MESH_VAULT_PKI_PATH, VAULT_TOKEN, MCP_MESH_VAULT_TTL,
// MCP_MESH_TRUST_DOMAIN and MCP_MESH_TLS_CA (FromEnv), or by a Config.
//
// Agent alpha gets a certificate for the common name alpha.<trust
// domain>, which is also its DNS SAN, and for its advertised host (an IP
// SAN, or a DNS SAN for a name). Its roots are the CA chain Vault answers
// with (issuing_ca and ca_chain), so peers issued by the same Vault PKI
// verify each other with credentials.ServerConfig and ClientConfig.
//
// The certificate is issued again once 2/3 of its lifetime has passed,
// counted from when Vault issued it (Vault backdates not_before by 30 s,
// so a lifetime counted from not_before would put the renewal early, and
// for a TTL under 45 s at once), plus a random delay of up to 5% of it so
// that agents started together do not all ask at once; never sooner than
// 5 s after the last issuance (a TTL under 10 s is refused). While Vault cannot issue, the current
// certificate stays in use and the Source retries, from about a second
// apart and doubling up to 5 minutes. The token is renewed
// (auth/token/renew-self) at 2/3 of its TTL for as long as Vault allows.
// A failure is logged; a token
// that Vault refuses is an error wrapping ErrTokenRejected, a name the
// role refuses one wrapping ErrRefused. Both are retried too, since an
// operator can fix a policy or a role without restarting the agent.
//
// The Vault client reads VAULT_NAMESPACE and VAULT_HEADERS, as Vault's own
// tools do. Vault's certificate is verified against MCP_MESH_TLS_CA (or
// the system's roots) only: VAULT_CACERT and VAULT_SKIP_VERIFY do not
// apply.
package vault

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/pemfile"
)

const (
	// renewFraction is the part of a lifetime after which a certificate
	// or the token is renewed.
	renewFraction = 2.0 / 3
	// jitterFraction bounds the random delay past a certificate's due
	// time, as a part of its lifetime.
	jitterFraction = 0.05
	minBackoff     = time.Second
	// minReissue is the shortest time between two certificates Vault
	// issued: however short a certificate's life, the Source does not ask
	// again sooner, so a clock ahead of Vault's or a role's short max_ttl
	// cannot turn it into a loop of issuances.
	minReissue = 5 * time.Second
	// MinTTL is the shortest TTL the Source asks for: twice minReissue, so
	// that a certificate outlives the wait for its successor.
	MinTTL = 2 * minReissue
	// requestTimeout bounds one call to Vault.
	requestTimeout = 30 * time.Second
)

// Source is a credentials.Source over Vault's PKI secrets engine. Its
// Bundles are nil: it knows nothing of SPIFFE. Current returns the last
// certificate Vault issued, with its key, and the CA chain Vault answered
// with as Roots; Changed is closed when a new certificate is in use, or
// when the source is closed.
type Source struct {
	credentials.View // the holder's: Current and Changed

	cfg    Config
	mode   mode
	opts   options
	log    *slog.Logger
	client *api.Client
	http   *http.Client // the client's, to close its connections
	holder credentials.Holder

	errMu              sync.Mutex
	issueErr, tokenErr error

	stop context.CancelFunc
	done chan struct{}

	// Owned by run once New returns.
	leaf         *x509.Certificate // of the current credentials
	certAt       time.Time         // when to issue next
	certAttempts int               // failed attempts since the last issuance
	token        tokenState
}

var _ credentials.Source = (*Source)(nil)

// tokenState is what the Source knows of its token's lifetime.
type tokenState struct {
	renewAt  time.Time // zero: not renewed (it does not expire, or cannot be renewed)
	ttl      time.Duration
	attempts int
}

// New returns a Source that has its first certificate from Vault already,
// and issues the next ones until ctx ends or Close is called. It fails
// when a setting is missing or malformed (naming its variable), when
// Vault cannot be reached, refuses the token, or refuses to issue.
func New(ctx context.Context, cfg Config, opts ...Option) (*Source, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	o := options{clock: retry.SystemClock(), rand: mrand.Int64N, maxBackoff: 5 * time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	o.maxBackoff = max(o.maxBackoff, minBackoff)
	m, _ := pkiMode(cfg.PKIPath) // checked by cfg.check
	client, hc, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &Source{
		cfg: cfg, mode: m, opts: o, client: client, http: hc, done: make(chan struct{}),
		log: o.log.With("provider", "vault", "vault", cfg.Addr, "path", cfg.PKIPath),
	}
	s.View = s.holder.View()
	if cfg.plainRemote() {
		s.log.Warn("speaking to Vault over plain http: the token and the private key cross the network in clear; use https")
	}
	// On failure, leave no connection to Vault open.
	fail := func(err error) (*Source, error) {
		hc.CloseIdleConnections()
		return nil, err
	}
	lookupErr := s.lookupToken(ctx)
	if errors.Is(lookupErr, ErrUnavailable) {
		return fail(lookupErr)
	}
	// A token refused even a lookup of itself is most likely bad, but one
	// made without the default policy may still issue: let the issue path
	// decide, and say why the token is not renewed.
	c, err := s.issue(ctx)
	if err != nil {
		return fail(err)
	}
	if lookupErr != nil {
		s.log.Warn("cannot look up the Vault token, so it is not renewed; give it the default policy", "err", lookupErr)
	}
	if err := s.publish(c); err != nil {
		return fail(err)
	}
	ctx, s.stop = context.WithCancel(ctx)
	go s.run(ctx)
	return s, nil
}

// FromEnv returns a Source configured by MCP Mesh's variables (EnvAddr,
// EnvPKIPath, EnvToken, EnvTTL, EnvTrustDomain, EnvCA) for the settings
// cfg leaves empty; cfg gives AgentName and Host, which no variable
// holds. It does not read MCP_MESH_TLS_PROVIDER: choosing the provider is
// the caller's.
func FromEnv(ctx context.Context, cfg Config, opts ...Option) (*Source, error) {
	cfg, err := cfg.withEnv(os.LookupEnv)
	if err != nil {
		return nil, err
	}
	return New(ctx, cfg, opts...)
}

// newClient returns a Vault client for cfg: TLS verified against
// cfg.CAFile (or the system roots), no retries of its own (the Source
// has a schedule), and no redirects followed by net/http (the Vault
// client follows a standby's redirect itself).
func newClient(cfg Config) (*api.Client, *http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		data, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("vault: the CA bundle for Vault (%s): %w", EnvCA, err)
		}
		certs, err := pemfile.ParseCerts(data)
		if err != nil {
			return nil, nil, fmt.Errorf("vault: the CA bundle for Vault (%s=%s): %w", EnvCA, cfg.CAFile, err)
		}
		tc.RootCAs = x509.NewCertPool()
		for _, c := range certs {
			tc.RootCAs.AddCert(c)
		}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tc
	hc := &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	client, err := api.NewClient(&api.Config{Address: cfg.Addr, HttpClient: hc, Timeout: requestTimeout, MaxRetries: 0})
	if err != nil {
		return nil, nil, fmt.Errorf("vault: client for %s: %w", cfg.Addr, err)
	}
	client.SetToken(cfg.Token)
	return client, hc, nil
}

// Close stops issuing; Current then fails with credentials.ErrClosed, as
// it does once New's ctx ends. The token is left as it is: it is the
// caller's. Close is idempotent.
func (s *Source) Close() error {
	s.stop()
	<-s.done
	return nil
}

func (s *Source) setErr(slot *error, err error) {
	s.errMu.Lock()
	*slot = err
	s.errMu.Unlock()
}

// run issues and renews whatever is due until ctx ends.
func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	defer s.holder.Close()
	defer s.http.CloseIdleConnections()
	for {
		now := s.opts.clock.Now()
		at := s.certAt
		if t := s.token.renewAt; !t.IsZero() && t.Before(at) {
			at = t
		}
		if wait := at.Sub(now); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.opts.clock.After(wait):
			}
			continue
		}
		if t := s.token.renewAt; !t.IsZero() && !t.After(now) {
			s.renewToken(ctx)
		}
		if !s.certAt.After(now) {
			s.reissue(ctx)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// backoff returns the delay before retry number attempt (1, 2, ...).
func (s *Source) backoff(attempt int) time.Duration {
	return retry.Backoff(attempt, minBackoff, s.opts.maxBackoff, s.opts.rand)
}

// reissue asks Vault for the next certificate, or schedules a retry.
func (s *Source) reissue(ctx context.Context) {
	c, err := s.issue(ctx)
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		err = s.publish(c)
	}
	if err == nil {
		return
	}
	s.setErr(&s.issueErr, err)
	s.certAttempts++
	delay := s.backoff(s.certAttempts)
	now := s.opts.clock.Now()
	s.certAt = now.Add(delay)
	attrs := []any{"err", err, "subject", s.leaf.Subject.CommonName, "serial", serial(s.leaf), "not_after", s.leaf.NotAfter, "attempt", s.certAttempts, "retry_in", delay}
	switch {
	case now.After(s.leaf.NotAfter):
		s.log.Error("the certificate has expired and Vault has not issued a new one; peers refuse it until it does", attrs...)
	case errors.Is(err, ErrUnavailable):
		s.log.Warn("cannot get a new certificate from Vault; the current one stays in use", attrs...)
	default:
		s.log.Error("Vault refused to issue a new certificate; the current one stays in use", attrs...)
	}
}

// publish makes c current and schedules its successor.
func (s *Source) publish(c *credentials.Credentials) error {
	// The error is cleared before Set wakes the watchers, so one that
	// reads Err on the change sees the recovery.
	s.errMu.Lock()
	prev := s.issueErr
	s.errMu.Unlock()
	s.setErr(&s.issueErr, nil)
	if err := s.holder.Set(c); err != nil {
		s.setErr(&s.issueErr, prev)
		return err
	}
	s.leaf = c.Certificate.Leaf
	s.certAttempts = 0
	s.certAt = s.scheduled(s.leaf, s.opts.clock.Now())
	if !s.leaf.NotAfter.After(s.certAt) {
		s.log.Warn("Vault issued a certificate that expires before its successor is due: this clock is ahead of Vault's, or the role's max_ttl is shorter than twice the 5 s floor between issuances",
			"not_before", s.leaf.NotBefore, "not_after", s.leaf.NotAfter, "renew_at", s.certAt)
	}
	s.log.Info("issued certificate", "subject", s.leaf.Subject.CommonName, "serial", serial(s.leaf),
		"not_after", s.leaf.NotAfter, "renew_at", s.certAt, "roots", len(c.Roots))
	return nil
}

// scheduled is when the successor of leaf, received at issued, is
// issued: at 2/3 of the life it had left then, plus a jitter of up to 5%
// of that life, never later than halfway from then to expiry, and never
// sooner than minReissue after issued. The life is counted from issued,
// not from NotBefore: Vault backdates NotBefore by 30 s.
func (s *Source) scheduled(leaf *x509.Certificate, issued time.Time) time.Time {
	life := leaf.NotAfter.Sub(issued)
	due := issued.Add(time.Duration(float64(life) * renewFraction))
	var jitter time.Duration
	if limit := int64(float64(life) * jitterFraction); limit > 0 {
		jitter = time.Duration(s.opts.rand(limit))
	}
	due = due.Add(min(jitter, leaf.NotAfter.Sub(due)/2))
	if floor := issued.Add(minReissue); due.Before(floor) {
		return floor
	}
	return due
}

// issue asks Vault for a certificate and returns it as credentials.
func (s *Source) issue(ctx context.Context) (*credentials.Credentials, error) {
	cn := s.cfg.commonName()
	dns := []string{cn}
	var ips []string
	if h := s.cfg.Host; h != "" {
		if net.ParseIP(h) != nil {
			ips = append(ips, h)
		} else if h != cn {
			dns = append(dns, h)
		}
	}
	data := map[string]any{
		"common_name": cn,
		// The common name is a DNS SAN by Vault's default too, but not
		// under a role with exclude_cn_from_sans.
		"alt_names": strings.Join(dns, ","),
		"ttl":       strconv.FormatInt(int64(s.cfg.TTL/time.Second), 10) + "s",
		"format":    "pem",
	}
	if len(ips) > 0 {
		data["ip_sans"] = strings.Join(ips, ",")
	}
	var key crypto.Signer
	if s.mode == signMode {
		var csr []byte
		var err error
		if key, csr, err = newCSR(cn, dns, ips); err != nil {
			return nil, err
		}
		data["csr"] = string(csr)
	} else {
		data["private_key_format"] = "pkcs8"
	}
	secret, err := s.client.Logical().WriteWithContext(ctx, s.cfg.PKIPath, data)
	if err != nil {
		return nil, classify(s.cfg.Addr, s.cfg.PKIPath, err)
	}
	return s.credentials(secret, key)
}

// newCSR makes a key and a CSR for it. The key is RSA 2048, the key type
// of a Vault role that does not say (key_type rsa, key_bits 2048): a role
// of another key_type refuses it, and Vault's refusal says so.
func newCSR(cn string, dns, ips []string) (crypto.Signer, []byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("vault: make a key: %w", err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("vault: make a CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// credentials reads Vault's answer to an issue or sign request. key is
// the key of the CSR for a sign path, nil for an issue path (the answer
// holds it). No error repeats the answer's PEM.
func (s *Source) credentials(secret *api.Secret, key crypto.Signer) (*credentials.Credentials, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("vault: Vault at %s answered %s with %s", s.cfg.Addr, s.cfg.PKIPath, fmt.Sprintf(format, args...))
	}
	if secret == nil || secret.Data == nil {
		return nil, bad("no data")
	}
	str := func(k string) string { v, _ := secret.Data[k].(string); return v }
	leafs, err := pemfile.ParseCerts([]byte(str("certificate")))
	if err != nil {
		return nil, bad("an unreadable certificate: %v", err)
	}
	leaf := leafs[0]
	if cn := s.cfg.commonName(); leaf.Subject.CommonName != cn {
		return nil, bad("a certificate for %q, not %q: check the role's use_csr_common_name and cn_validations", leaf.Subject.CommonName, cn)
	}
	// The CA chain: issuing_ca, then ca_chain (which usually repeats it),
	// each certificate once.
	pems := []string{str("issuing_ca")}
	if chain, ok := secret.Data["ca_chain"].([]any); ok {
		for _, c := range chain {
			if p, ok := c.(string); ok {
				pems = append(pems, p)
			}
		}
	}
	var roots []*x509.Certificate
	seen := make(map[string]bool)
	for _, p := range pems {
		if strings.TrimSpace(p) == "" {
			continue
		}
		certs, err := pemfile.ParseCerts([]byte(p))
		if err != nil {
			return nil, bad("an unreadable CA chain: %v", err)
		}
		for _, c := range certs {
			if !seen[string(c.Raw)] {
				seen[string(c.Raw)] = true
				roots = append(roots, c)
			}
		}
	}
	if len(roots) == 0 {
		return nil, bad("no CA chain (issuing_ca, ca_chain)")
	}
	if key == nil {
		if key, err = pemfile.ParseKey([]byte(str("private_key"))); err != nil {
			return nil, bad("an unreadable private key: %v", err)
		}
	}
	// Present the leaf and the intermediates; a peer has the root.
	chain := []*x509.Certificate{leaf}
	for _, c := range roots {
		if !selfSigned(c) {
			chain = append(chain, c)
		}
	}
	cert, err := credentials.NewTLSCertificate(chain, key)
	if err != nil {
		return nil, bad("a certificate that is not usable: %v", err)
	}
	return &credentials.Credentials{Certificate: cert, Roots: roots}, nil
}

func selfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil && string(c.RawSubject) == string(c.RawIssuer)
}

// lookupToken learns the token's lifetime, and so checks it before the
// first issuance: a rejected token is named as such, not as a refused
// certificate.
func (s *Source) lookupToken(ctx context.Context) error {
	secret, err := s.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return classify(s.cfg.Addr, "auth/token/lookup-self", err)
	}
	ttl, _ := secret.TokenTTL()
	renewable, _ := secret.TokenIsRenewable()
	now := s.opts.clock.Now()
	switch {
	case ttl <= 0:
		s.log.Info("the Vault token does not expire")
	case renewable:
		s.token = tokenState{ttl: ttl, renewAt: now.Add(time.Duration(float64(ttl) * renewFraction))}
		s.log.Info("the Vault token is renewable; renewing it before it expires", "token_ttl", ttl, "renew_at", s.token.renewAt)
	default:
		s.log.Warn("the Vault token cannot be renewed; once it expires no certificate can be issued: give a new token before then", "expires", now.Add(ttl))
	}
	return nil
}

// renewToken renews the token, or schedules a retry.
func (s *Source) renewToken(ctx context.Context) {
	const path = "auth/token/renew-self"
	secret, err := s.client.Auth().Token().RenewSelfWithContext(ctx, 0)
	if ctx.Err() != nil {
		return
	}
	now := s.opts.clock.Now()
	if err != nil {
		err = classify(s.cfg.Addr, path, err)
		s.setErr(&s.tokenErr, err)
		s.token.attempts++
		delay := s.backoff(s.token.attempts)
		s.token.renewAt = now.Add(delay)
		level := slog.LevelError
		if errors.Is(err, ErrUnavailable) {
			level = slog.LevelWarn
		}
		s.log.Log(ctx, level, "cannot renew the Vault token", "err", err, "attempt", s.token.attempts, "retry_in", delay)
		return
	}
	s.setErr(&s.tokenErr, nil)
	ttl, _ := secret.TokenTTL()
	renewable, _ := secret.TokenIsRenewable()
	prev := s.token.ttl
	s.token = tokenState{ttl: ttl}
	switch {
	case ttl <= 0 || !renewable:
		s.log.Warn("the Vault token can no longer be renewed; once it expires no certificate can be issued: give a new token before then", "expires", now.Add(ttl))
	case ttl < prev:
		// Vault grants less than before: the token has reached its max
		// TTL, and renewing again would only shorten the wait.
		s.log.Warn("the Vault token has reached its max TTL; once it expires no certificate can be issued: give a new token before then", "expires", now.Add(ttl))
	default:
		s.token.renewAt = now.Add(time.Duration(float64(ttl) * renewFraction))
		s.log.Info("renewed the Vault token", "token_ttl", ttl, "renew_at", s.token.renewAt)
	}
}

// serial formats a certificate's serial as Vault does, for logs.
func serial(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	b := c.SerialNumber.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}
