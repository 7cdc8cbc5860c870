package server_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// TestE2EStartEvictsBlockedKeys: an agent registered with a same-key
// renewal is evicted at start when another certificate of its key was
// revoked for keyCompromise while meshd was down, as the certificate
// revoked itself would be. On the old code it stayed listed healthy.
func TestE2EStartEvictsBlockedKeys(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	first, _ := agentCert(t, e.ca.auth, "opus", "n1")
	renewed, _ := agentCert(t, e.ca.auth, "opus", "n1") // the same key: WithGeneratedKey reuses it
	if serialOf(first) == serialOf(renewed) {
		t.Fatal("the renewal has the first certificate's serial")
	}
	obsCert, _ := agentCert(t, e.ca.auth, "observer", "n2")
	if r := e.heartbeatAs(renewed, "opus"); r.code != http.StatusOK {
		t.Fatalf("opus with its renewed certificate: %s", r)
	}

	e.restart(func() { e.revokeOffline(serialOf(first)) }) // keyCompromise

	a, ok := e.agents(e.freshClient(&obsCert), "").find("opus")
	if !ok || a.Status != "evicted" {
		t.Errorf("opus after restart: %+v, want evicted (its key was revoked for keyCompromise while meshd was down)", a)
	}
	if r := e.heartbeatAs(renewed, "opus"); r.code != http.StatusForbidden {
		t.Errorf("opus's renewed certificate after restart: %s, want 403", r)
	}
}

// flakyEntityReads is a replica's store whose reads of one entity fail
// while fails is above zero, each failure using one up: the transient
// store error ("database is locked") that SQLite cannot be made to return
// on demand for one read. It is the one fault doubled; every other call,
// and every read once the fault is spent, is the real store's.
type flakyEntityReads struct {
	*sqlstore.Store
	entity string
	fails  atomic.Int32
}

func (f *flakyEntityReads) Entity(ctx context.Context, name string) (store.Entity, error) {
	if name == f.entity && f.fails.Add(-1) >= 0 {
		return store.Entity{}, errors.New("database is locked (injected)")
	}
	return f.Store.Entity(ctx, name)
}

// TestE2EFeedRetriesTransientStoreError: a replica whose store read fails
// while it applies a replaced entity CA does not take the change as
// applied: it retries until the read works, then distrusts the old CA
// and trusts the new one, without a restart. On the old code it trusted
// the replaced CA until it restarted.
func TestE2EFeedRetriesTransientStoreError(t *testing.T) {
	e := newEnv(t, envOptions{mode: server.TLSStrict})
	flaky := &flakyEntityReads{Store: e.ca.st, entity: "partner"}
	b := newFeedReplicaOver(t, e, flaky)
	oldCA, newCA := newTestCA(t, "partner CA 1"), newTestCA(t, "partner CA 2")
	oldCert, newCert := oldCA.leaf(t, "partner-a"), newCA.leaf(t, "partner-a")
	e.registerEntity("partner", oldCA) // on A
	feedEventually(t, "B admits the agent of the entity registered on A", func() (bool, string) {
		r := b.do(t, e.freshClient(&oldCert), "POST", "/heartbeat", heartbeat("partner-a", 9900))
		return r.code == http.StatusOK, r.String()
	})

	flaky.fails.Store(3) // B's next three reads of the entity fail
	r := e.adminDo("POST", "/admin/entities", map[string]any{"name": "partner", "ca_cert": string(newCA.pem), "force": true})
	if r.code != http.StatusCreated {
		t.Fatalf("replace partner's CA on A: %s", r)
	}
	e.extraKeys = append(e.extraKeys, newCA.keyPEM)
	feedEventually(t, "B refuses the replaced CA's certificate once its store reads work again", func() (bool, string) {
		r, err := b.post(e.freshClient(&oldCert), "/heartbeat", heartbeat("partner-a", 9900))
		if err != nil {
			return false, err.Error() // B closes the refused certificate's connections as it applies the change
		}
		return r.code == http.StatusForbidden, r.String()
	})
	if got := flaky.fails.Load(); got > 0 {
		t.Errorf("B's injected read failures not all spent (%d left): the change took effect without the reads it needs", got)
	}
	if r := b.do(t, e.freshClient(&newCert), "POST", "/heartbeat", heartbeat("partner-a", 9900)); r.code != http.StatusOK {
		t.Errorf("the new CA's certificate on B: %s, want 200", r)
	}
	if !b.log.hasRecord(t, "INFO", "change event applied after a retry") {
		t.Errorf("B did not log the retried change event")
	}
	b.checkLog(t)
}
