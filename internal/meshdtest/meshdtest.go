// Package meshdtest is test support for tests that run meshd as a
// process: one request to its admin API over the unix socket in its data
// directory, and one request to any of its routes over a given client.
package meshdtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// Call does one request over c, body sent as JSON unless nil, and returns
// its status and body: 0 and the error's text on a transport error.
func Call(c *http.Client, method, url string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	resp, err := c.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// Admin does one request to the admin API of the meshd whose data
// directory is dataDir, on its socket admin.sock, and returns its status
// and body; it fails tb when the socket does not answer.
func Admin(tb testing.TB, dataDir, method, path string, body any) (int, []byte) {
	tb.Helper()
	sock := filepath.Join(dataDir, "admin.sock")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	code, out := Call(c, method, "http://meshd"+path, body)
	if code == 0 {
		tb.Fatalf("admin %s %s on %s: %s", method, path, sock, out)
	}
	return code, out
}
