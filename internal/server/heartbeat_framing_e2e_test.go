package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/server"
)

// TestHeartbeatFraming checks how a heartbeat's body is read and its
// answer framed, on one kept-alive mTLS connection: an answer of any size
// carries its Content-Length and is never chunked (net/http says the
// length of a small one, meshd that of a large one); a body that says its
// length is read in full, a chunked one too, and a body past the 1 MiB
// bound is refused with 413 body_too_large whether it says its length or
// not.
func TestHeartbeatFraming(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	cert, _ := agentCert(t, e.ca.auth, "framing", "n1")
	cfg := e.tlsConfig(&cert)
	cfg.NextProtos = []string{"http/1.1"}

	// many is a registration whose answer resolves 120 tools' dependencies:
	// several kilobytes, past net/http's buffer.
	many := heartbeat("framing", 9000)
	var tools []map[string]any
	for i := range 120 {
		tools = append(tools, map[string]any{"function_name": fmt.Sprintf("forecast_function_%03d", i), "capability": fmt.Sprintf("cap%03d", i),
			"dependencies": []map[string]any{{"capability": "geocode"}}})
	}
	many["tools"] = tools

	small, err := json.Marshal(heartbeat("framing", 9000))
	if err != nil {
		t.Fatal(err)
	}
	large, err := json.Marshal(many)
	if err != nil {
		t.Fatal(err)
	}

	conn := e.dial(&cert)
	br := bufio.NewReader(conn.conn)
	// send writes one request and reads its answer; early, a request
	// meshd may refuse before reading it all, whose write is left to
	// fail in the background once meshd closes the connection.
	send := func(req string, body []byte, chunked, early bool) *http.Response {
		t.Helper()
		conn.conn.SetDeadline(time.Now().Add(eventually.Bound))
		var b bytes.Buffer
		b.WriteString(req)
		if chunked {
			b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
			for rest := body; len(rest) > 0; {
				n := min(len(rest), 1000)
				fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
				rest = rest[n:]
			}
			b.WriteString("0\r\n\r\n")
		} else {
			fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
		}
		if early {
			go conn.conn.Write(b.Bytes())
		} else if _, err := conn.conn.Write(b.Bytes()); err != nil {
			t.Fatalf("write: %v", err)
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
		if err != nil {
			t.Fatalf("read the answer: %v", err)
		}
		return resp
	}
	const post = "POST /heartbeat HTTP/1.1\r\nHost: meshd\r\nContent-Type: application/json\r\n"

	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
		large   bool // the answer is past net/http's buffer
	}{
		{"registration, length said", small, false, false},
		{"unchanged, length said", small, false, false},
		{"unchanged, chunked", small, true, false},
		{"many tools, length said", large, false, true},
		{"many tools unchanged, chunked", large, true, true},
		{"back to few, length said", small, false, false},
	} {
		resp := send(post, tc.body, tc.chunked, false)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: read the body: %v", tc.name, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", tc.name, resp.StatusCode, got)
		}
		if len(resp.TransferEncoding) != 0 || resp.ContentLength != int64(len(got)) {
			t.Errorf("%s: Transfer-Encoding %q, Content-Length %d for a %d-byte answer; want the length said, not chunked", tc.name, resp.TransferEncoding, resp.ContentLength, len(got))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q, want application/json", tc.name, ct)
		}
		var answer struct {
			AgentID string                     `json:"agent_id"`
			Deps    map[string]json.RawMessage `json:"dependencies_resolved"`
		}
		if err := json.Unmarshal(got, &answer); err != nil || answer.AgentID != "framing" {
			t.Fatalf("%s: answer %s (%v)", tc.name, got, err)
		}
		if tc.large && (len(got) <= 4096 || len(answer.Deps) != 120) {
			t.Errorf("%s: a %d-byte answer resolving %d tools; want past 4096 bytes and 120", tc.name, len(got), len(answer.Deps))
		}
	}

	// Past the bound: refused whether the body says its length or not.
	huge := []byte(`{"agent_id":"framing","description":"` + strings.Repeat("x", 1<<20) + `"}`)
	for _, chunked := range []bool{false, true} {
		c := e.dial(&cert)
		conn, br = c, bufio.NewReader(c.conn)
		resp := send(post, huge, chunked, true)
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(got), "body_too_large") {
			t.Errorf("a body past 1 MiB (chunked %v): %d %s, want 413 body_too_large", chunked, resp.StatusCode, got)
		}
	}
}
