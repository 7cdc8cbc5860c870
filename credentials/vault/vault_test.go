package vault_test

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/vault"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// config returns the settings of agent name against v, with a short TTL
// so that a rotation is seconds away in Vault's terms too.
func (v *vaultServer) config(name string) vault.Config {
	return vault.Config{
		Addr: v.addr, PKIPath: v.pkiPath, Token: v.rootToken, AgentName: name,
		Host: "127.0.0.1", TTL: 30 * time.Second, CAFile: v.caCert,
	}
}

func newSource(t *testing.T, cfg vault.Config, opts ...vault.Option) *vault.Source {
	t.Helper()
	src, err := vault.New(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatalf("vault.New: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func waitChanged(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("%s: no new credentials", what)
	}
}

// TestIssueAndRotateUnderTraffic issues two agents' certificates from a
// real Vault, runs mTLS traffic between them with credentials.ServerConfig
// and ClientConfig, and rotates both certificates at 2/3 of their
// lifetime while the traffic runs: no request may fail.
func TestIssueAndRotateUnderTraffic(t *testing.T) {
	v := startVault(t, false)
	log, _ := newLog(t, v.rootToken)
	clkA, clkB := newFakeClock(), newFakeClock()
	alpha := newSource(t, v.config("alpha"), vault.WithClock(clkA), vault.WithRand(highest), vault.WithLogger(log))
	beta := newSource(t, v.config("beta"), vault.WithClock(clkB), vault.WithRand(highest), vault.WithLogger(log))

	a := sourcetest.Current(t, alpha)
	leaf := a.Certificate.Leaf
	if got, want := leaf.Subject.CommonName, "alpha.mcp-mesh.local"; got != want {
		t.Errorf("common name %q, want %q", got, want)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "alpha.mcp-mesh.local" {
		t.Errorf("DNS SANs %q, want [alpha.mcp-mesh.local]", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("IP SANs %v, want [127.0.0.1]", leaf.IPAddresses)
	}
	// Vault backdates NotBefore by 30 s.
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 30*time.Second || life > 90*time.Second {
		t.Errorf("lifetime %s, want the 30 s TTL (plus Vault's backdating)", life)
	}
	// The roots are the CA chain: the intermediate and the root the
	// script made.
	root, err := pemfile.ReadCert(v.rootCA)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Roots) != 2 || !a.Roots[len(a.Roots)-1].Equal(root) {
		t.Errorf("roots %d, want the intermediate and the root %q", len(a.Roots), root.Subject.CommonName)
	}
	if n := len(a.Certificate.Certificate); n != 2 {
		t.Errorf("presented chain of %d certificates, want the leaf and the intermediate", n)
	}

	// alpha serves, beta calls; each side records the serial the other
	// presented.
	type result struct {
		err            error
		server, client string // serials
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", credentials.ServerConfig(alpha, credentials.AuthorizeIdentity("beta.mcp-mesh.local")))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.TLS.PeerCertificates[0].SerialNumber.String())
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   credentials.ClientConfig(beta, credentials.AuthorizeIdentity("alpha.mcp-mesh.local")),
		DisableKeepAlives: true, // a handshake per request, so each sees the current certificates
	}}
	results := make(chan result, 100000)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	const callers = 4
	for range callers {
		go func() {
			defer func() { done <- struct{}{} }()
			for ctx.Err() == nil {
				var r result
				resp, err := client.Get("https://" + ln.Addr().String() + "/")
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					r.client = string(body)
					r.server = resp.TLS.PeerCertificates[0].SerialNumber.String()
					if resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				r.err = err
				results <- r
			}
		}()
	}
	failed := 0
	// take reads results until n of them are successes that match want.
	take := func(n int, want func(result) bool) {
		t.Helper()
		deadline := time.After(time.Minute)
		for seen := 0; seen < n; {
			select {
			case r := <-results:
				if r.err != nil {
					if failed++; failed <= 5 {
						t.Errorf("request failed: %v", r.err)
					}
				} else if want(r) {
					seen++
				}
			case <-deadline:
				t.Fatalf("a minute without %d matching requests (%d failed)", n, failed)
			}
		}
	}
	oldA, oldB := a.Certificate.Leaf.SerialNumber.String(), sourcetest.Current(t, beta).Certificate.Leaf.SerialNumber.String()
	take(20, func(r result) bool { return r.server == oldA && r.client == oldB })

	// Rotate both, while the traffic goes on.
	for _, s := range []struct {
		clk *fakeClock
		src *vault.Source
	}{{clkA, alpha}, {clkB, beta}} {
		changed := s.src.Changed()
		due := s.clk.NextWait(t, time.Minute)
		// The clock has not moved since the issuance: the life is what
		// was left of the certificate then, not NotAfter-NotBefore
		// (Vault backdates NotBefore by 30 s).
		leaf := sourcetest.Current(t, s.src).Certificate.Leaf
		life := leaf.NotAfter.Sub(s.clk.Now())
		if due < life*2/3 || due > life*2/3+life/20 {
			t.Errorf("renewal %s after the issuance of a certificate with %s left, want 2/3 of it plus up to 5%% jitter", due, life)
		}
		s.clk.Advance(due)
		waitChanged(t, changed, "rotation")
	}
	newA, newB := sourcetest.Current(t, alpha).Certificate.Leaf.SerialNumber.String(), sourcetest.Current(t, beta).Certificate.Leaf.SerialNumber.String()
	if newA == oldA || newB == oldB {
		t.Fatal("rotation kept the old serials")
	}
	take(20, func(r result) bool { return r.server == newA && r.client == newB })
	if sourcetest.Current(t, alpha).Certificate.Leaf.SerialNumber.String() != newA || sourcetest.Current(t, beta).Certificate.Leaf.SerialNumber.String() != newB {
		t.Error("the certificates changed again without the clock moving")
	}
	stop()
	for range callers {
		<-done
	}
	close(results)
	for r := range results {
		if r.err != nil {
			failed++
		}
	}
	if failed > 0 {
		t.Errorf("%d requests failed across the rotation", failed)
	}
	if err := alpha.Err(); err != nil {
		t.Errorf("Err after a good rotation: %v", err)
	}
}

// TestShortTTL runs the Source on the real clock with a 15 s TTL, which
// Vault issues with NotBefore 30 s in the past: the certificate is issued
// again about 10 s later (2/3 of the 15 s it had left), not at once and
// not in a loop. Only lower bounds are checked: a loaded machine can make
// the renewal late, never early.
func TestShortTTL(t *testing.T) {
	v := startVault(t, false)
	cfg := v.config("shortlived")
	cfg.TTL = 15 * time.Second
	src := newSource(t, cfg)
	start := time.Now()
	first := sourcetest.Current(t, src).Certificate.Leaf
	if back := time.Since(first.NotBefore); back < 20*time.Second {
		t.Logf("Vault backdated NotBefore by %s only", back)
	}
	changed := src.Changed()
	waitChanged(t, changed, "renewal of a 15 s certificate")
	second := sourcetest.Current(t, src).Certificate.Leaf
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the renewal kept the serial")
	}
	// 2/3 of the 15 s left at issue is 10 s; allow for the time Vault
	// took to answer the first request.
	if gap := time.Since(start); gap < 9*time.Second {
		t.Errorf("renewed %s after the first issuance, want about 10 s (2/3 of the TTL counted from issue)", gap.Round(time.Millisecond))
	}
	// The next one is again at least the floor away: no loop.
	changed = src.Changed()
	renewed := time.Now()
	waitChanged(t, changed, "second renewal")
	if gap := time.Since(renewed); gap < 5*time.Second {
		t.Errorf("renewed again %s later, want at least the 5 s floor", gap.Round(time.Millisecond))
	}
}

