package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshtrust/meshtrust/meshapi"
)

// maxConsoleBody bounds a request body the console proxy forwards: the
// console's forms are a few fields.
const maxConsoleBody = 64 << 10

func newConsoleCmd(g *globals) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Open meshd's operator console: a loopback port forwarded to the admin API, and a one-time login URL",
		Long: `Open meshd's operator console in a browser.

meshctl asks meshd's admin API (the socket of --data-dir, or --admin-url with
an admin certificate) for a one-time login, listens on a loopback port and
prints the URL to open. The browser exchanges the URL's token for a
short-lived session cookie; the session acts as the admin identity meshctl
authenticated as (the socket's uid, or the certificate's identity), which the
audit log names for every revocation made in the console.

The port forwards the console's pages (/console/…) and nothing else: no other
path of the admin API is reachable through it, and a request whose Host is
not the port's own address is refused (DNS rebinding). On Linux it serves
only connections of the user who ran meshctl (or, under sudo, SUDO_UID):
another local user reaching the port is refused. It runs until
interrupted.`,
		Example: `  meshctl --data-dir ./meshtrust-data console
  meshctl console --admin-url https://meshd:8443 --cert admin.crt --key admin.key --listen 127.0.0.1:8900`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := loopbackAddr(listen)
			if err != nil {
				return err
			}
			c, err := g.adminClient(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			target, err := url.Parse(c.base)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", addr, err)
			}
			defer ln.Close()
			var login meshapi.ConsoleLogin
			if _, err := c.call(cmd.Context(), http.MethodPost, meshapi.PathAdminConsoleLogin, nil, &login); err != nil {
				return err
			}
			if !strings.HasPrefix(login.Path, meshapi.PathConsole) {
				return fmt.Errorf("meshd answered a console login outside %s (%q); is it a meshd of this version?", meshapi.PathConsole, login.Path)
			}
			open := "http://" + ln.Addr().String() + login.Path
			w := cmd.OutOrStdout()
			if g.jsonOut {
				err = printJSON(w, struct {
					URL       string    `json:"url"`
					ExpiresAt time.Time `json:"expires_at"`
				}{open, login.ExpiresAt})
			} else {
				_, err = fmt.Fprintf(w, "Open %s\n(the URL works once, until %s; the console is served here until you interrupt meshctl)\n",
					open, login.ExpiresAt.Local().Format(time.Kitchen))
			}
			if err != nil {
				return err
			}
			proxy := newConsoleProxy(target, c.http.Transport, ln.Addr().String())
			proxy.uids = consoleUIDs()
			return serveConsole(cmd.Context(), ln, proxy)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "loopback address to serve the console on (127.0.0.1 or ::1; port 0 picks a free one)")
	addJSON(cmd, g)
	return cmd
}

// loopbackAddr checks that addr is host:port on a loopback IP address: the
// console's port must not be reachable from another machine.
func loopbackAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--listen %q: want a loopback host:port, such as 127.0.0.1:0 or [::1]:8900: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("--listen %q: the console listens on a loopback IP address only (127.0.0.1 or ::1), so no other machine reaches it", addr)
	}
	return net.JoinHostPort(ip.String(), port), nil
}

// serveConsole serves h on ln until ctx ends.
func serveConsole(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, &peerConn{conn: c})
		}}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Live streams never end by themselves: close what Shutdown cannot.
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// consoleProxy forwards the console's pages, and nothing else, from a
// loopback port to meshd's admin API.
type consoleProxy struct {
	// host is the listener's own address ("127.0.0.1:43117"): the only
	// Host a request may name.
	host  string
	proxy *httputil.ReverseProxy
	// uids are the local users whose connections are served (on Linux;
	// see peerAllowed); nil serves every local user.
	uids []uint32
	// peerUID names the owner of a connection's client end
	// (loopbackPeerUID; replaced in tests).
	peerUID func(local, remote *net.TCPAddr) (uint32, error)
}

// connKey is the context key of the proxy's accepted connection, a
// *peerConn.
type connKey struct{}

