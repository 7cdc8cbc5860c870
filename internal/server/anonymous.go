package server

import (
	"log/slog"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// maxAnonymousCallers bounds the callers without a certificate that
// anonymousCallers remembers, so a caller that changes its address on
// every request cannot grow the set or the log without bound.
const maxAnonymousCallers = 4096

// anonymousCallers counts the agent-route requests admitted without a
// certificate in TLS mode auto, and logs each caller (its IPv4 address or
// IPv6 /64) the first time it is seen. It is safe for concurrent use.
type anonymousCallers struct {
	log      *slog.Logger
	requests *prometheus.CounterVec
	max      int

	mu   sync.Mutex
	seen map[string]struct{}
	// full is set once seen holds max callers: later ones are counted,
	// and one line says they are no longer logged.
	full bool
}

func newAnonymousCallers(log *slog.Logger, requests *prometheus.CounterVec) *anonymousCallers {
	return &anonymousCallers{log: log, requests: requests, max: maxAnonymousCallers, seen: make(map[string]struct{})}
}

// admit counts r and logs its caller if it is new.
func (a *anonymousCallers) admit(r *http.Request) {
	a.requests.WithLabelValues(r.Pattern).Inc()
	src := sourceKey(r.RemoteAddr)
	a.mu.Lock()
	_, known := a.seen[src]
	first, overflow := false, false
	switch {
	case known:
	case len(a.seen) < a.max:
		a.seen[src] = struct{}{}
		first = true
	case !a.full:
		a.full, overflow = true, true
	}
	a.mu.Unlock()
	if first {
		a.log.Warn("caller without a client certificate admitted (TLS mode auto): it may act only for agent ids no certificate has claimed, and its agents are listed as unauthenticated; use --tls-mode strict in production",
			"source", src, "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
	}
	if overflow {
		a.log.Warn("more callers without a client certificate than meshd logs one by one; further ones are counted in meshd_unauthenticated_requests_total but not logged",
			"callers_logged", a.max)
	}
}
