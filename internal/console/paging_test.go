package console_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/console"
)

// fleet is n live agents on ten nodes, and one evicted.
func fleet(n int) []console.Agent {
	out := make([]console.Agent, 0, n+1)
	for i := range n {
		node := fmt.Sprintf("ct%d", i%10)
		out = append(out, console.Agent{ID: fmt.Sprintf("agent-%d", i), Owner: fmt.Sprintf("agent-%d@%s", i, node), Node: node,
			Source: "localca", Status: "healthy", Endpoint: "https://10.0.0.1:9000", LastSeen: t0})
	}
	return append(out, console.Agent{ID: "gone", Owner: "gone@ct1", Node: "ct1", Status: "evicted", Reason: "revoked"})
}

// TestFleetPaging: the agents and certificates pages show a fleet a page
// at a time, with links to the pages beside, and filter it by name; a
// page out of range is the first, and the filter is shown escaped.
func TestFleetPaging(t *testing.T) {
	be := &fakeBackend{agents: fleet(1234)}
	for i := range 700 {
		be.certs = append(be.certs, console.Certificate{Serial: fmt.Sprintf("%x", 0x1000+i), CommonName: fmt.Sprintf("agent-%d@ct1", i),
			Kind: "agent", NotAfter: t0.Add(time.Duration(i) * time.Hour)})
	}
	h := newHarness(t, be, nil)
	ck := h.login("alice.mesh")
	rows := func(body, attr string) int { return strings.Count(body, attr+`="`) }
	for _, tc := range []struct {
		path      string
		rows      int
		wants     []string
		forbidden []string
	}{
		{"/console/agents", 500, []string{"1234 live", "1–500 of 1234", "page 1 of 3", `href="/console/agents?page=2"`, `data-evicted-agent-id="gone"`}, []string{`rel="prev"`}},
		{"/console/agents?page=3", 234, []string{"1001–1234 of 1234", `href="/console/agents?page=2"`}, []string{`rel="next"`}},
		{"/console/agents?page=99", 500, []string{"1–500 of 1234"}, nil},
		{"/console/agents?q=agent-12", 45, []string{"1234 live", "1–45 of 45", `value="agent-12"`}, []string{`rel="next"`, "data-evicted-agent-id"}},
		{"/console/agents?q=ct3", 124, []string{"1–124 of 124"}, nil},
		{"/console/agents?q=nothing-like-it", 0, []string{"none match", "No live agent matches."}, nil},
		{"/console/agents?q=%22%3E%3Cscript%3E", 0, []string{"&#34;&gt;&lt;script&gt;"}, []string{`"><script>`}},
		{"/console/certificates?page=2", 200, []string{"501–700 of 700", `href="/console/certificates"`}, nil},
		{"/console/certificates?q=agent-69", 11, []string{"1–11 of 11"}, nil},
	} {
		resp, body := h.get(tc.path, ck)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %s", tc.path, resp.Status)
			continue
		}
		attr := "data-agent-id"
		if strings.Contains(tc.path, "certificates") {
			attr = "data-serial"
		}
		if n := rows(body, attr); n != tc.rows {
			t.Errorf("GET %s shows %d rows, want %d", tc.path, n, tc.rows)
		}
		for _, w := range tc.wants {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s lacks %q", tc.path, w)
			}
		}
		for _, f := range tc.forbidden {
			if strings.Contains(body, f) {
				t.Errorf("GET %s shows %q", tc.path, f)
			}
		}
	}
}

// BenchmarkAgentsPage renders the agents page of a fleet, as the live
// refresh fetches it after every change: one page of 500 rows whatever
// the fleet's size.
func BenchmarkAgentsPage(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c, err := console.New(console.Config{Backend: &fakeBackend{agents: fleet(n)}, Now: func() time.Time { return t0 }})
			if err != nil {
				b.Fatal(err)
			}
			h := c.Handler()
			cookie := benchLogin(b, c, h)
			b.ReportAllocs()
			var size int
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/console/agents", nil)
				req.AddCookie(cookie)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("GET /console/agents = %d", w.Code)
				}
				size = w.Body.Len()
			}
			b.ReportMetric(float64(size), "B/page")
		})
	}
}

// benchLogin redeems a login of c and returns its session cookie.
func benchLogin(b *testing.B, c *console.Console, h http.Handler) *http.Cookie {
	b.Helper()
	l, err := c.MintLogin("alice.mesh")
	if err != nil {
		b.Fatal(err)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, l.Path, nil))
	cookies := w.Result().Cookies()
	if w.Code != http.StatusSeeOther || len(cookies) == 0 {
		b.Fatalf("login: %d %v", w.Code, cookies)
	}
	return cookies[0]
}
