package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
)

// TestChangesStress publishes from many goroutines while readers keep up,
// one never reads and others come and go: publishers never wait, a reader
// that keeps up gets every event of each publisher in order, the one that
// never reads loses its stream (closed), and cancelled ones are closed.
func TestChangesStress(t *testing.T) {
	const publishers, perPublisher = 8, 500
	c := NewChanges(nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	// Readers that keep up: each drains into a slice until its stream
	// ends.
	const readers = 4
	got := make([][]console.Event, readers)
	var rwg sync.WaitGroup
	for i := range readers {
		ch := c.Subscribe(ctx)
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for ev := range ch {
				got[i] = append(got[i], ev)
			}
		}()
	}
	stuck := c.Subscribe(ctx) // never read

	var pwg sync.WaitGroup
	start := make(chan struct{})
	for p := range publishers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			<-start
			for n := range perPublisher {
				c.Agent(registry.Change{Kind: registry.ChangeRegistered, AgentID: fmt.Sprintf("p%d-%d", p, n)})
				if n%50 == 0 {
					c.Applied(store.Event{Kind: store.EventCertRevoked, CommonName: "x@n", Serial: fmt.Sprintf("%x", p*perPublisher+n)},
						Effect{Evicted: 1, Agents: []string{fmt.Sprintf("p%d-%d", p, n)}})
				}
			}
		}()
	}
	// Subscribers that come and go while it runs.
	var cwg sync.WaitGroup
	for range 4 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			<-start
			for range 50 {
				sctx, scancel := context.WithCancel(ctx)
				ch := c.Subscribe(sctx)
				select {
				case <-ch:
				default:
				}
				scancel()
				// Closed once its context ends (by AfterFunc): drain to
				// the close.
				for range ch {
				}
			}
		}()
	}
	close(start)
	pwg.Wait()
	cwg.Wait()

	// The stuck reader fell behind and lost its stream: its channel holds
	// at most the buffer, then is closed.
	n := 0
	for range stuck {
		n++
	}
	if n > changesBuffer {
		t.Fatalf("the reader that never read holds %d events, more than the buffer (%d)", n, changesBuffer)
	}
	cancel()
	rwg.Wait()
	for i, evs := range got {
		next := map[string]int{}
		for _, ev := range evs {
			if ev.Kind != registry.ChangeRegistered {
				continue
			}
			pub, num, _ := strings.Cut(ev.Subject, "-")
			k, err := strconv.Atoi(num)
			if err != nil {
				t.Fatalf("reader %d: event subject %q", i, ev.Subject)
			}
			if k < next[pub] {
				t.Fatalf("reader %d: %s after %s-%d: out of order", i, ev.Subject, pub, next[pub]-1)
			}
			next[pub] = k + 1
		}
		// A reader that kept up to the end got everything; one dropped
		// (the race detector slows it) got a prefix of each publisher.
		if len(evs) == publishers*(perPublisher+perPublisher/50) {
			for p := range publishers {
				if next[fmt.Sprintf("p%d", p)] != perPublisher {
					t.Fatalf("reader %d got all events but not all of p%d's", i, p)
				}
			}
		}
	}
	c.mu.Lock()
	left := len(c.subs)
	c.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d subscribers left after every context ended", left)
	}
}

// TestChangesBounds: subscribers are capped, and the eviction memory
// keeps the newest revocations and a bounded list of agents for each.
func TestChangesBounds(t *testing.T) {
	c := NewChanges(func() time.Time { return time.Unix(1e9, 0) })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for range changesSubscribers {
		c.Subscribe(ctx)
	}
	if _, open := <-c.Subscribe(ctx); open {
		t.Fatal("a subscriber past the cap got an open stream")
	}

	many := make([]string, evictionAgents+5)
	for i := range many {
		many[i] = fmt.Sprintf("a%d", i)
	}
	c.Applied(store.Event{Kind: store.EventIdentityRevoked, CommonName: "ct1.mesh"}, Effect{Evicted: len(many), Closed: 2, Agents: many})
	agents, more, closed := c.Evicted("identity ct1.mesh")
	if len(agents) != evictionAgents || more != 5 || closed != 2 {
		t.Fatalf("Evicted = %d agents, %d more, %d closed; want %d, 5, 2", len(agents), more, closed, evictionAgents)
	}
	for i := range evictionRecords {
		c.Applied(store.Event{Kind: store.EventCertRevoked, Serial: fmt.Sprintf("%x", i)}, Effect{Evicted: 1, Agents: []string{"x"}})
	}
	if agents, _, _ := c.Evicted("identity ct1.mesh"); agents != nil {
		t.Fatal("the oldest revocation was kept past the bound")
	}
	if agents, _, _ := c.Evicted(fmt.Sprintf("serial %x", evictionRecords-1)); len(agents) != 1 {
		t.Fatal("the newest revocation was not kept")
	}
	if len(c.evicted) != evictionRecords || len(c.order) != evictionRecords {
		t.Fatalf("holds %d records (%d in order), want %d", len(c.evicted), len(c.order), evictionRecords)
	}
}
