package sqlite

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

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
			s, err := Open(b.Context(), b.TempDir()+"/meshtrust.db")
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
