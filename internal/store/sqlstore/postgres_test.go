package sqlstore_test

import (
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/internal/store/storetest"
)

// opener returns a storetest.Opener on srv that maps each directory to a
// schema of its own.
func opener(srv *pgtest.Server) storetest.Opener {
	var mu sync.Mutex
	dsns := map[string]string{}
	return func(t *testing.T, dir string) store.Store {
		mu.Lock()
		dsn, ok := dsns[dir]
		if !ok {
			dsn = srv.Schema(t)
			dsns[dir] = dsn
		}
		mu.Unlock()
		s, err := sqlstore.OpenPostgres(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func TestPostgresConformance(t *testing.T) {
	storetest.Run(t, opener(pgtest.Start(t)))
}
