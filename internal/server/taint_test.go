package server

import (
	"crypto/x509"
	"maps"
	"math/big"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// taintAuthority is an Authority whose tainted intermediates and renewal
// point a test sets; every other method is the nil interface's (unused).
type taintAuthority struct {
	Authority
	mu      sync.Mutex
	tainted map[string]time.Time
	at      time.Time
}

func (a *taintAuthority) TaintedIssuers() map[string]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.tainted)
}

func (a *taintAuthority) RenewAt(issuerKeyID, serial string, notBefore, notAfter time.Time) time.Time {
	return a.at
}

func (a *taintAuthority) taint(id string, at time.Time) {
	a.mu.Lock()
	a.tainted[id] = at
	a.mu.Unlock()
}

// TestRenewHint: the header is set for a mesh CA leaf of a tainted issuer
// only; a partner CA's leaf claiming the same issuer key id, a leaf of
// another issuer and a caller without a certificate get none.
func TestRenewHint(t *testing.T) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	a := &taintAuthority{tainted: map[string]time.Time{}, at: at}
	s := &Server{auth: a}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: at.Add(-time.Hour), NotAfter: at.Add(time.Hour)}
	peer := func(mesh bool, issuer string) *trust.Peer {
		return &trust.Peer{Leaf: leaf, Serial: "7", IssuerKeyID: issuer, MeshCA: mesh}
	}
	hint := func(p *trust.Peer) string {
		w := httptest.NewRecorder()
		s.renewHint(w, p)
		return w.Header().Get(meshapi.HeaderRenewAfter)
	}
	s.ReloadTaint()
	if got := hint(peer(true, "aa")); got != "" {
		t.Fatalf("nothing tainted: header %q", got)
	}
	a.taint("aa", at.Add(-time.Minute))
	if got := hint(peer(true, "aa")); got != "" {
		t.Fatalf("tainted but not reloaded: header %q", got)
	}
	s.ReloadTaint()
	for _, tc := range []struct {
		name string
		p    *trust.Peer
		want string
	}{
		{"mesh leaf of the tainted issuer", peer(true, "aa"), "2026-12-07T18:00:00Z"},
		{"mesh leaf of another issuer", peer(true, "bb"), ""},
		{"partner leaf naming the tainted key id", peer(false, "aa"), ""},
		{"no certificate", nil, ""},
	} {
		if got := hint(tc.p); got != tc.want {
			t.Errorf("%s: header %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestTaintEvents: a stream is told of each tainted intermediate once, in
// key id order, and of one tainted later after the reload.
func TestTaintEvents(t *testing.T) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	a := &taintAuthority{tainted: map[string]time.Time{"bb": at, "aa": at}}
	s := &Server{auth: a}
	s.ReloadTaint()
	told := map[string]bool{}
	got := string(s.taintEvents(told))
	want := "event: ca.tainted\ndata: {\"issuer_key_id\":\"aa\",\"time\":\"2026-12-07T18:00:00Z\"}\n\n" +
		"event: ca.tainted\ndata: {\"issuer_key_id\":\"bb\",\"time\":\"2026-12-07T18:00:00Z\"}\n\n"
	if got != want {
		t.Fatalf("first events:\n%s\nwant:\n%s", got, want)
	}
	if again := s.taintEvents(told); len(again) != 0 {
		t.Fatalf("told twice: %s", again)
	}
	a.taint("cc", at)
	s.ReloadTaint()
	if got := string(s.taintEvents(told)); !strings.Contains(got, `"issuer_key_id":"cc"`) || strings.Count(got, "event:") != 1 {
		t.Fatalf("after a new taint: %s", got)
	}
}

// TestReloadTaintRace: requests read the set while reloads replace it.
func TestReloadTaintRace(t *testing.T) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	a := &taintAuthority{tainted: map[string]time.Time{}, at: at}
	s := &Server{auth: a}
	s.ReloadTaint()
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: at, NotAfter: at.Add(time.Hour)}
	p := &trust.Peer{Leaf: leaf, Serial: "7", IssuerKeyID: "k50", MeshCA: true}
	var wg sync.WaitGroup
	bad := make([]string, 4) // what each reader got that it must not
	for g := range 4 {
		wg.Go(func() {
			told := map[string]bool{}
			for range 2000 {
				w := httptest.NewRecorder()
				s.renewHint(w, p)
				if h := w.Header().Get(meshapi.HeaderRenewAfter); h != "" && h != "2026-12-07T18:00:00Z" {
					bad[g] = "header " + h
				}
				if b := s.taintEvents(told); strings.Count(string(b), "event:") != strings.Count(string(b), "data:") {
					bad[g] = "torn events " + string(b)
				}
			}
			if len(told) > 100 {
				bad[g] = "told of more intermediates than were tainted"
			}
		})
	}
	for i := range 100 {
		a.taint("k"+big.NewInt(int64(i)).String(), at)
		s.ReloadTaint()
	}
	wg.Wait()
	w := httptest.NewRecorder()
	s.renewHint(w, p)
	if w.Header().Get(meshapi.HeaderRenewAfter) == "" {
		t.Fatal("k50 tainted and reloaded, yet no header")
	}
	for g, b := range bad {
		if b != "" {
			t.Errorf("reader %d: %s", g, b)
		}
	}
}

// BenchmarkRenewHint is what the taint signal adds to every answer to a
// verified caller: with nothing tainted (every day but a compromise),
// with another intermediate tainted, and for a caller of the tainted one
// (the header written). Compare with BenchmarkE2EHeadHeartbeat, a whole
// HEAD heartbeat over loopback TLS, in the same run.
func BenchmarkRenewHint(b *testing.B) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: at.Add(-time.Hour), NotAfter: at.Add(time.Hour)}
	p := &trust.Peer{Leaf: leaf, Serial: "7", IssuerKeyID: "aa", MeshCA: true}
	for _, tc := range []struct {
		name    string
		tainted map[string]time.Time
	}{
		{"none tainted", map[string]time.Time{}},
		{"another tainted", map[string]time.Time{"bb": at}},
		{"caller's tainted", map[string]time.Time{"aa": at}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := &Server{auth: &taintAuthority{tainted: tc.tainted, at: at}}
			s.ReloadTaint()
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				s.renewHint(w, p)
			}
		})
	}
}
