package server

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAnonymousCallersBounded: concurrent callers without a certificate
// are each counted, each source logged once, and past the bound one line
// says the rest are not logged: the log never grows with the addresses.
func TestAnonymousCallersBounded(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"route"})
	a := newAnonymousCallers(log, requests)
	a.max = 50
	const sources, repeats = 200, 5
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sources * repeats / 8 {
				n := (g*sources*repeats/8 + i) % sources
				r := httptest.NewRequest("POST", "/heartbeat", nil)
				r.Pattern = "POST /heartbeat"
				// Two ports of one address are one caller.
				r.RemoteAddr = fmt.Sprintf("10.0.%d.%d:%d", n/256, n%256, 1000+i)
				a.admit(r)
			}
		}()
	}
	wg.Wait()
	reg := prometheus.NewRegistry()
	reg.MustRegister(requests)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gather: %v %v", mfs, err)
	}
	if got := mfs[0].GetMetric()[0].GetCounter().GetValue(); got != sources*repeats {
		t.Errorf("counted %v requests, want %d", got, sources*repeats)
	}
	out := buf.String()
	if n := strings.Count(out, "caller without a client certificate admitted"); n != a.max {
		t.Errorf("logged %d callers, want the bound %d", n, a.max)
	}
	if n := strings.Count(out, "further ones are counted"); n != 1 {
		t.Errorf("the overflow line was logged %d times, want once", n)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
