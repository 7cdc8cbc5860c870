package main

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/storetest"
)

// listed returns GET /agents on r as id -> owner and endpoint.
func listed(t *testing.T, c *http.Client, r *replica) map[string][2]string {
	t.Helper()
	m := map[string][2]string{}
	for _, a := range list(t, c, r) {
		m[a.ID] = [2]string{a.Owner, a.Endpoint}
	}
	return m
}

// lastAudit returns the last audit entry about id.
func lastAudit(t *testing.T, st store.Store, id string) store.AuditEntry {
	t.Helper()
	log, err := st.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var last store.AuditEntry
	for _, a := range log {
		if a.Identity == id {
			last = a
		}
	}
	return last
}

// TestReplicaOwnership runs three meshd processes (TLS auto) on one
// PostgreSQL and drives the three sequences by which a replica holding an
// agent's record from before a release or a claim made on another used to
// write it back: a squatter's heartbeat to B right after an operator
// released its id on C and its rightful owner claimed it on A; a routine
// liveness flush on B after a release, without any heartbeat; and a
// heartbeat without a certificate to B after a certificate claimed the
// id on A. In each, the database ends with the owner its audit log names,
// and every replica lists that owner.
func TestReplicaOwnership(t *testing.T) {
	bin := buildBinaries(t)
	pg := pgtest.Start(t)
	dsn := pg.Schema(t)
	// A and C mark no agent silent during the test, so that the only
	// liveness writes of released agents can be B's, which sweeps every
	// two seconds.
	long := []string{"--tls-mode", "auto", "--heartbeat-timeout", "10m"}
	rs, m, st := startMesh(t, bin, dsn, [3][]string{long, {"--tls-mode", "auto", "--heartbeat-timeout", "2s", "--heartbeat-interval", "1s"}, long})
	a, b, c := rs[0], rs[1], rs[2]
	replicas := rs[:]
	certless := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: m.roots, ServerName: "localhost"}}}

	post := func(cl *http.Client, r *replica, id, host string) (int, string) {
		code, body := call(cl, "POST", "https://"+r.addr+"/heartbeat", map[string]any{"agent_id": id, "http_host": host, "http_port": 9000})
		return code, string(body)
	}
	ok := func(code int) bool { return code == http.StatusOK || code == http.StatusCreated }
	// everyListing waits until every replica lists id as owner's (owner
	// "" for none), with an endpoint that is not evil.example.
	everyListing := func(t *testing.T, id, owner string) {
		t.Helper()
		for _, r := range replicas {
			eventually.NoError(t, r.name+" lists "+id, func() error {
				got, held := listed(t, certless, r)[id]
				if owner == "-" && !held || owner != "-" && held && got[0] == owner && !strings.Contains(got[1], "evil") {
					return nil
				}
				return fmt.Errorf("listed as %v, want owner %q", got, owner)
			})
		}
	}
	// stored checks that the database holds owner's record of id and that
	// the audit log's last entry about id is owner's claim.
	stored := func(t *testing.T, id, owner string) {
		t.Helper()
		rec, held := storetest.StoredAgent(t, st, id)
		if !held || rec.Owner != owner || strings.Contains(string(rec.Payload), "evil") {
			t.Errorf("the database holds %+v (%v), want %s's record", rec, held, owner)
		}
		if last := lastAudit(t, st, id); last.Action != "agent.claim" || !strings.Contains(last.Detail, owner) {
			t.Errorf("the last audit entry of %s is %+v, want %s's claim", id, last, owner)
		}
	}
	release := func(t *testing.T, id string) {
		t.Helper()
		if code, body := c.admin(t, "DELETE", "/admin/agents/"+id, nil); code != http.StatusOK {
			t.Fatalf("release of %s on C: %d %s", id, code, body)
		}
	}

	t.Run("ReleasedThenClaimedElsewhere", func(t *testing.T) {
		squatter := m.client(m.identity(t, "opus", "ct666"))
		owner := m.client(m.identity(t, "opus", "ct111"))
		if code, body := post(squatter, b, "opus", "squat.example"); !ok(code) {
			t.Fatalf("the squatter's heartbeat to B: %d %s", code, body)
		}
		everyListing(t, "opus", "opus@ct666")
		release(t, "opus")
		// A refuses opus@ct111 until it has merged the release.
		eventually.NoError(t, "opus@ct111's claim on A after the release", func() error {
			if code, body := post(owner, a, "opus", "opus.example"); !ok(code) {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		// At once, within B's merge interval: the squatter's change.
		if code, body := post(squatter, b, "opus", "evil.example"); code != http.StatusForbidden {
			t.Errorf("the squatter's heartbeat to B after opus@ct111's claim: %d %s, want 403", code, body)
		}
		stored(t, "opus", "opus@ct111")
		everyListing(t, "opus", "opus@ct111")
		stored(t, "opus", "opus@ct111")
	})

	t.Run("ReleasedNotResurrectedByFlush", func(t *testing.T) {
		// lyra, then canary, register on B and fall silent; B alone marks
		// silent agents within the test, in one sweep and one flush.
		squatter := m.client(m.identity(t, "lyra", "ct666"))
		canary := m.client(m.identity(t, "canary", "ct113"))
		for _, hb := range []struct {
			cl *http.Client
			id string
		}{{squatter, "lyra"}, {canary, "canary"}} {
			if code, body := post(hb.cl, b, hb.id, hb.id+".example"); !ok(code) {
				t.Fatalf("%s's heartbeat to B: %d %s", hb.id, code, body)
			}
		}
		everyListing(t, "lyra", "lyra@ct666")
		release(t, "lyra")
		// B's sweep that marks canary unhealthy would mark lyra too, had
		// it kept it; its flush writes both in one batch.
		eventually.True(t, "B writes canary's silence", func() bool {
			rec, held := storetest.StoredAgent(t, st, "canary")
			return held && rec.Status == "unhealthy"
		})
		if rec, held := storetest.StoredAgent(t, st, "lyra"); held {
			t.Errorf("a liveness flush brought the released lyra back: %+v", rec)
		}
		if last := lastAudit(t, st, "lyra"); last.Action != "agent.release" {
			t.Errorf("the last audit entry of lyra is %+v, want its release", last)
		}
		everyListing(t, "lyra", "-")
	})

	t.Run("CertlessCannotRevertClaim", func(t *testing.T) {
		owner := m.client(m.identity(t, "vega", "ct111"))
		if code, body := post(certless, b, "vega", "vega.example"); !ok(code) {
			t.Fatalf("the certless heartbeat to B: %d %s", code, body)
		}
		everyListing(t, "vega", "")
		if code, body := post(owner, a, "vega", "vega.example"); !ok(code) {
			t.Fatalf("vega@ct111's claim on A: %d %s", code, body)
		}
		if code, body := post(certless, b, "vega", "evil.example"); code != http.StatusForbidden {
			t.Errorf("a certless heartbeat to B after vega@ct111's claim: %d %s, want 403", code, body)
		}
		stored(t, "vega", "vega@ct111")
		everyListing(t, "vega", "vega@ct111")
		stored(t, "vega", "vega@ct111")
	})
}
