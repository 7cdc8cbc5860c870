package server

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/events"
)

// BenchmarkGate: what the staleness gate adds to a request on a replica
// (one atomic load of its verdict), against the same handler ungated, in
// one run.
func BenchmarkGate(b *testing.B) {
	// A bound the benchmark cannot outlast: the feed it reads is never polled.
	s := &Server{cfg: Config{Now: time.Now, StalenessBound: time.Hour}, fresh: events.New(nil, 0, events.Config{})}
	served := 0
	h := func(http.ResponseWriter, *http.Request) { served++ }
	r, w := httptest.NewRequest(http.MethodHead, "/heartbeat/opus", nil), httptest.NewRecorder()
	for _, c := range []struct {
		name string
		h    http.HandlerFunc
	}{{"ungated", h}, {"current", s.gated(current, h)}, {"durable", s.gated(durable, h)}} {
		b.Run(c.name, func(b *testing.B) {
			served = 0
			for b.Loop() {
				c.h(w, r)
			}
			if served == 0 {
				b.Fatal("the handler never ran: the gate refused a current replica")
			}
		})
	}
}