// TestVaultDownAtStart: New fails at once, naming Vault's address.
func TestVaultDownAtStart(t *testing.T) {
	v := startVault(t, false)
	v.stop(t)
	log, _ := newLog(t, v.rootToken)
	start := time.Now()
	_, err := vault.New(context.Background(), v.config("alpha"), vault.WithLogger(log))
	if !errors.Is(err, vault.ErrUnavailable) {
		t.Fatalf("New with Vault down: %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), v.addr) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not name %s and why", err, v.addr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("New took %s to fail: it should not retry", d)
	}
	noSecrets(t, "the error", err.Error(), v.rootToken)
}

// TestVaultDownAtRenewal: while Vault is down the current certificate
// stays in use and the retries back off; once Vault runs again on the
// same address, the next retry issues a certificate.
func TestVaultDownAtRenewal(t *testing.T) {
	v := startVault(t, false)
	log, logs := newLog(t, v.rootToken)
	clk := newFakeClock()
	src := newSource(t, v.config("alpha"), vault.WithClock(clk), vault.WithRand(highest),
		vault.WithLogger(log), vault.WithMaxBackoff(4*time.Second))
	before := sourcetest.Current(t, src)
	due := clk.NextWait(t, time.Minute)

	v.stop(t)
	clk.Advance(due)
	var waits []time.Duration
	for range 4 {
		d := clk.NextWait(t, time.Minute)
		waits = append(waits, d)
		if c := sourcetest.Current(t, src); c != before {
			t.Fatal("the credentials changed while Vault was down")
		}
		handshake(t, src) // the current certificate still serves
		err := src.Err()
		if !errors.Is(err, vault.ErrUnavailable) || !strings.Contains(err.Error(), v.addr) {
			t.Fatalf("Err while Vault is down: %v, want ErrUnavailable naming %s", err, v.addr)
		}
		clk.Advance(d)
	}
	// 1 s doubling, capped at WithMaxBackoff.
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("retries %v apart, want %v", waits, want)
	}
	if !strings.Contains(logs.String(), "the current one stays in use") {
		t.Error("the outage was not logged")
	}

	v.start(t)
	changed := src.Changed()
	clk.Advance(clk.NextWait(t, time.Minute))
	waitChanged(t, changed, "recovery")
	after := sourcetest.Current(t, src)
	if after.Certificate.Leaf.SerialNumber.Cmp(before.Certificate.Leaf.SerialNumber) == 0 {
		t.Error("recovered with the same certificate")
	}
	// The restarted dev server has a new PKI: the roots follow it.
	root, err := pemfile.ReadCert(v.rootCA)
	if err != nil {
		t.Fatal(err)
	}
	if !after.Roots[len(after.Roots)-1].Equal(root) {
		t.Error("the roots are not the restarted Vault's CA chain")
	}
	if err := src.Err(); err != nil {
		t.Errorf("Err after recovery: %v", err)
	}
	handshake(t, src)
}

