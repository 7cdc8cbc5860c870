package load

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store/pgtest"
)

// built is meshd, built once for the package's tests.
var built struct {
	once sync.Once
	bin  string
	err  error
}

// buildMeshd builds cmd/meshd into a directory removed when the test
// binary's tests end, and returns the binary.
func buildMeshd(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs meshd")
	}
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "meshload-bin")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "meshd")
		cmd := exec.Command("go", "build", "-o", built.bin, "./cmd/meshd")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = err
			t.Logf("go build ./cmd/meshd:\n%s", out)
		}
	})
	if built.err != nil {
		t.Fatalf("build meshd: %v", built.err)
	}
	return built.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.bin != "" {
		os.RemoveAll(filepath.Dir(built.bin))
	}
	os.Exit(code)
}

// TestLoadSmoke runs the harness small, so it cannot rot: a few hundred
// agents against the built meshd for a few seconds, revocations every
// half second. It asserts outcomes, never timings: no unexpected
// refusal, every revoked agent evicted (its connection refused, the
// revocation on every replica's watch stream, the registry not serving
// it), and the figures reported.
func TestLoadSmoke(t *testing.T) {
	bin := buildMeshd(t)
	for _, tc := range []struct {
		name     string
		replicas int
	}{{"sqlite", 1}, {"postgres-2-replicas", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Meshd: bin, Agents: 300, Duration: 4 * time.Second, Interval: time.Second,
				RevokeEvery: 500 * time.Millisecond, ChangeRate: 0.05, Replicas: tc.replicas, Parallel: 16}
			if tc.replicas > 1 {
				cfg.Database = pgtest.Start(t).Schema(t)
			}
			res, err := Run(t.Context(), t.TempDir(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", res.Table())
			if err := res.Clean(); err != nil {
				t.Error(err)
			}
			if res.Revocations == 0 {
				t.Error("no revocation was made")
			}
			if res.Head.N == 0 || res.Post.N == 0 {
				t.Errorf("no latency reported: HEAD %+v, POST %+v", res.Head, res.Post)
			}
			if got := sum(res.Expected); got < int64(res.Revocations) {
				t.Errorf("%d refusals of revoked agents for %d revocations: each must find out", got, res.Revocations)
			}
			if len(res.Meshd) != tc.replicas || len(res.Evictions) != tc.replicas {
				t.Fatalf("%d processes and %d eviction summaries reported, want %d", len(res.Meshd), len(res.Evictions), tc.replicas)
			}
			for i, p := range res.Meshd {
				if p.RSS0 == 0 || p.RSS == 0 || p.FDs <= p.FDs0 || p.Live == 0 {
					t.Errorf("meshd-%d resources not reported: %+v", i, p)
				}
				if rt := p.Runtime; rt.Stacks == 0 || rt.HeapObjects == 0 || rt.GOGC == 0 || p.Runtime0.Total == 0 {
					t.Errorf("meshd-%d runtime memory not reported: with no agents %+v, steady %+v", i, p.Runtime0, rt)
				}
				if e := res.Evictions[i]; e.Watch.N != res.Revocations {
					t.Errorf("meshd-%d's watch stream carried %d of %d revocations", i, e.Watch.N, res.Revocations)
				}
			}
			if tc.replicas > 1 && res.Evictions[1].Agent.N == 0 {
				t.Error("no revoked agent on the second replica: the cross-replica eviction is not exercised")
			}
		})
	}
}

// TestConfigRefused: a configuration the harness cannot run is an error
// before anything starts.
func TestConfigRefused(t *testing.T) {
	for _, c := range []Config{
		{},
		{Meshd: "meshd", Replicas: 3},
		{Meshd: "meshd", Replicas: 2},
		{Meshd: "meshd", Agents: -1},
		{Meshd: "meshd", ChangeRate: 2},
	} {
		if _, err := Run(t.Context(), t.TempDir(), c); err == nil {
			t.Errorf("Run(%+v) = nil error", c)
		}
	}
}