// peerConn is an accepted connection and, once its first request asked,
// whether its owner may use the proxy: the kernel's socket table is read
// once a connection, not once a request. A connection's requests are
// served one at a time; once orders them anyway.
type peerConn struct {
	conn net.Conn
	once sync.Once
	why  string
}

// consoleUIDs are the users whose browsers may use the proxy: meshctl's
// own uid and, when root runs it through sudo, the uid sudo names
// (SUDO_UID), whose browser opens the URL. Every request through the
// proxy acts with meshctl's admin credential: another local user must not
// reach the console through it, nor use a session cookie stolen by a
// server of theirs on another loopback port (cookies do not keep to a
// port).
func consoleUIDs() []uint32 {
	uids := []uint32{uint32(os.Getuid())}
	if os.Getuid() == 0 {
		if u, err := strconv.ParseUint(os.Getenv("SUDO_UID"), 10, 32); err == nil {
			uids = append(uids, uint32(u))
		}
	}
	return uids
}

// peerAllowed says why r's connection may not use the proxy, or "" if it
// may. Compared: the uid the kernel lists as the owner of the connection's
// client socket (/proc/net/tcp, only the kernel vouches for it) with the
// uids of consoleUIDs, as numbers. Where the kernel cannot be asked (not
// Linux) every local user is served, as the README says.
func (p *consoleProxy) peerAllowed(r *http.Request) string {
	if p.uids == nil {
		return ""
	}
	pc, ok := r.Context().Value(connKey{}).(*peerConn)
	if !ok {
		return "no connection"
	}
	pc.once.Do(func() { pc.why = p.connAllowed(pc.conn) })
	return pc.why
}

// connAllowed is peerAllowed for one connection.
func (p *consoleProxy) connAllowed(c net.Conn) string {
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		return "not a TCP connection"
	}
	uid, err := p.peerUID(local, remote)
	switch {
	case err != nil && runtime.GOOS != "linux":
		return ""
	case err != nil:
		return "its owner is unknown: " + err.Error()
	case slices.Contains(p.uids, uid):
		return ""
	}
	return fmt.Sprintf("uid %d is not the user who ran meshctl console", uid)
}

func newConsoleProxy(target *url.URL, tr http.RoundTripper, host string) *consoleProxy {
	return &consoleProxy{host: host, peerUID: loopbackPeerUID, proxy: &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// The console compares a POST's Origin with the Host it is
			// sent: the browser's, which ServeHTTP checked is this port.
			r.Out.Host = r.In.Host
		},
		Transport: tr,
		// Server-sent events reach the browser as they come.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			http.Error(w, "meshctl console cannot reach meshd's admin API: "+err.Error(), http.StatusBadGateway)
		},
	}}
}

// ServeHTTP forwards r if it comes from a user of consoleUIDs, names this port as its Host and a canonical
// path under meshapi.PathConsole with a method the console answers.
func (p *consoleProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if why := p.peerAllowed(r); why != "" {
		w.Header().Set("Connection", "close") // nothing more for it here
		http.Error(w, "meshctl console: this port serves the user who ran meshctl only; this connection's "+why, http.StatusForbidden)
		return
	}
	// The Host compared is the request's Host header as sent, exactly
	// this listener's address: a page of another origin that resolves
	// its own name to 127.0.0.1 (DNS rebinding) sends its own name.
	if r.Host != p.host {
		http.Error(w, "meshctl console: this port serves http://"+p.host+"/ only", http.StatusMisdirectedRequest)
		return
	}
	if !consolePath(r.URL) {
		http.NotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxConsoleBody)
	p.proxy.ServeHTTP(w, r)
}

// consolePath reports whether u's path is one the proxy forwards: under
// meshapi.PathConsole, in canonical form (no dot segments, no empty
// segments, nothing percent-encoded), so what meshd routes is the path
// compared here and no path reaches the rest of the admin API.
func consolePath(u *url.URL) bool {
	p := u.Path
	if u.RawPath != "" || strings.Contains(u.EscapedPath(), "%") || !strings.HasPrefix(p, meshapi.PathConsole) {
		return false
	}
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") {
		clean += "/"
	}
	return clean == p
}
