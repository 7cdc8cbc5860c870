package server

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meshtrust/meshtrust/meshapi"
)

// TestAuditCheckConcurrent: status requests that arrive together share
// verifications, one runs at a time, and every request gets a result
// from a verification that began after it arrived (one that covers the
// log as the request saw it).
func TestAuditCheckConcurrent(t *testing.T) {
	var (
		a       auditCheck
		running atomic.Int32
		runs    atomic.Int64
		wg      sync.WaitGroup
	)
	const requests = 64
	verify := func() meshapi.StatusAudit {
		if running.Add(1) != 1 {
			t.Error("two verifications ran at once")
		}
		defer running.Add(-1)
		// Entries counts the verifications begun, so a result names the one
		// that produced it.
		return meshapi.StatusAudit{OK: true, Entries: int(runs.Add(1))}
	}
	got := make([]struct{ arrived, run int64 }, requests)
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			arrived := a.started.Load()
			res := a.run(arrived, verify)
			got[i].arrived, got[i].run = arrived, int64(res.Entries)
		}()
	}
	wg.Wait()
	for i, g := range got {
		if g.run <= g.arrived {
			t.Errorf("request %d arrived after %d verifications began and got verification %d, which began before it", i, g.arrived, g.run)
		}
	}
	if n := runs.Load(); n < 1 || n > requests {
		t.Errorf("%d verifications for %d requests", n, requests)
	}
	t.Logf("%d verifications for %d concurrent requests", runs.Load(), requests)
}
