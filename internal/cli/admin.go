package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// adminTimeout bounds one admin API call, connecting included.
const adminTimeout = 30 * time.Second

// adminFlags say where meshd's admin API is: the unix socket in meshd's
// data directory, or an mTLS listener (meshd --admin-listen).
type adminFlags struct {
	// dataDir is the shared --data-dir (config.Mesh.DataDir).
	dataDir *string
	url     string
	cert    string
	key     string
	caCert  string
}

func (f *adminFlags) register(pf *pflag.FlagSet) {
	pf.StringVar(&f.url, "admin-url", os.Getenv("MESHTRUST_ADMIN_URL"), "meshd's mTLS admin API, https://host:port (meshd --admin-listen; env MESHTRUST_ADMIN_URL)")
	pf.StringVar(&f.cert, "cert", os.Getenv("MESHTRUST_ADMIN_CERT"), "admin identity's certificate for --admin-url, e.g. from 'meshctl ca issue-client admin' (env MESHTRUST_ADMIN_CERT)")
	pf.StringVar(&f.key, "key", os.Getenv("MESHTRUST_ADMIN_KEY"), "admin identity's key for --admin-url (env MESHTRUST_ADMIN_KEY)")
	pf.StringVar(&f.caCert, "cacert", os.Getenv("MESHTRUST_ADMIN_CACERT"), "CA that signed meshd's certificate, for --admin-url (default: the mesh root in --ca-dir; env MESHTRUST_ADMIN_CACERT)")
}

// wanted reports whether the caller pointed meshctl at a running meshd:
// --data-dir or --admin-url on the command line, MESHTRUST_ADMIN_URL, or
// MESHTRUST_DATA_DIR with an admin socket in it. Commands that also work
// offline (ca revoke) use it to choose.
func (f *adminFlags) wanted(cmd *cobra.Command) bool {
	fl := cmd.Flags()
	if fl.Changed("data-dir") || fl.Changed("admin-url") || f.url != "" {
		return true
	}
	if *f.dataDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(*f.dataDir, "admin.sock"))
	return err == nil
}

// adminClient calls meshd's admin API.
type adminClient struct {
	http *http.Client
	base string // URL prefix; the host is ignored on the socket
	// where and hint describe the endpoint in errors.
	where, hint string
}

// adminClient connects to the admin API the flags name. A flag given on
// the command line beats the other one's environment variable; both flags
// on the command line is an error; of the two variables alone,
// MESHTRUST_ADMIN_URL wins.
func (g *globals) adminClient(cmd *cobra.Command) (*adminClient, error) {
	f := &g.admin
	fl := cmd.Flags()
	useURL := f.url != ""
	switch {
	case fl.Changed("data-dir") && fl.Changed("admin-url"):
		return nil, errors.New("give --data-dir (the unix socket) or --admin-url (mTLS), not both")
	case fl.Changed("data-dir"):
		useURL = false
	case fl.Changed("admin-url"):
		useURL = true
	}
	if useURL {
		_, caDir, _ := g.caDirs()
		return f.tlsClient(caDir)
	}
	if *f.dataDir == "" {
		return nil, errors.New("no meshd given: pass --data-dir <meshd's data directory> (for its admin socket) or --admin-url https://host:port, or set MESHTRUST_DATA_DIR / MESHTRUST_ADMIN_URL")
	}
	sock := filepath.Join(*f.dataDir, "admin.sock")
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}
	return &adminClient{
		http:  &http.Client{Transport: tr, Timeout: adminTimeout},
		base:  "http://meshd",
		where: sock,
		hint:  fmt.Sprintf("is meshd running with --data-dir %s? (or pass --admin-url)", *f.dataDir),
	}, nil
}

