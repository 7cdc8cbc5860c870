package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
)

// TestHostileWatchStreamsReserved: certless callers (TLS auto) fill only
// their share of the revocation streams (an eighth by default), from as
// many addresses as they use; one node fills only its own share (the
// per-source cap), however many agent identities it has minted; and an
// authenticated verifier of another node still gets a stream. On the old
// code the certless callers and the node's minted identities took every
// slot between them and the verifier was refused.
func TestHostileWatchStreamsReserved(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSAuto, configure: func(c *meshd.Config) {
		c.MaxWatchStreams, c.MaxWatchStreamsPerSource = 16, 3 // certless share: 16/8 = 2
	}})
	refused := func(what string, code int) {
		t.Helper()
		if code != http.StatusServiceUnavailable {
			t.Errorf("%s refused with %d, want 503", what, code)
		}
	}
	// Certless callers from three loopback addresses, three streams each
	// tried: two in all.
	opened := 0
	for _, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		for i := range 3 {
			if sub, code := e.trySubscribeFrom("", nil, from); sub != nil {
				opened++
			} else {
				refused(fmt.Sprintf("certless stream %d from %s", i+1, from), code)
			}
		}
	}
	if opened != 2 {
		t.Errorf("certless streams opened from three addresses: %d, want their share of 2", opened)
	}
	// Node n1's agent identities, minted by the mesh CA: counted as n1,
	// three streams in all.
	opened = 0
	for i := range 7 {
		c, _ := agentCert(t, e.ca.auth, fmt.Sprintf("minted%d", i), "n1")
		if sub, code := e.trySubscribe("", &c); sub != nil {
			opened++
		} else {
			refused(fmt.Sprintf("stream of minted%d@n1", i), code)
		}
	}
	if opened != 3 {
		t.Errorf("streams opened by seven agent identities of node n1: %d, want n1's share of 3", opened)
	}
	// A verifier of another node is served, and its stream is live.
	verifier, _ := agentCert(t, e.ca.auth, "verifier", "n2")
	sub, code := e.trySubscribe("", &verifier)
	if sub == nil {
		t.Fatalf("an authenticated verifier of node n2, with certless callers and node n1 at their shares: %d, want a stream", code)
	}
	if got := e.metrics()["meshd_revocation_watchers"]; got != 6 {
		t.Errorf("meshd_revocation_watchers = %v, want 6 (2 certless, 3 of n1, 1 of n2)", got)
	}
	victim, _ := agentCert(t, e.ca.auth, "victim", "n3")
	e.revokeAdmin(serialOf(victim))
	if ev := sub.next(); !strings.Contains(ev.data, serialOf(victim)) {
		t.Errorf("the verifier's stream sent %q, want the revocation of %s", ev.data, serialOf(victim))
	}
}
