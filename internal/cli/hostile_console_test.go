package cli_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/cli"
	"github.com/meshtrust/meshtrust/internal/eventually"
)

// rawRequest sends req (request line and headers, CRLF-terminated, as
// given) to addr and returns the status code.
func rawRequest(t *testing.T, addr, req string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually.Bound))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// login opens the printed URL in a fresh cookie jar, following the
// redirect, and returns the client, its jar and the last answer.
func (rc *runningConsole) login(t *testing.T) (*http.Client, *cookiejar.Jar, *http.Response) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: eventually.Bound}
	resp, err := browser.Get(rc.URL.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return browser, jar, resp
}

// TestHostileConsoleProxyRequestForms: request forms a client other than a
// browser can send reach nothing but the console's canonical paths, and
// without a session not even those: absolute-form targets naming another
// path or host, CONNECT, HTTP/1.0 without a Host, an Upgrade, a
// X-Forwarded-For; the login URL still works once afterwards.
func TestHostileConsoleProxyRequestForms(t *testing.T) {
	m := startMeshd(t)
	rc := m.startConsole()
	addr := rc.URL.Host
	for _, tc := range []struct {
		req  string
		want int
	}{
		{"GET http://" + addr + "/admin/agents HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 404},
		{"GET http://" + addr + "/console/../admin/agents HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 404},
		{"GET http://attacker.example/console/agents HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", http.StatusMisdirectedRequest},
		{"GET //admin/agents HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 404},
		{"CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 404},
		{"GET /console/agents HTTP/1.0\r\n\r\n", http.StatusMisdirectedRequest},
		{"GET /console/events HTTP/1.1\r\nHost: " + addr + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", http.StatusUnauthorized},
		{"GET /console/agents HTTP/1.1\r\nHost: " + addr + "\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\r\n", http.StatusUnauthorized},
		{"POST /console/revoke HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 23\r\n\r\ntarget=opus%40ct111&c=1", http.StatusUnauthorized},
		{"POST /admin/console/login HTTP/1.1\r\nHost: " + addr + "\r\nContent-Length: 0\r\n\r\n", 404},
	} {
		if code := rawRequest(t, addr, tc.req); code != tc.want {
			t.Errorf("%q: %d, want %d", tc.req, code, tc.want)
		}
	}
	_, _, resp := rc.login(t)
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/console/" {
		t.Fatalf("the login URL after the hostile requests: %d at %s", resp.StatusCode, resp.Request.URL)
	}
}

// TestHostileConsoleProxyOtherUser: another local user reaching the
// proxy's port is refused before anything is forwarded (every forwarded
// request carries meshctl's admin credential): the login URL it tries
// stays good for the operator, and a session cookie it stole (a server
// of its own on another loopback port receives the browser's cookies for
// 127.0.0.1) gets it nothing. The other user is curl run as nobody.
func TestHostileConsoleProxyOtherUser(t *testing.T) {
	if runtime.GOOS != "linux" || os.Getuid() != 0 {
		t.Skip("needs root on Linux to run a client as another uid")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("needs curl to send a request as another uid")
	}
	m := startMeshd(t)
	rc := m.startConsole()
	asNobody := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(curl, append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl as uid 65534: %v (%s)", err, out)
		}
		return string(out)
	}
	if code := asNobody(rc.URL.String()); code != "403" {
		t.Fatalf("the login URL from uid 65534: %s, want 403", code)
	}
	browser, jar, resp := rc.login(t)
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/console/" {
		t.Fatalf("the operator's login after uid 65534 tried it: %d at %s, want the console", resp.StatusCode, resp.Request.URL)
	}
	var cookie string
	for _, c := range jar.Cookies(resp.Request.URL) {
		cookie = c.Name + "=" + c.Value
	}
	if cookie == "" {
		t.Fatal("no session cookie")
	}
	page := "http://" + rc.URL.Host + "/console/agents"
	if code := asNobody("-H", "Cookie: "+cookie, page); code != "403" {
		t.Fatalf("the operator's session cookie from uid 65534: %s, want 403", code)
	}
	if r, err := browser.Get(page); err != nil || r.StatusCode != 200 {
		t.Fatalf("the operator's session afterwards: %v %v", r, err)
	}
}

// TestLoopbackPeerUID: the kernel names this process's uid as the owner of
// a loopback connection it opened, on 127.0.0.1 and on ::1.
func TestLoopbackPeerUID(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/net/tcp is Linux's")
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Logf("%s: %v (no such loopback here)", host, err)
			continue
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, ok := <-accepted
		if !ok {
			t.Fatal("no connection accepted")
		}
		defer s.Close()
		uid, err := cli.LoopbackPeerUID(s.LocalAddr().(*net.TCPAddr), s.RemoteAddr().(*net.TCPAddr))
		if err != nil || uid != uint32(os.Getuid()) {
			t.Errorf("%s: uid %d, %v; want %d", host, uid, err, os.Getuid())
		}
	}
}

// TestConsoleProxyPeerCheckStress (-race): many connections, each with
// several requests, at once: each connection's owner is looked up once
// and every request is answered (401 without a session, never 403).
func TestConsoleProxyPeerCheckStress(t *testing.T) {
	m := startMeshd(t)
	rc := m.startConsole()
	page := "http://" + rc.URL.Host + "/console/agents"
	var wg sync.WaitGroup
	errs := make(chan error, 8*10)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: eventually.Bound}
			for range 10 {
				resp, err := c.Get(page)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					errs <- fmt.Errorf("%s: %s, want 401", page, resp.Status)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
