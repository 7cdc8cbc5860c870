package storetest

import (
	"context"
	"testing"

	"github.com/meshtrust/meshtrust/internal/store"
)

// AgentLister is what StoredAgent reads: a store.Store, or the smaller
// store a registry is built on.
type AgentLister interface {
	Agents(ctx context.Context) ([]store.Agent, error)
}

// StoredAgent returns st's record of agent id, if it holds one: what the
// tests of the store's users (the registry, meshd's replicas) read back to
// see what reached the database.
func StoredAgent(t testing.TB, st AgentLister, id string) (store.Agent, bool) {
	t.Helper()
	recs, err := st.Agents(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if rec.ID == id {
			return rec, true
		}
	}
	return store.Agent{}, false
}
