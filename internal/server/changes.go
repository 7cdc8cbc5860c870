package server

import (
	"context"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
)

// Bounds of Changes: what a subscriber may hold unread, how many may
// subscribe at once, and how many revocations' evictions it remembers
// (and how many agent ids of each).
const (
	changesBuffer      = 64
	changesSubscribers = 64
	evictionRecords    = 256
	evictionAgents     = 64
)

// Changes fans out what changes on this meshd, for the operator console's
// live pages: the change feed's events as this process applied them
// (Applied), and the registry's registrations and evictions (Agent). A
// subscriber that does not keep up loses its stream (its channel is
// closed: the console then reloads the page); meshd never waits for one.
//
// It also remembers, bounded, which agents this process evicted for each
// revocation, for the revocations page.
//
// Its mutex is a leaf: nothing else is locked while it is held, and no
// send under it blocks. The zero value is not usable; use NewChanges.
type Changes struct {
	now func() time.Time

	mu   sync.Mutex
	subs map[chan console.Event]struct{}
	// evicted holds the agent ids evicted for each revocation key
	// (revocationKey), oldest key first in order.
	evicted map[string]*evictionRecord
	order   []string
}

// evictionRecord is what applying one revocation did in this process.
type evictionRecord struct {
	agents []string // at most evictionAgents
	more   int      // agents evicted beyond those
	closed int
}

// NewChanges returns an empty fan-out on the clock now (nil: time.Now).
func NewChanges(now func() time.Time) *Changes {
	if now == nil {
		now = time.Now
	}
	return &Changes{now: now, subs: map[chan console.Event]struct{}{}, evicted: map[string]*evictionRecord{}}
}

// Subscribe returns a stream of the changes from now on, closed when ctx
// ends or when the reader fell changesBuffer events behind. Past
// changesSubscribers open streams the channel is closed at once.
func (c *Changes) Subscribe(ctx context.Context) <-chan console.Event {
	ch := make(chan console.Event, changesBuffer)
	c.mu.Lock()
	if len(c.subs) >= changesSubscribers {
		c.mu.Unlock()
		close(ch)
		return ch
	}
	c.subs[ch] = struct{}{}
	c.mu.Unlock()
	context.AfterFunc(ctx, func() { c.drop(ch) })
	return ch
}

// drop closes ch, once, if it is still subscribed. The caller must not
// hold c.mu.
func (c *Changes) drop(ch chan console.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(ch)
}

func (c *Changes) dropLocked(ch chan console.Event) {
	if _, ok := c.subs[ch]; ok {
		delete(c.subs, ch)
		close(ch)
	}
}

// publish hands ev to every subscriber that has room, and drops those
// that have none.
func (c *Changes) publish(ev console.Event) {
	if ev.At.IsZero() {
		ev.At = c.now().UTC()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		select {
		case ch <- ev:
		default:
			c.dropLocked(ch)
		}
	}
}

// Agent is the registry's Config.OnChange.
func (c *Changes) Agent(ch registry.Change) {
	c.publish(console.Event{Kind: ch.Kind, Subject: ch.AgentID, Detail: ch.Reason})
}

// Applied is told of each change feed event once this process applied
// it, with what applying it did (evictions, closed connections).
func (c *Changes) Applied(e store.Event, eff Effect) {
	ev := console.Event{Kind: string(e.Kind), At: e.Time.UTC()}
	switch e.Kind {
	case store.EventCertRevoked:
		ev.Kind, ev.Subject, ev.Detail = "revoked", e.CommonName, "serial "+e.Serial
	case store.EventIdentityRevoked:
		ev.Kind, ev.Subject, ev.Detail = "revoked", e.CommonName, "identity"
	case store.EventIdentityReinstated:
		ev.Kind, ev.Subject = "reinstated", e.CommonName
	case store.EventEntityRevoked, store.EventEntityRegistered, store.EventEntityRotated:
		ev.Subject = e.Entity
	case store.EventCARotated:
		ev.Subject = e.IssuerKeyID
	case store.EventPolicySet:
		ev.Subject = e.CommonName
	}
	if key := revocationKey(e); key != "" && (len(eff.Agents) > 0 || eff.Closed > 0) {
		c.remember(key, eff)
	}
	c.publish(ev)
}

// revocationKey names what e revoked, for Evicted: "serial <serial>",
// "identity <common name>", "entity <name>"; "" for anything else.
func revocationKey(e store.Event) string {
	switch e.Kind {
	case store.EventCertRevoked:
		return "serial " + e.Serial
	case store.EventIdentityRevoked:
		return "identity " + e.CommonName
	case store.EventEntityRevoked:
		return "entity " + e.Entity
	}
	return ""
}

// remember adds eff to what the revocation key did, keeping the newest
// evictionRecords keys.
func (c *Changes) remember(key string, eff Effect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec := c.evicted[key]
	if rec == nil {
		if len(c.order) >= evictionRecords {
			delete(c.evicted, c.order[0])
			c.order = append(c.order[:0:0], c.order[1:]...)
		}
		rec = &evictionRecord{}
		c.evicted[key] = rec
		c.order = append(c.order, key)
	}
	for _, id := range eff.Agents {
		if len(rec.agents) < evictionAgents {
			rec.agents = append(rec.agents, id)
		} else {
			rec.more++
		}
	}
	rec.closed += eff.Closed
}

// Evicted returns the agent ids this process evicted for the revocation
// key (see revocationKey), how many more it evicted than it lists, and
// the connections it closed; zero when it does not remember the key.
func (c *Changes) Evicted(key string) (agents []string, more, closed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec := c.evicted[key]
	if rec == nil {
		return nil, 0, 0
	}
	return append([]string(nil), rec.agents...), rec.more, rec.closed
}
