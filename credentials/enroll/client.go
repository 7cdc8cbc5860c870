package enroll

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// defaultTimeout bounds one call to meshd when the Client has no
// HTTPClient of its own.
const defaultTimeout = 30 * time.Second

// pemAccept asks for PEM, as GET /bundle answers.
var pemAccept = http.Header{"Accept": {"application/x-pem-file"}}

// maxAnswer bounds what is read of one answer of meshd.
const maxAnswer = 4 << 20

// Client calls meshd's enrollment API on its agent port: POST /enroll with
// a bootstrap credential, then POST /agent-cert and POST /renew over mTLS
// with the node's certificate.
//
// meshd is trusted through Roots, or, on first contact when the node has
// no copy of the mesh root yet, through RootFingerprint: the SHA-256 of the
// root's certificate, which the operator reads off `meshctl token create`
// or the CA directory and passes along out of band (as step-ca's
// `bootstrap --fingerprint` does). A Client with neither refuses to call.
//
// A Client is safe for concurrent use once its fields are set.
type Client struct {
	// Server is meshd's agent port, https://host:port.
	Server string
	// Roots are the CA certificates meshd's server certificate must chain
	// to, and the certificates meshd issues too. Usually the mesh root
	// (ca.crt of an enrolled node).
	Roots *x509.CertPool
	// RootFingerprint pins the mesh root by the hex SHA-256 of its DER
	// certificate (colons and a "sha256:" prefix are allowed). With no
	// Roots, the root is fetched from meshd's GET /bundle, kept only if
	// its hash matches, and meshd's certificate must chain to it. With
	// Roots, the verified chain must also end at the pinned root.
	RootFingerprint string
	// HTTPClient, if not nil, supplies the timeout and, if it is an
	// *http.Transport, the transport settings (proxy, dialer) of every
	// call. The Client always sets the TLS configuration itself, so trust
	// is never left to a default; any other kind of Transport is refused.
	HTTPClient *http.Client

	mu     sync.Mutex
	pinned *x509.CertPool // the root fetched and checked against RootFingerprint
}

// base returns the server URL without a trailing slash, and its host.
func (c *Client) base() (string, string, error) {
	u, err := url.Parse(c.Server)
	if err != nil || u.Host == "" {
		return "", "", fmt.Errorf("meshd URL %q: want https://host:port", c.Server)
	}
	if u.Scheme != "https" {
		return "", "", fmt.Errorf("meshd URL %q: enrollment runs over TLS only; use https://host:port", c.Server)
	}
	return strings.TrimSuffix(u.String(), "/"), u.Hostname(), nil
}

// ParseFingerprint normalises a SHA-256 certificate fingerprint to 64
// lowercase hex digits. It accepts upper case, colons between bytes and a
// "sha256:" or "SHA256:" prefix, the forms openssl and step print.
func ParseFingerprint(s string) (string, error) {
	f := strings.TrimSpace(s)
	if p, ok := strings.CutPrefix(strings.ToLower(f), "sha256:"); ok {
		f = p
	}
	f = strings.ToLower(strings.ReplaceAll(f, ":", ""))
	b, err := hex.DecodeString(f)
	if err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("root fingerprint %q: want the 64 hex digits of a SHA-256 (e.g. from `openssl x509 -noout -fingerprint -sha256 -in root.pem`)", s)
	}
	return f, nil
}

// roots returns the pool meshd's certificate must chain to: Roots, or the
// pinned root, fetched on first use.
func (c *Client) roots(ctx context.Context) (*x509.CertPool, error) {
	if c.Roots != nil {
		return c.Roots, nil
	}
	if c.RootFingerprint == "" {
		return nil, fmt.Errorf("%w: give the mesh root certificate (Roots, --ca-cert) or its SHA-256 fingerprint (RootFingerprint, --ca-fingerprint)", ErrNoTrust)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pinned != nil {
		return c.pinned, nil
	}
	root, err := c.bootstrap(ctx)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	c.pinned = pool
	return pool, nil
}

// bootstrap fetches GET /bundle from a meshd the node cannot verify yet,
// picks the root whose SHA-256 is the pin, and accepts the answer only if
// the server's own certificate chains to that root. Verification is
// deferred, never skipped: when meshd presents the pinned root in its
// handshake the chain is checked before the request is sent; otherwise it
// is checked against the root out of the bundle before anything of the
// answer is used. Nothing secret is sent on this connection.
func (c *Client) bootstrap(ctx context.Context) (*x509.Certificate, error) {
	pin, err := ParseFingerprint(c.RootFingerprint)
	if err != nil {
		return nil, err
	}
	base, host, err := c.base()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is verified by VerifyConnection and again below,
		// against the pinned root rather than the system's roots.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			for _, cert := range cs.PeerCertificates {
				if trust.Fingerprint(cert) == pin && selfSigned(cert) {
					return verifyServer(cs.PeerCertificates, nil, cert, host)
				}
			}
			return nil // root not presented: checked against the bundle's
		},
	}
	hc, err := c.httpClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hc.CloseIdleConnections()
	resp, data, err := c.send(ctx, hc, http.MethodGet, base+meshapi.PathBundle, pemAccept, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, apiError(meshapi.PathBundle, resp, data)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: GET /bundle answered without a TLS certificate", ErrUntrustedServer)
	}
	bundle, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%w: GET /bundle: %v", ErrUntrustedServer, err)
	}
	var root *x509.Certificate
	var seen []string
	for _, cert := range bundle {
		fp := trust.Fingerprint(cert)
		if fp == pin && selfSigned(cert) {
			root = cert
			break
		}
		seen = append(seen, fmt.Sprintf("%q %s", cert.Subject.CommonName, fp))
	}
	if root == nil {
		return nil, fmt.Errorf("%w: meshd at %s serves no root with SHA-256 fingerprint %s (its bundle has %s); check --ca-fingerprint against the mesh root, and that this is your meshd",
			ErrUntrustedServer, host, pin, strings.Join(seen, ", "))
	}
	if err := verifyServer(resp.TLS.PeerCertificates, bundle, root, host); err != nil {
		return nil, err
	}
	return root, nil
}

