package registry

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// TestBatchWriteKeepsNewerChanges lands a change to an agent between a
// batch write's copy of the agent's record and its write of that copy:
// what a heartbeat, a Delete or an eviction racing Flush, evict or Rotate
// sees. The store must then hold what memory holds, so that a restart
// brings back neither an older registration or status nor a deleted
// agent.
func TestBatchWriteKeepsNewerChanges(t *testing.T) {
	const body = `{"agent_id":"opus","description":"first","tools":[{"function_name":"f","capability":"c"}]}`
	batches := []struct {
		name string
		// before readies the batch: Flush only writes agents Sweep marked.
		before func(t *testing.T, c *clocktest.Clock, r *Registry)
		write  func(ctx context.Context, r *Registry) error
	}{
		{"Flush", func(t *testing.T, c *clocktest.Clock, r *Registry) {
			c.Advance(r.cfg.Timeout + time.Second)
			if n := r.Sweep(); n != 1 {
				t.Fatalf("Sweep marked %d agents, want 1", n)
			}
		}, func(ctx context.Context, r *Registry) error { return r.Flush(ctx) }},
		{"Rotate", nil, func(ctx context.Context, r *Registry) error {
			_, err := r.Rotate(ctx, "")
			return err
		}},
		{"Evict", nil, func(ctx context.Context, r *Registry) error {
			_, err := r.EvictIdentity(ctx, "opus@ct111", "identity revoked")
			return err
		}},
	}
	// owner is opus's certificate, successor that of the agent that
	// claims the id once opus is deleted.
	changes := []struct {
		name   string
		change func(r *Registry, owner, successor *trust.Peer) error
	}{
		// A new registration, written and acknowledged.
		{"Heartbeat", func(r *Registry, owner, successor *trust.Peer) error {
			_, err := r.heartbeatBody(context.Background(), owner, []byte(`{"agent_id":"opus","description":"second","tools":[{"function_name":"f","capability":"c"}]}`))
			return err
		}},
		{"Delete", func(r *Registry, owner, successor *trust.Peer) error {
			return r.Delete(context.Background(), owner, "opus")
		}},
		{"Evict", func(r *Registry, owner, successor *trust.Peer) error {
			_, err := r.EvictIdentity(context.Background(), "opus@ct111", "identity revoked")
			return err
		}},
		// The id deleted and claimed by another node's agent, whose record
		// starts at the first version again.
		{"Reregister", func(r *Registry, owner, successor *trust.Peer) error {
			if err := r.Delete(context.Background(), owner, "opus"); err != nil {
				return err
			}
			_, err := r.heartbeatBody(context.Background(), successor, []byte(body))
			return err
		}},
	}
	for _, b := range batches {
		for _, ch := range changes {
			if b.name == "Evict" && ch.name == "Evict" {
				continue // evicting an evicted agent changes nothing
			}
			t.Run(b.name+"/"+ch.name, func(t *testing.T) {
				ctx := context.Background()
				st := newMemStore()
				c := newClock()
				r := newRegistry(t, st, c)
				owner, successor := peer(t, "opus@ct111", ""), peer(t, "opus@ct112", "")
				if _, err := heartbeat(t, r, owner, body); err != nil {
					t.Fatal(err)
				}
				if b.before != nil {
					b.before(t, c, r)
				}
				changed := during(r, func() error { return ch.change(r, owner, successor) })
				if err := b.write(ctx, r); err != nil {
					t.Fatalf("%s: %v", b.name, err)
				}
				if err := changed(); err != nil {
					t.Fatalf("%s during %s: %v", ch.name, b.name, err)
				}
				checkStored(t, r, st)
				restarted, err := New(ctx, st, Config{Now: c.Now})
				if err != nil {
					t.Fatal(err)
				}
				if got, want := views(restarted), views(r); !reflect.DeepEqual(got, want) {
					t.Errorf("after a restart the registry lists\n%+v\nwant what it listed before\n%+v", got, want)
				}
			})
		}
	}
}

// during arranges for change to run once the next batch write of r has
// copied its records and before it writes them. Change runs beside the
// batch; the batch goes on once change has returned or waits for the
// batch's writes to end, as a Delete or an eviction must. The returned
// function waits for change and returns its error.
func during(r *Registry, change func() error) func() error {
	var (
		fired     atomic.Bool
		done      = make(chan struct{})
		waiting   = make(chan struct{}, 1)
		changeErr error
	)
	r.hooks.writeWait = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	r.hooks.copied = func() {
		if !fired.CompareAndSwap(false, true) {
			return // the batch write of change itself
		}
		go func() {
			defer close(done)
			changeErr = change()
		}()
		select {
		case <-done:
		case <-waiting:
		}
	}
	return func() error {
		if !fired.Load() {
			return errNoBatch
		}
		<-done
		return changeErr
	}
}

var errNoBatch = errors.New("the batch wrote nothing, so the change never ran")

// views lists r without what a restart resets: liveness, and the expiry
// of the certificate an agent registered with, which is not stored.
func views(r *Registry) []View {
	vs := r.List(Filter{})
	for i := range vs {
		vs[i].LastSeen, vs[i].CertificateExpiration = time.Time{}, nil
	}
	return vs
}

// storedRecord is rec as checkStored compares it: without the liveness the
// registry keeps in memory and writes only in batches.
func storedRecord(rec store.Agent) store.Agent {
	rec.LastSeen = time.Time{}
	if len(rec.Payload) == 0 {
		rec.Payload = nil
	}
	return rec
}

// fmtRecord shows rec with its payload as text.
func fmtRecord(rec store.Agent) string {
	payload := rec.Payload
	rec.Payload = nil
	return fmt.Sprintf("%+v payload %s", rec, payload)
}
