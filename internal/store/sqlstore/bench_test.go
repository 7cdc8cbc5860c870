package sqlstore

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// BenchmarkRecordCert measures durable RecordCert throughput with one
// writer, which pays one fsync per certificate, and with many concurrent
// writers, which group commit lets share an fsync. Each parallel run
// reports its throughput relative to the one-writer run of the same
// invocation (x-vs-1-writer), the number to compare across machines.
func BenchmarkRecordCert(b *testing.B) {
	var baseline float64 // certs/s with one writer
	for _, writers := range []int{1, 8, 64, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s, err := OpenSQLite(b.Context(), b.TempDir()+"/meshtrust.db")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var next atomic.Int64
			record := func() error {
				c := testCert(int(next.Add(1)))
				return s.RecordCert(b.Context(), c, store.AuditEntry{Action: "cert.issue", Identity: c.CommonName, Outcome: store.OutcomeOK})
			}

			b.ResetTimer()
			if writers == 1 {
				for b.Loop() {
					if err := record(); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				// RunParallel starts parallelism × GOMAXPROCS goroutines.
				b.SetParallelism((writers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := record(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			b.StopTimer()

			perSec := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(perSec, "certs/s")
			if c := s.commits.Load(); c > 0 {
				b.ReportMetric(float64(s.writes.Load())/float64(c), "certs/commit")
			}
			if writers == 1 {
				baseline = perSec
			} else if baseline > 0 {
				b.ReportMetric(perSec/baseline, "x-vs-1-writer")
			}
		})
	}
}

// BenchmarkPutAgents measures PutAgents throughput in agents per second
// for the registry's flusher, which writes the liveness of many agents in
// one batch, and for a batch of one agent, which pays a transaction and an
// fsync per agent. The large batch reports its throughput relative to the
// one-agent run of the same invocation (x-vs-batch-1), the number to
// compare across machines.
func BenchmarkPutAgents(b *testing.B) {
	var baseline float64 // agents/s in batches of one
	for _, size := range []int{1, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s, err := OpenSQLite(b.Context(), b.TempDir()+"/meshtrust.db")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			batch := make([]store.Agent, size)
			for i := range batch {
				batch[i] = testAgent(i)
			}
			// Claimed once before the loop, so that the loop updates
			// agents, as the flusher does.
			claimAgents(b, s, batch...)

			var agents int
			for b.Loop() {
				for i := range batch {
					batch[i].LastSeen = batch[i].LastSeen.Add(time.Second)
				}
				if err := s.PutAgents(b.Context(), batch); err != nil {
					b.Fatal(err)
				}
				agents += size
			}

			perSec := float64(agents) / b.Elapsed().Seconds()
			b.ReportMetric(perSec, "agents/s")
			if size == 1 {
				baseline = perSec
			} else if baseline > 0 {
				b.ReportMetric(perSec/baseline, "x-vs-batch-1")
			}
		})
	}
}

// BenchmarkLiveAgents measures LiveAgents for a node of 10 agents as the
// certificates each agent was issued grow: the cost must follow the number
// of agents, not of certificates (x-vs-10-certs stays near 1).
func BenchmarkLiveAgents(b *testing.B) {
	var baseline float64 // ns/op with 10 certificates per agent
	for _, perAgent := range []int{10, 1000} {
		b.Run(fmt.Sprintf("certs-per-agent=%d", perAgent), func(b *testing.B) {
			s, err := OpenSQLite(b.Context(), b.TempDir()+"/meshtrust.db")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var wg sync.WaitGroup
			errs := make(chan error, 10*perAgent)
			for i := range 10 * perAgent {
				c := testCert(i)
				c.CommonName = fmt.Sprintf("agent%d@ct111", i%10)
				c.IssuedAt = c.IssuedAt.Add(time.Duration(i) * time.Second)
				wg.Go(func() { errs <- s.RecordCert(b.Context(), c, store.AuditEntry{Action: "cert.issue"}) })
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			at := testCert(0).NotBefore.Add(time.Hour)
			start := time.Now()
			for b.Loop() {
				got, err := s.LiveAgents(b.Context(), "ct111", at)
				if err != nil || len(got) != 10 {
					b.Fatalf("LiveAgents = %v, %v; want 10 agents", got, err)
				}
			}
			per := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			if perAgent == 10 {
				baseline = per
			} else if baseline > 0 {
				b.ReportMetric(per/baseline, "x-vs-10-certs")
			}
		})
	}
}
