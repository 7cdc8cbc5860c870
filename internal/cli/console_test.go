package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/cli"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
)

// runningConsole is `meshctl console` running in process.
type runningConsole struct {
	// URL is the one-time login URL it printed.
	URL  *url.URL
	stop func() result
}

// startConsole runs `meshctl console --json` with args against m until the
// test ends (or stop), and returns the URL it printed.
func (m *testMeshd) startConsole(args ...string) *runningConsole {
	m.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb logtest.Buffer // safe while the command writes
	done := make(chan int, 1)
	go func() {
		done <- cli.Execute(ctx, withFlags(append([]string{"console", "--json"}, args...), "--data-dir", m.dataDir,
			"--root-dir", m.root, "--ca-dir", m.caDir, "--trust-domain", "mesh.local"), &out, &errb)
	}()
	var printed struct {
		URL       string    `json:"url"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	eventually.True(m.t, "meshctl console prints its URL", func() bool {
		select {
		case code := <-done:
			m.t.Fatalf("meshctl console exited %d before printing a URL:\n%s%s", code, out.String(), errb.String())
		default:
		}
		return json.Unmarshal([]byte(out.String()), &printed) == nil
	})
	u, err := url.Parse(printed.URL)
	if err != nil || u.Scheme != "http" || !strings.HasPrefix(u.Host, "127.0.0.1:") || !strings.HasPrefix(u.Path, "/console/login") || u.Query().Get("token") == "" {
		m.t.Fatalf("meshctl console printed %q", printed.URL)
	}
	var once sync.Once
	var res result
	stop := func() result {
		once.Do(func() {
			cancel()
			select {
			case code := <-done:
				res = result{code, out.String(), errb.String()}
			case <-time.After(eventually.Bound):
				m.t.Fatal("meshctl console did not stop once interrupted")
			}
		})
		return res
	}
	m.t.Cleanup(func() { stop() })
	return &runningConsole{URL: u, stop: stop}
}

// rawGet sends one request line and headers exactly as given (no client
// cleans the path), and returns the status code.
func rawGet(t *testing.T, addr, target, host string) int {
	t.Helper()
	return rawRequest(t, addr, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, host))
}

// TestConsoleProxy: meshctl console serves the console through a loopback
// port: the URL logs in once; only the console's canonical paths are
// forwarded (no /admin/…, no dot segments, nothing encoded); a Host that
// is not the port's own is refused (DNS rebinding); it stops when
// interrupted.
func TestConsoleProxy(t *testing.T) {
	m := startMeshd(t)
	rc := m.startConsole()
	addr := rc.URL.Host
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: eventually.Bound}
	resp, err := browser.Get(rc.URL.String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/console/" || !strings.Contains(string(body), "uid ") {
		t.Fatalf("the login URL: %d at %s, want the console's first page naming the admin socket's uid:\n%.1500s", resp.StatusCode, resp.Request.URL, body)
	}
	// The session works through the proxy; the login does not twice.
	if r, err := browser.Get("http://" + addr + "/console/certificates"); err != nil || r.StatusCode != 200 {
		t.Fatalf("a page with the session: %v %v", r, err)
	}
	if code := rawGet(t, addr, rc.URL.RequestURI(), addr); code != http.StatusUnauthorized {
		t.Errorf("the login URL used twice: %d, want 401", code)
	}

	for _, tc := range []struct {
		target, host string
		want         int
	}{
		{"/admin/agents", addr, 404},
		{"/health", addr, 404},
		{"/metrics", addr, 404},
		{"/", addr, 404},
		{"/console", addr, 404},
		{"/console/../admin/agents", addr, 404},
		{"/console/%2e%2e/admin/agents", addr, 404},
		{"/console/%2E%2E/admin/agents", addr, 404},
		{"/console//admin/agents", addr, 404},
		{"/console/./agents", addr, 404},
		{"/console/agents%2f..%2f..%2fadmin%2fagents", addr, 404},
		{"/console/agents", "attacker.example:" + strings.Split(addr, ":")[1], http.StatusMisdirectedRequest},
		{"/console/agents", "localhost:" + strings.Split(addr, ":")[1], http.StatusMisdirectedRequest},
		{"/console/agents", "127.0.0.1", http.StatusMisdirectedRequest},
		{"/console/login", "attacker.example", http.StatusMisdirectedRequest},
	} {
		if code := rawGet(t, addr, tc.target, tc.host); code != tc.want {
			t.Errorf("GET %s (Host %s): %d, want %d", tc.target, tc.host, code, tc.want)
		}
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+addr+"/console/agents", nil)
	if r, err := browser.Do(req); err != nil || r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE through the proxy: %v %v, want 405", r, err)
	}

	if res := rc.stop(); res.code != 0 {
		t.Fatalf("meshctl console once interrupted: exit %d\n%s", res.code, res.output())
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("the console port still accepts connections after meshctl stopped")
	}
}

// TestConsoleListenLoopbackOnly: --listen takes a loopback IP address
// only, and a refused one mints no login.
func TestConsoleListenLoopbackOnly(t *testing.T) {
	m := startMeshd(t)
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "localhost:0", "example.com:80", "127.0.0.1"} {
		r := m.ctl("console", "--listen", addr)
		requireRefused(t, "console --listen "+addr, r, "--listen")
	}
}
