package server

import (
	"bytes"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHeartbeatCountersConcurrent counts heartbeats from many goroutines
// at once, the first uses of the resolved children racing: every count
// lands on its own series, hot or not.
func TestHeartbeatCountersConcurrent(t *testing.T) {
	m := &metrics{heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "h"}, []string{"method", "code"})}
	cases := []struct {
		method string
		code   int
		label  string
	}{{"post", 200, "200"}, {"head", 200, "200"}, {"head", 202, "202"}, {"post", 403, "403"}, {"head", 410, "410"}}
	const goroutines, each = 8, 500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c := cases[(g+i)%len(cases)]
				m.heartbeat(c.method, c.code).Inc()
			}
		}()
	}
	wg.Wait()
	total := 0.0
	for _, c := range cases {
		total += testutil.ToFloat64(m.heartbeats.WithLabelValues(c.method, c.label))
	}
	if total != goroutines*each {
		t.Fatalf("%v heartbeats counted, want %d", total, goroutines*each)
	}
	if n := testutil.CollectAndCount(m.heartbeats); n != len(cases) {
		t.Errorf("%d series, want %d", n, len(cases))
	}
}

// TestBuffersConcurrent takes and returns heartbeat buffers from many
// goroutines at once: no buffer is held by two at a time, and one that
// grew past maxPooledBuffer is not kept.
func TestBuffersConcurrent(t *testing.T) {
	var p buffers
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mark := bytes.Repeat([]byte{byte('a' + g)}, 3000)
			for range 500 {
				b := p.get()
				if len(b.b) != 0 {
					t.Errorf("a buffer taken holds %d bytes", len(b.b))
				}
				b.b = append(b.b, mark...)
				for range 3 {
					if !bytes.Equal(b.b, mark) {
						t.Error("a buffer held by another goroutine changed")
						return
					}
				}
				p.put(b)
			}
		}()
	}
	wg.Wait()
	big := &buffer{b: make([]byte, 0, maxPooledBuffer+1)}
	p.put(big)
	for range 100 {
		if b := p.get(); b == big {
			t.Fatal("a buffer larger than maxPooledBuffer was kept")
		}
	}
}
