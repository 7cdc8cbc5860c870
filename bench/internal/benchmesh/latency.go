package benchmesh

import (
	"fmt"
	"slices"
	"time"
)

// Stats summarises a set of latencies in milliseconds.
type Stats struct {
	N      int     `json:"n"`
	Failed int     `json:"failed,omitempty"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	P999   float64 `json:"p999_ms"`
	Max    float64 `json:"max_ms"`
}

// Summarize returns the count, nearest-rank p50, p99 and p999 and the
// maximum of d, and failed: how many measurements never completed and so
// are not in d. d is not modified.
func Summarize(d []time.Duration, failed int) Stats {
	if len(d) == 0 {
		return Stats{Failed: failed}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	ms := func(perMille int) float64 { return Millis(Rank(s, perMille)) }
	return Stats{N: len(s), Failed: failed, P50: ms(500), P99: ms(990), P999: ms(999), Max: Millis(s[len(s)-1])}
}

// Rank returns the value at perMille thousandths of sorted (ascending, not
// empty) by the nearest-rank method: the smallest value at or above which
// that share of the values lies.
func Rank(sorted []time.Duration, perMille int) time.Duration {
	i := (len(sorted)*perMille + 999) / 1000
	return sorted[max(i-1, 0)]
}

// String is s on one line, as the benchmark tables print it.
func (s Stats) String() string {
	return fmt.Sprintf("p50 %.2f ms, p99 %.2f ms, p999 %.2f ms, max %.2f ms (n=%d)", s.P50, s.P99, s.P999, s.Max, s.N)
}

// Millis is d in milliseconds, to the microsecond.
func Millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
