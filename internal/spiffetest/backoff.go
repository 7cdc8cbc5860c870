package spiffetest

import (
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Backoff is a workloadapi.BackoffStrategy for tests of a Workload API
// client: every retry the client backs off for is counted, so a test can
// wait for the client to have tried (and failed) to reach a stopped
// server, and each back-off lasts only a few milliseconds instead of
// go-spiffe's 1 s to 30 s. Its methods are safe for concurrent use.
type Backoff struct {
	mu      sync.Mutex
	retries int
	changed chan struct{} // closed at the next retry
}

// retryDelay is how long a Backoff (and the gRPC connection under
// ClientOptions) waits before the next attempt.
const retryDelay = 10 * time.Millisecond

// NewBackoff returns a Backoff that has counted no retry.
func NewBackoff() *Backoff { return &Backoff{changed: make(chan struct{})} }

// NewBackoff implements workloadapi.BackoffStrategy.
func (b *Backoff) NewBackoff() workloadapi.Backoff { return backoffFunc(b.next) }

func (b *Backoff) next() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.retries++
	close(b.changed)
	b.changed = make(chan struct{})
	return retryDelay
}

// Retries returns how many times a client has backed off so far.
func (b *Backoff) Retries() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.retries
}

// WaitRetries waits until a client has backed off n times in all, and
// fails the test if that takes longer than a generous bound.
func (b *Backoff) WaitRetries(t testing.TB, n int) {
	t.Helper()
	bound := time.After(waitBound)
	for {
		b.mu.Lock()
		got, changed := b.retries, b.changed
		b.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-bound:
			t.Fatalf("spiffetest: the client backed off %d times in %s, want %d", got, waitBound, n)
		}
	}
}

// waitBound bounds every wait of a test helper: far longer than any
// event takes, so it fails a stuck test rather than timing a healthy one.
const waitBound = 30 * time.Second

// ClientOptions returns the workloadapi.ClientOptions that make a client
// retry through b, and make its gRPC connection redial every few
// milliseconds rather than after gRPC's exponential back-off (1 s
// growing to 2 min), so that a client finds a restarted server at once.
func (b *Backoff) ClientOptions() []workloadapi.ClientOption {
	return []workloadapi.ClientOption{
		workloadapi.WithBackoffStrategy(b),
		workloadapi.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: retryDelay, Multiplier: 1, MaxDelay: retryDelay},
			MinConnectTimeout: waitBound,
		})),
	}
}

// backoffFunc is a workloadapi.Backoff whose Reset does nothing: the
// count goes on across the client's recoveries.
type backoffFunc func() time.Duration

func (f backoffFunc) Next() time.Duration { return f() }
func (backoffFunc) Reset()                {}