// handshake runs one mTLS handshake with src on both sides.
func handshake(t *testing.T, src credentials.Source) {
	t.Helper()
	cn := sourcetest.Current(t, src).Certificate.Leaf.Subject.CommonName
	c1, c2 := net.Pipe()
	// The pipes, not the TLS conns, are closed: a close_notify on an
	// unbuffered pipe nobody reads would wait out its 5 s deadline.
	defer c1.Close()
	defer c2.Close()
	srv := tls.Server(c1, credentials.ServerConfig(src, credentials.AuthorizeIdentity(cn)))
	cli := tls.Client(c2, credentials.ClientConfig(src, credentials.AuthorizeIdentity(cn)))
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

// TestTokenRejected: a token Vault does not know fails New; a token
// revoked while the source runs fails the next issuance. Both are clear
// errors (ErrTokenRejected, saying what to do), surfaced by Err and the
// log, and never show the token.
func TestTokenRejected(t *testing.T) {
	v := startVault(t, false)

	t.Run("bad token", func(t *testing.T) {
		const bad = "hvs.not-a-token-vault-knows"
		log, _ := newLog(t, bad, v.rootToken)
		cfg := v.config("alpha")
		cfg.Token = bad
		_, err := vault.New(context.Background(), cfg, vault.WithLogger(log))
		if !errors.Is(err, vault.ErrTokenRejected) {
			t.Fatalf("New with a bad token: %v, want ErrTokenRejected", err)
		}
		for _, want := range []string{v.addr, "refused the token", "VAULT_TOKEN"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		noSecrets(t, "the error", err.Error(), bad)
	})

	t.Run("revoked token", func(t *testing.T) {
		token := v.cli(t, "token", "create", "-field=token", "-ttl=1h")
		log, logs := newLog(t, token, v.rootToken)
		clk := newFakeClock()
		cfg := v.config("alpha")
		cfg.Token = token
		src := newSource(t, cfg, vault.WithClock(clk), vault.WithRand(highest), vault.WithLogger(log))
		before := sourcetest.Current(t, src)
		due := clk.NextWait(t, time.Minute) // the certificate's renewal, before the token's

		v.cli(t, "token", "revoke", token)
		clk.Advance(due)
		clk.NextWait(t, time.Minute)
		err := src.Err()
		if !errors.Is(err, vault.ErrTokenRejected) {
			t.Fatalf("Err after the token was revoked: %v, want ErrTokenRejected", err)
		}
		for _, want := range []string{v.addr, "refused the token", "revoked", "VAULT_TOKEN"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		noSecrets(t, "the error", err.Error(), token)
		if sourcetest.Current(t, src) != before {
			t.Error("the credentials changed")
		}
		if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "refused the token") {
			t.Errorf("the refusal was not logged as an error")
		}
	})

	t.Run("token renewed", func(t *testing.T) {
		token := v.cli(t, "token", "create", "-field=token", "-ttl=30s", "-explicit-max-ttl=1h")
		log, _ := newLog(t, token, v.rootToken)
		clk := newFakeClock()
		cfg := v.config("alpha")
		cfg.Token, cfg.TTL = token, time.Hour
		src := newSource(t, cfg, vault.WithClock(clk), vault.WithLogger(log))
		due := clk.NextWait(t, time.Minute)
		if due > 25*time.Second || due < 15*time.Second {
			t.Errorf("token renewal in %s, want at 2/3 of its 30 s TTL", due)
		}
		clk.Advance(due)
		clk.NextWait(t, time.Minute)
		var lookup struct {
			Data struct {
				LastRenewal json.Number `json:"last_renewal_time"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(v.cli(t, "token", "lookup", "-format=json", token)), &lookup); err != nil {
			t.Fatal(err)
		}
		if n, _ := lookup.Data.LastRenewal.Int64(); n == 0 {
			t.Error("Vault has no renewal of the token")
		}
		if err := src.Err(); err != nil {
			t.Errorf("Err after renewing the token: %v", err)
		}
	})
}

// TestRoleRefusesName: a trust domain outside the role's allowed_domains
// is refused by Vault, and the error says it was the role, in Vault's
// words.
func TestRoleRefusesName(t *testing.T) {
	v := startVault(t, false)
	log, _ := newLog(t, v.rootToken)
	cfg := v.config("alpha")
	cfg.TrustDomain = "evil.example"
	_, err := vault.New(context.Background(), cfg, vault.WithLogger(log))
	if !errors.Is(err, vault.ErrRefused) {
		t.Fatalf("New with a name the role refuses: %v, want ErrRefused", err)
	}
	for _, want := range []string{"PKI role at pki_int/issue/mesh-agent", "refused", "alpha.evil.example", "not allowed by this role", "allowed_domains"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestSignPath: with a sign path the key is made here and only a CSR goes
// to Vault.
func TestSignPath(t *testing.T) {
	v := startVault(t, false)
	log, _ := newLog(t, v.rootToken)
	cfg := v.config("alpha")
	cfg.PKIPath = "pki_int/sign/mesh-agent"
	c := sourcetest.Current(t, newSource(t, cfg, vault.WithLogger(log)))
	if _, ok := c.Certificate.PrivateKey.(*rsa.PrivateKey); !ok {
		t.Errorf("key %T, want the RSA key made here", c.Certificate.PrivateKey)
	}
	if got := c.Certificate.Leaf.Subject.CommonName; got != "alpha.mcp-mesh.local" {
		t.Errorf("common name %q", got)
	}
}

// TestTLSToVault: MCP_MESH_TLS_CA verifies Vault's own certificate;
// without it, the system roots refuse Vault's dev CA, and the error says
// to set it.
func TestTLSToVault(t *testing.T) {
	v := startVault(t, true)
	if !strings.HasPrefix(v.addr, "https://") || v.caCert == "" {
		t.Fatalf("scripts/vault.sh started %s with CA %q, want https", v.addr, v.caCert)
	}
	log, _ := newLog(t, v.rootToken)
	newSource(t, v.config("alpha"), vault.WithLogger(log))

	cfg := v.config("alpha")
	cfg.CAFile = ""
	_, err := vault.New(context.Background(), cfg, vault.WithLogger(log))
	var unknown x509.UnknownAuthorityError
	if !errors.Is(err, vault.ErrUnavailable) || !errors.As(err, &unknown) {
		t.Fatalf("New without Vault's CA: %v, want ErrUnavailable for an unknown authority", err)
	}
	if !strings.Contains(err.Error(), "MCP_MESH_TLS_CA") {
		t.Errorf("error %q does not say to set MCP_MESH_TLS_CA", err)
	}
}
