package meshd

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestObserverStress observes evictions and refreshes the observer's
// values from many goroutines while others gather its metrics, for the
// race detector; every observation is counted once, each under its cause,
// and a revocation dated after now counts as 0 seconds.
func TestObserverStress(t *testing.T) {
	o := newObserver()
	reg := prometheus.NewRegistry()
	reg.MustRegister(o.evictLatency, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "due"}, func() float64 { return float64(o.due.Load()) }))
	const writers, each = 8, 500
	now := time.Unix(1000, 0)
	causes := []string{"certificate_revoked", "identity_revoked"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	gathered := make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				gathered <- n
				return
			default:
			}
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
			n++
		}
	}()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				o.observeEviction(causes[w%2], now.Add(-time.Duration(i)*time.Millisecond), now)
				o.due.Store(int64(i))
				o.storeSeq.Store(int64(i))
			}
		}()
	}
	wg.Wait()
	close(stop)
	if n := <-gathered; n == 0 {
		t.Error("no gather ran")
	}
	o.observeEviction("entity_revoked", now.Add(time.Second), now) // another clock ahead
	o.observeEviction("entity_revoked", time.Time{}, now)          // no revocation time: not observed
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	var entitySum float64
	for _, f := range families {
		if f.GetName() != "meshd_revocation_eviction_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			cause := labelValue(m, "cause")
			counts[cause] = m.GetHistogram().GetSampleCount()
			if cause == "entity_revoked" {
				entitySum = m.GetHistogram().GetSampleSum()
			}
		}
	}
	want := map[string]uint64{"certificate_revoked": writers / 2 * each, "identity_revoked": writers / 2 * each, "entity_revoked": 1}
	for c, n := range want {
		if counts[c] != n {
			t.Errorf("%s observed %d times, want %d", c, counts[c], n)
		}
	}
	if entitySum != 0 {
		t.Errorf("a revocation dated after now observed as %vs, want 0", entitySum)
	}
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
