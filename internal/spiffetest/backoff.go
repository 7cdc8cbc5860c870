package spiffetest

import (
	"slices"
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
	waiters []waiter
}

// waiter is a Retried channel, closed once retries reaches n.
type waiter struct {
	n    int
	done chan struct{}
}

// retryDelay is how long a Backoff (and the gRPC connection under
// ClientOptions) waits before the next attempt.
const retryDelay = 10 * time.Millisecond

// NewBackoff returns a Backoff that has counted no retry.
func NewBackoff() *Backoff { return &Backoff{} }

// NewBackoff implements workloadapi.BackoffStrategy.
func (b *Backoff) NewBackoff() workloadapi.Backoff { return backoffFunc(b.next) }

func (b *Backoff) next() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.retries++
	b.waiters = slices.DeleteFunc(b.waiters, func(w waiter) bool {
		if w.n <= b.retries {
			close(w.done)
			return true
		}
		return false
	})
	return retryDelay
}

// Retries returns how many times a client has backed off so far.
func (b *Backoff) Retries() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.retries
}

// Retried returns a channel that is closed once a client has backed off
// n times in all. Unlike WaitRetries it may be used off the test's
// goroutine.
func (b *Backoff) Retried(n int) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	done := make(chan struct{})
	if b.retries >= n {
		close(done)
	} else {
		b.waiters = append(b.waiters, waiter{n, done})
	}
	return done
}

// WaitRetries waits until a client has backed off n times in all, and
// fails the test if that takes longer than a generous bound.
func (b *Backoff) WaitRetries(t testing.TB, n int) {
	t.Helper()
	select {
	case <-b.Retried(n):
	case <-time.After(waitBound):
		t.Fatalf("spiffetest: the client backed off %d times in %s, want %d", b.Retries(), waitBound, n)
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