func (f *adminFlags) tlsClient(caDir string) (*adminClient, error) {
	u, err := url.Parse(f.url)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("--admin-url %q: want https://host:port", f.url)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("--admin-url %q: meshd's admin API over the network is mTLS only; use https://host:port", f.url)
	}
	if f.cert == "" || f.key == "" {
		return nil, errors.New("--admin-url needs --cert and --key: an admin identity's certificate (`meshctl ca issue-client admin` gives admin@external, meshd's default --admin-identity)")
	}
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	caFile := f.caCert
	if caFile == "" {
		// The mesh root as the CA directory keeps it; without it, the
		// system roots.
		if p := filepath.Join(caDir, "intermediate", "root.crt"); pemfile.Exists(p) {
			caFile = p
		}
	}
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		certs, err := pemfile.ParseCerts(data)
		if err != nil {
			return nil, fmt.Errorf("--cacert %s: %w", caFile, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		for _, c := range certs {
			cfg.RootCAs.AddCert(c)
		}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	return &adminClient{
		http:  &http.Client{Transport: tr, Timeout: adminTimeout},
		base:  strings.TrimSuffix(u.String(), "/"),
		where: u.Redacted(),
		hint:  "is meshd running with --admin-listen there, and is your certificate an --admin-identity?",
	}, nil
}

// Close releases the client's idle connections.
func (c *adminClient) Close() { c.http.CloseIdleConnections() }

// apiError is an answer of the admin API outside 2xx.
type apiError struct {
	Status int
	// Message is the server's {"error": ...}, or a summary of the body.
	Message string
}

func (e *apiError) Error() string { return e.Message }

// do sends body (JSON, if not nil) to path and returns the answer's body,
// or an error that reads well on its own: the server's message for a
// refusal, what to check when meshd cannot be reached.
func (c *adminClient) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.reachError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("meshd's admin API at %s: reading the answer: %w", c.where, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, parseAPIError(resp, data)
	}
	return data, nil
}

// call is do that also decodes the answer into out, when out is not nil.
func (c *adminClient) call(ctx context.Context, method, path string, body, out any) ([]byte, error) {
	data, err := c.do(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("meshd's admin API at %s answered %s %s with something that is not the expected JSON: %w", c.where, method, path, err)
		}
	}
	return data, nil
}

func (c *adminClient) reachError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Timeout() {
		return fmt.Errorf("meshd's admin API at %s did not answer within %s: %w", c.where, adminTimeout, err)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach meshd's admin API at %s: %s", c.where, c.hint)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot reach meshd's admin API at %s: permission denied; the socket is meshd's user's only (0600), so run meshctl as that user", c.where)
	}
	return fmt.Errorf("cannot reach meshd's admin API at %s: %w (%s)", c.where, err, c.hint)
}

func parseAPIError(resp *http.Response, data []byte) error {
	var eb meshapi.ErrorResponse
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		return &apiError{Status: resp.StatusCode, Message: eb.Error}
	}
	msg := strings.TrimSpace(string(data))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = "(empty body)"
	}
	return &apiError{Status: resp.StatusCode, Message: fmt.Sprintf("meshd answered %s: %s", resp.Status, msg)}
}

// printRaw prints a JSON answer of the server indented.
func printRaw(w io.Writer, data []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(data), "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// revokeViaAdmin is `ca revoke` against a running meshd: meshd's CA
// revokes, and meshd evicts the certificate's agents and closes its
// connections before answering.
func (g *globals) revokeViaAdmin(cmd *cobra.Command, target, reason string) error {
	c, err := g.adminClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	var out meshapi.RevokeResponse
	if _, err := c.call(cmd.Context(), http.MethodPost, meshapi.PathAdminRevoke, meshapi.RevokeRequest{Target: target, Reason: reason}, &out); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if g.jsonOut {
		// The offline path's output, so scripts need not care which ran.
		if err := printJSON(w, revokedCerts(out.Revoked)); err != nil {
			return err
		}
	} else {
		for _, rv := range out.Revoked {
			fmt.Fprintf(w, "revoked %s serial %s (%s)\n", rv.CommonName, rv.Serial, ca.Reason(rv.Reason))
		}
		printIdentityRevoked(w, out.Identity)
		fmt.Fprintf(w, "meshd applied the revocation: refused from now on, %d agent(s) evicted, %d connection(s) closed\n", out.EvictedAgents, out.ClosedConnections)
	}
	if out.Warning != "" {
		return errors.New(out.Warning)
	}
	return nil
}

// printIdentityRevoked says what revoking the identity name did ("" when a
// serial was revoked).
func printIdentityRevoked(w io.Writer, name string) {
	if name == "" {
		return
	}
	scope := ""
	if id, err := identity.Parse(name); err == nil && id.Kind == identity.KindNode {
		scope = " nor to its agents (*@" + id.Node + ")"
	}
	fmt.Fprintf(w, "revoked identity %s: every certificate of it is refused, and none is issued to it%s until `meshctl ca reinstate %s`\n", name, scope, name)
}

// reinstateViaAdmin is `ca reinstate` against a running meshd.
func (g *globals) reinstateViaAdmin(cmd *cobra.Command, name string) error {
	c, err := g.adminClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	var out meshapi.ReinstateResponse
	if _, err := c.call(cmd.Context(), http.MethodPost, meshapi.PathAdminReinstate, meshapi.ReinstateRequest{Identity: name}, &out); err != nil {
		return err
	}
	if g.jsonOut {
		return printJSON(cmd.OutOrStdout(), out)
	}
	fmt.Fprintln(cmd.OutOrStdout(), out.Message)
	return nil
}
