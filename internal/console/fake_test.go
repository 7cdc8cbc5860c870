package console_test

import (
	"context"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/meshapi"
)

// call is one state-changing call the fake backend received.
type call struct {
	Method, Actor, Target, Reason string
}

// fakeBackend serves fixed rows, records the actions and streams the
// events a test sends.
type fakeBackend struct {
	agents        []console.Agent
	certs         []console.Certificate
	revs          []console.Revocation
	revIDs        []console.IdentityRevocation
	entities      []meshapi.EntityInfo
	sources       []console.TrustSource
	audit         console.AuditLog
	intermediates []console.Intermediate
	policies      []string
	decision      console.Decision
	// err, when set, is what every method returns.
	err error

	mu       sync.Mutex
	calls    []call
	asked    []console.Question
	watchers []chan console.Event
}

func (f *fakeBackend) Agents(context.Context) ([]console.Agent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]console.Agent(nil), f.agents...), f.err
}

func (f *fakeBackend) setAgents(a []console.Agent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.agents = a
}

func (f *fakeBackend) Certificates(context.Context) ([]console.Certificate, error) {
	return f.certs, f.err
}

func (f *fakeBackend) Revocations(context.Context) ([]console.Revocation, []console.IdentityRevocation, error) {
	return f.revs, f.revIDs, f.err
}

func (f *fakeBackend) Entities(context.Context) ([]meshapi.EntityInfo, error) {
	return f.entities, f.err
}

func (f *fakeBackend) TrustSources(context.Context) ([]console.TrustSource, error) {
	return f.sources, f.err
}

func (f *fakeBackend) Audit(context.Context, int) (console.AuditLog, error) { return f.audit, f.err }

func (f *fakeBackend) Intermediates(context.Context) ([]console.Intermediate, error) {
	return f.intermediates, f.err
}

func (f *fakeBackend) Policies(context.Context) ([]string, error) { return f.policies, nil }

func (f *fakeBackend) Explain(_ context.Context, q console.Question) (console.Decision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, q)
	return f.decision, f.err
}

func (f *fakeBackend) record(c call) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
}

func (f *fakeBackend) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeBackend) Revoke(_ context.Context, actor, target, reason string) (meshapi.RevokeResponse, error) {
	f.record(call{"Revoke", actor, target, reason})
	if f.err != nil {
		return meshapi.RevokeResponse{}, f.err
	}
	return meshapi.RevokeResponse{Revoked: []meshapi.RevokedCert{{Serial: "1f", CommonName: target}}, Identity: target, EvictedAgents: 1, ClosedConnections: 2}, nil
}

func (f *fakeBackend) Reinstate(_ context.Context, actor, name string) error {
	f.record(call{"Reinstate", actor, name, ""})
	return f.err
}

func (f *fakeBackend) RevokeEntity(_ context.Context, actor, name string) error {
	f.record(call{"RevokeEntity", actor, name, ""})
	return f.err
}

func (f *fakeBackend) Watch(ctx context.Context) <-chan console.Event {
	ch := make(chan console.Event, 16)
	f.mu.Lock()
	f.watchers = append(f.watchers, ch)
	f.mu.Unlock()
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, w := range f.watchers {
			if w == ch {
				f.watchers = append(f.watchers[:i], f.watchers[i+1:]...)
				break
			}
		}
		close(ch)
	}()
	return ch
}

func (f *fakeBackend) Watchers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.watchers)
}

// send gives ev to every watcher, dropping it for a full one as meshd's
// feed does.
func (f *fakeBackend) send(ev console.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.watchers {
		select {
		case w <- ev:
		default:
		}
	}
}

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
