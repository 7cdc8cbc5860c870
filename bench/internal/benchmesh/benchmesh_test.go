package benchmesh

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
)

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // unsorted on purpose
	}
	thousand := make([]int, 1000)
	for i := range thousand {
		thousand[i] = 1000 - i
	}
	for _, tc := range []struct {
		name   string
		d      []time.Duration
		failed int
		want   Stats
	}{
		{"none", nil, 3, Stats{Failed: 3}},
		{"one", ms(7), 0, Stats{N: 1, P50: 7, P99: 7, P999: 7, Max: 7}},
		{"nearest rank", ms(4, 1, 3, 2), 1, Stats{N: 4, Failed: 1, P50: 2, P99: 4, P999: 4, Max: 4}},
		{"hundred", ms(hundred...), 0, Stats{N: 100, P50: 50, P99: 99, P999: 100, Max: 100}},
		{"thousand", ms(thousand...), 0, Stats{N: 1000, P50: 500, P99: 990, P999: 999, Max: 1000}},
		{"negative", []time.Duration{-1500 * time.Microsecond, 250 * time.Microsecond}, 0, Stats{N: 2, P50: -1.5, P99: 0.25, P999: 0.25, Max: 0.25}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.d)
			if got := Summarize(tc.d, tc.failed); got != tc.want {
				t.Errorf("Summarize = %+v, want %+v", got, tc.want)
			}
			if !slices.Equal(in, tc.d) {
				t.Errorf("Summarize reordered its input: %v, was %v", tc.d, in)
			}
		})
	}
}

func TestStatsString(t *testing.T) {
	s := Stats{N: 3, P50: 1.5, P99: 2.25, P999: 2.5, Max: 3}
	if got, want := s.String(), "p50 1.50 ms, p99 2.25 ms, p999 2.50 ms, max 3.00 ms (n=3)"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestMeshRevoke(t *testing.T) {
	ctx := context.Background()
	m, err := Start(ctx, t.TempDir(), Config{RevocationPoll: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if m.Addr() == "" {
		t.Fatal("no agent address")
	}
	is, err := m.CA.Sign(ctx, ca.AgentRequest("victim", "bench"), ca.WithGeneratedKey())
	if err != nil {
		t.Fatal(err)
	}
	serial := is.Record.Serial
	if err := m.Revoke(ctx, serial); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	revs, err := m.Store.Revocations(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 1 || revs[0].Serial != serial {
		t.Fatalf("store holds revocations %+v, want one of %s", revs, serial)
	}
	// meshd refuses a second revocation; Revoke must report it.
	if err := m.Revoke(ctx, serial); err == nil || !strings.Contains(err.Error(), "400 Bad Request") {
		t.Fatalf("revoking twice: %v, want meshd's 400", err)
	}
}
