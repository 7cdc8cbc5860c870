package benchmesh

import (
	"slices"
	"time"
)

// Stats summarises a set of latencies in milliseconds.
type Stats struct {
	N      int     `json:"n"`
	Failed int     `json:"failed,omitempty"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

// Summarize returns the count, nearest-rank p50 and p99 and the maximum of
// d, and failed: how many measurements never completed and so are not in d.
func Summarize(d []time.Duration, failed int) Stats {
	if len(d) == 0 {
		return Stats{Failed: failed}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p int) float64 {
		i := (len(s)*p + 99) / 100
		return Millis(s[max(i-1, 0)])
	}
	return Stats{N: len(s), Failed: failed, P50: rank(50), P99: rank(99), Max: Millis(s[len(s)-1])}
}

// Millis is d in milliseconds, to the microsecond.
func Millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