// verifyServer verifies a server's chain (leaf first) against root, with
// extra intermediates, for host.
func verifyServer(presented, extra []*x509.Certificate, root *x509.Certificate, host string) error {
	if len(presented) == 0 {
		return fmt.Errorf("%w: meshd presented no certificate", ErrUntrustedServer)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range append(append([]*x509.Certificate(nil), presented[1:]...), extra...) {
		inter.AddCert(c)
	}
	_, err := presented[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, DNSName: host,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("%w: meshd's certificate %q does not verify against the pinned root %q: %v", ErrUntrustedServer, presented[0].Subject.CommonName, root.Subject.CommonName, err)
	}
	return nil
}

// tlsConfig returns the configuration of a verified call, presenting
// client as the client certificate when it is not nil.
func (c *Client) tlsConfig(roots *x509.CertPool, client *tls.Certificate) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if client != nil {
		// Always present it: the certificate list meshd advertises may
		// name only its intermediates, which tls would not match.
		cert := client
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	if c.Roots != nil && c.RootFingerprint != "" {
		pin, err := ParseFingerprint(c.RootFingerprint)
		if err != nil {
			return nil, err
		}
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			for _, chain := range cs.VerifiedChains {
				if len(chain) > 0 && trust.Fingerprint(chain[len(chain)-1]) == pin {
					return nil
				}
			}
			return fmt.Errorf("%w: meshd's certificate does not chain to the root with SHA-256 fingerprint %s", ErrUntrustedServer, pin)
		}
	}
	return cfg, nil
}

// httpClient returns an HTTP client that uses cfg for TLS and never
// follows redirects: a credential is sent to the server named, no other.
func (c *Client) httpClient(cfg *tls.Config) (*http.Client, error) {
	timeout := defaultTimeout
	var tr *http.Transport
	if c.HTTPClient != nil {
		timeout = c.HTTPClient.Timeout
		switch t := c.HTTPClient.Transport.(type) {
		case nil:
		case *http.Transport:
			tr = t.Clone()
		default:
			return nil, fmt.Errorf("enroll: HTTPClient.Transport is a %T; the Client needs an *http.Transport (or none) so that it can set TLS itself", t)
		}
	}
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	tr.TLSClientConfig = cfg
	return &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// call sends body as JSON (when not nil) to route over a verified TLS
// connection, presenting client (when not nil), and decodes a 2xx answer
// into out.
func (c *Client) call(ctx context.Context, method, route string, client *tls.Certificate, hdr http.Header, body, out any) error {
	_, err := c.callHeader(ctx, method, route, client, hdr, body, out)
	return err
}

// callHeader is call, returning the answer's header too.
func (c *Client) callHeader(ctx context.Context, method, route string, client *tls.Certificate, hdr http.Header, body, out any) (http.Header, error) {
	base, _, err := c.base()
	if err != nil {
		return nil, err
	}
	roots, err := c.roots(ctx)
	if err != nil {
		return nil, err
	}
	cfg, err := c.tlsConfig(roots, client)
	if err != nil {
		return nil, err
	}
	hc, err := c.httpClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hc.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	resp, data, err := c.send(ctx, hc, method, base+route, hdr, rd)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, apiError(route, resp, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("%w: meshd answered %s %s with something that is not the expected JSON: %v", ErrUntrustedServer, method, route, err)
		}
	}
	return resp.Header, nil
}

// send performs one request and reads its answer.
func (c *Client) send(ctx context.Context, hc *http.Client, method, u string, hdr http.Header, body io.Reader) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, reachError(c.Server, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: reading meshd's answer: %v", ErrUnavailable, err)
	}
	return resp, data, nil
}

// reachError explains a request that got no answer. A refused certificate
// keeps its own sentinel; anything else is ErrUnavailable.
func reachError(server string, err error) error {
	if errors.Is(err, ErrUntrustedServer) {
		return err
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	if errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) {
		return fmt.Errorf("%w: meshd at %s: %v (is --ca-cert the mesh root, and the URL a name on meshd's certificate?)", ErrUntrustedServer, server, err)
	}
	return fmt.Errorf("%w: cannot reach meshd at %s: %v", ErrUnavailable, server, err)
}

// apiError builds the *Error of an answer outside 2xx.
func apiError(route string, resp *http.Response, data []byte) error {
	var eb meshapi.ErrorResponse
	msg := ""
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	} else {
		msg = strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		if msg == "" {
			msg = "(empty answer)"
		}
	}
	e := &Error{Route: route, Status: resp.StatusCode, Message: msg, err: sentinelFor(resp.StatusCode)}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = retryAfter(resp.Header)
	}
	return e
}
