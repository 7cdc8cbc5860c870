package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// openRegistry is openStore for the registry's checks.
func openRegistry(t *testing.T, open Opener, dir string) store.Store {
	t.Helper()
	return openStore(t, open, dir)
}

// reopenRegistry closes s and opens the store on dir again.
func reopenRegistry(t *testing.T, open Opener, dir string, s store.Store) store.Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openRegistry(t, open, dir)
}

// newEntity returns an entity named name, distinct for each name, created
// at createdAt.
func newEntity(name string, createdAt time.Time) store.Entity {
	fp := sha256.Sum256([]byte("CA of " + name))
	return store.Entity{
		Name:        name,
		CAPEM:       []byte("-----BEGIN CERTIFICATE-----\n" + name + "\n-----END CERTIFICATE-----\n"),
		Fingerprint: hex.EncodeToString(fp[:]),
		Subject:     "CN=" + name + " Root CA,O=" + name,
		NotBefore:   createdAt.Add(-24 * time.Hour),
		NotAfter:    createdAt.Add(10 * 365 * 24 * time.Hour),
		CreatedAt:   createdAt,
	}
}

// entityEntry returns the audit entry recorded with a registration of e.
func entityEntry(e store.Entity) store.AuditEntry {
	at := e.CreatedAt
	if at.IsZero() {
		at = epoch() // not left to the store's clock: tests compare it
	}
	return store.AuditEntry{Time: at, Action: "entity.register", Identity: e.Name, Outcome: store.OutcomeOK, Detail: "CA " + e.Subject + " sha256 " + e.Fingerprint}
}

// markEntry returns the audit entry recorded with an entity revocation or
// rotation (action) of name at t.
func markEntry(action, name string, t time.Time) store.AuditEntry {
	return store.AuditEntry{Time: t, Action: action, Identity: name, Outcome: store.OutcomeOK}
}

func mustPutEntity(t *testing.T, s store.Store, replace bool, es ...store.Entity) {
	t.Helper()
	for _, e := range es {
		if err := s.PutEntity(t.Context(), e, replace, entityEntry(e)); err != nil {
			t.Fatalf("PutEntity(%q, replace %v): %v", e.Name, replace, err)
		}
	}
}

// A timeRef is one time field of a record, by name.
type timeRef struct {
	name string
	t    *time.Time
}

// recordDiff describes how got differs from want, or returns "" if they
// are the same record. The time fields times names are compared as
// instants, whatever their location (a zero time equals only a zero
// time), then cleared; norm, if set, then evens out what a store may read
// back otherwise (an empty slice as nil, a Seq it assigns), and the rest
// is compared whole.
func recordDiff[R any](want, got R, times func(*R) []timeRef, norm func(*R)) string {
	var d []string
	wt, gt := times(&want), times(&got)
	for i, w := range wt {
		g := gt[i]
		if !g.t.Equal(*w.t) || g.t.IsZero() != w.t.IsZero() {
			d = append(d, fmt.Sprintf("%s = %s, want %s", w.name, fmtTime(*g.t), fmtTime(*w.t)))
		}
		*w.t, *g.t = time.Time{}, time.Time{}
	}
	if norm != nil {
		norm(&want)
		norm(&got)
	}
	if !reflect.DeepEqual(want, got) {
		d = append(d, fmt.Sprintf("got %+v, want %+v", got, want))
	}
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprint(d)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "zero"
	}
	return t.Format(time.RFC3339Nano)
}

// entityDiff describes how got differs from want, or returns "" if they
// are the same record.
func entityDiff(want, got store.Entity) string {
	return recordDiff(want, got, func(e *store.Entity) []timeRef {
		return []timeRef{{"NotBefore", &e.NotBefore}, {"NotAfter", &e.NotAfter}, {"CreatedAt", &e.CreatedAt}, {"RevokedAt", &e.RevokedAt}, {"RotatedAt", &e.RotatedAt}}
	}, func(e *store.Entity) {
		if len(e.CAPEM) == 0 {
			e.CAPEM = nil
		}
	})
}

// checkEntities fails t unless s holds exactly want, which is in name
// order, through both Entity and Entities.
func checkEntities(t *testing.T, what string, s store.Store, want []store.Entity) {
	t.Helper()
	for _, e := range want {
		got, err := s.Entity(t.Context(), e.Name)
		if err != nil {
			t.Fatalf("%s: Entity(%q): %v", what, e.Name, err)
		}
		if d := entityDiff(e, got); d != "" {
			t.Errorf("%s: Entity(%q): %s", what, e.Name, d)
		}
	}
	all, err := s.Entities(t.Context())
	if err != nil {
		t.Fatalf("%s: Entities: %v", what, err)
	}
	names := func(es []store.Entity) []string {
		var n []string
		for _, e := range es {
			n = append(n, e.Name)
		}
		return n
	}
	if !slices.Equal(names(all), names(want)) {
		t.Fatalf("%s: Entities returned %q, want %q", what, names(all), names(want))
	}
	for i := range want {
		if d := entityDiff(want[i], all[i]); d != "" {
			t.Errorf("%s: Entities[%d] (%q): %s", what, i, want[i].Name, d)
		}
	}
}

// checkLog fails t unless s's audit log, its chain intact, carries want's
// caller-supplied fields in want's order.
func checkLog(t *testing.T, what string, s store.Store, want []store.AuditEntry) {
	t.Helper()
	log := auditLog(t, s)
	if len(log) != len(want) {
		t.Fatalf("%s: audit log has %d entries, want %d", what, len(log), len(want))
	}
	for i := range want {
		checkEntry(t, log[i], want[i])
	}
}

func testEntityRoundTrip(t *testing.T, open Opener) {
	cet := time.FixedZone("CET", 3600)
	full := newEntity("partner-corp", time.Date(2026, 3, 1, 13, 0, 0, 7, cet))
	full.CAPEM = append([]byte("-----BEGIN CERTIFICATE-----\n"), 0x00, 0xff, 0xfe, '\n')
	full.Subject = "CN=Partner Root CA,O=Partner Corp,C=DE"
	full.NotBefore = time.Date(2026, 2, 28, 23, 59, 59, 999999999, cet)
	full.NotAfter = time.Date(2262, 1, 1, 0, 0, 0, 1, time.UTC)
	full.Namespace = "ids:partner-a,weather-agent-1"
	// Every time zero and no PEM: what the store is given back unchanged.
	bare := store.Entity{Name: "acme"}
	rotated := newEntity("mid", epoch())
	gone := newEntity("zeta", epoch().Add(time.Second))

	dir := t.TempDir()
	s := openRegistry(t, open, dir)
	mustPutEntity(t, s, false, full, bare, gone, rotated)
	log := []store.AuditEntry{entityEntry(full), entityEntry(bare), entityEntry(gone), entityEntry(rotated)}

	marks := []struct {
		action string
		e      *store.Entity
		at     time.Time
	}{
		{"entity.rotate", &gone, epoch().Add(30 * time.Minute)},
		{"entity.revoke", &gone, epoch().Add(time.Hour + time.Nanosecond)},
		{"entity.rotate", &rotated, epoch().Add(2 * time.Hour).In(cet)},
	}
	for _, m := range marks {
		a := markEntry(m.action, m.e.Name, m.at)
		var err error
		if m.action == "entity.revoke" {
			err = s.RevokeEntity(t.Context(), m.e.Name, m.at, a)
			m.e.RevokedAt = m.at
		} else {
			err = s.RotateEntity(t.Context(), m.e.Name, m.at, a)
			m.e.RotatedAt = m.at
		}
		if err != nil {
			t.Fatalf("%s %q: %v", m.action, m.e.Name, err)
		}
		log = append(log, a)
	}

	for _, phase := range []string{"before reopen", "after reopen"} {
		checkEntities(t, phase, s, []store.Entity{bare, rotated, full, gone})
		if got, err := s.Entity(t.Context(), gone.Name); err != nil || !got.Revoked() {
			t.Errorf("%s: Entity(%q).Revoked() = false, %v; want true", phase, gone.Name, err)
		}
		checkLog(t, phase, s, log)
		s = reopenRegistry(t, open, dir, s)
	}
}

func testEntityExists(t *testing.T, open Opener) {
	orig := newEntity("partner-corp", epoch())
	other := newEntity("other-ca", epoch().Add(time.Hour))
	other.Name = orig.Name
	for _, tt := range sameKey(orig, "other CA, same name", other) {
		t.Run(tt.name, func(t *testing.T) {
			s := openRegistry(t, open, t.TempDir())
			mustPutEntity(t, s, false, orig)
			if err := s.PutEntity(t.Context(), tt.dup, false, entityEntry(tt.dup)); !errors.Is(err, store.ErrExists) {
				t.Fatalf("PutEntity(registered name, no replace) = %v, want an error wrapping store.ErrExists", err)
			}
			// The refused write, and its audit entry, left nothing behind.
			checkEntities(t, "after the refused PutEntity", s, []store.Entity{orig})
			checkLog(t, "after the refused PutEntity", s, []store.AuditEntry{entityEntry(orig)})

			mustPutEntity(t, s, true, tt.dup)
			checkEntities(t, "after PutEntity with replace", s, []store.Entity{tt.dup})
			checkLog(t, "after PutEntity with replace", s, []store.AuditEntry{entityEntry(orig), entityEntry(tt.dup)})
		})
	}

	t.Run("replace of an unknown name", func(t *testing.T) {
		s := openRegistry(t, open, t.TempDir())
		mustPutEntity(t, s, true, orig)
		checkEntities(t, "after PutEntity with replace", s, []store.Entity{orig})
	})
	t.Run("replace clears revocation and rotation", func(t *testing.T) {
		s := openRegistry(t, open, t.TempDir())
		mustPutEntity(t, s, false, orig)
		at := epoch().Add(time.Minute)
		if err := s.RotateEntity(t.Context(), orig.Name, at, markEntry("entity.rotate", orig.Name, at)); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeEntity(t.Context(), orig.Name, at, markEntry("entity.revoke", orig.Name, at)); err != nil {
			t.Fatal(err)
		}
		mustPutEntity(t, s, true, other)
		checkEntities(t, "after PutEntity with replace", s, []store.Entity{other})
	})
}

func testEntityReregister(t *testing.T, open Opener) {
	for _, replace := range []bool{false, true} {
		t.Run(fmt.Sprintf("replace=%v", replace), func(t *testing.T) {
			dir := t.TempDir()
			s := openRegistry(t, open, dir)
			first := newEntity("partner-corp", epoch())
			mustPutEntity(t, s, false, first)
			at := epoch().Add(time.Hour)
			revoke := markEntry("entity.revoke", first.Name, at)
			if err := s.RevokeEntity(t.Context(), first.Name, at, revoke); err != nil {
				t.Fatalf("RevokeEntity: %v", err)
			}

			// The entity comes back with a new CA.
			again := newEntity("partner-corp-2027", epoch().Add(2*time.Hour))
			again.Name = first.Name
			if err := s.PutEntity(t.Context(), again, replace, entityEntry(again)); err != nil {
				t.Fatalf("PutEntity(revoked name, replace %v): %v", replace, err)
			}
			s = reopenRegistry(t, open, dir, s)
			checkEntities(t, "after re-registration", s, []store.Entity{again})
			if got, _ := s.Entity(t.Context(), first.Name); got.Revoked() {
				t.Errorf("re-registered entity is still revoked (RevokedAt %s)", fmtTime(got.RevokedAt))
			}
			checkLog(t, "after re-registration", s, []store.AuditEntry{entityEntry(first), revoke, entityEntry(again)})

			// Registered again, it refuses a duplicate as any live entity does.
			if err := s.PutEntity(t.Context(), first, false, entityEntry(first)); !errors.Is(err, store.ErrExists) {
				t.Errorf("PutEntity(re-registered name, no replace) = %v, want an error wrapping store.ErrExists", err)
			}
		})
	}
}

func testRegistryNotFound(t *testing.T, open Opener) {
	s, known, ag, claims := openWithAgent(t, open, "known")

	at := epoch().Add(time.Hour)
	unknown := ag
	unknown.ID = "unknown"
	calls := []namedCall{
		{"Entity", func() error { _, err := s.Entity(t.Context(), "unknown"); return err }},
		// Only a claim inserts: a change to an agent not stored is refused.
		{"UpdateAgent", func() error { return s.UpdateAgent(t.Context(), unknown) }},
		{"RevokeEntity", func() error {
			return s.RevokeEntity(t.Context(), "unknown", at, markEntry("entity.revoke", "unknown", at))
		}},
		{"RotateEntity", func() error {
			return s.RotateEntity(t.Context(), "unknown", at, markEntry("entity.rotate", "unknown", at))
		}},
		{"DeleteAgent", func() error {
			return s.DeleteAgent(t.Context(), "unknown", markEntry("agent.delete", "unknown", at))
		}},
	}
	checkCalls(t, "of an unknown name", store.ErrNotFound, calls)
	// Nothing was written: no record changed and no audit entry appended.
	checkRegistry(t, "after the refused calls", s, known, ag, claims)
}

// openWithAgent opens a new store holding the entity named entity and one
// agent, claimed; it returns them and the claim's audit entries.
func openWithAgent(t *testing.T, open Opener, entity string) (store.Store, store.Entity, store.Agent, []store.AuditEntry) {
	t.Helper()
	s := openRegistry(t, open, t.TempDir())
	e := newEntity(entity, epoch())
	mustPutEntity(t, s, false, e)
	ag := newAgent(1, epoch())
	return s, e, ag, mustClaim(t, s, ag)
}

// checkRegistry fails t unless s holds exactly the entity e and the agent
// ag, and its audit log is e's entry followed by claims, ag's.
func checkRegistry(t *testing.T, what string, s store.Store, e store.Entity, ag store.Agent, claims []store.AuditEntry) {
	t.Helper()
	checkEntities(t, what, s, []store.Entity{e})
	checkAgents(t, what, s, []store.Agent{ag})
	checkLog(t, what, s, append([]store.AuditEntry{entityEntry(e)}, claims...))
}

// newAgent returns an agent record, distinct for each n, registered at
// registeredAt.
func newAgent(n int, registeredAt time.Time) store.Agent {
	fp := sha256.Sum256(fmt.Appendf(nil, "cert %d", n))
	return store.Agent{
		ID:              fmt.Sprintf("agent-%05d", n),
		Owner:           fmt.Sprintf("agent%d@ct111", n),
		Entity:          "partner-corp",
		Source:          "entities",
		Payload:         fmt.Appendf(nil, `{"agent_id":"agent-%05d","http_port":%d,"tools":[{"function_name":"f"}]}`, n, 9000+n),
		CertSerial:      fmt.Sprintf("%x", 0x7b000+n),
		CertFingerprint: hex.EncodeToString(fp[:]),
		Status:          "healthy",
		RegisteredAt:    registeredAt,
		LastSeen:        registeredAt.Add(time.Duration(n) * time.Millisecond),
	}
}

func mustPutAgents(t *testing.T, s store.Store, agents ...store.Agent) {
	t.Helper()
	if err := s.PutAgents(t.Context(), agents); err != nil {
		t.Fatalf("PutAgents(%d agents): %v", len(agents), err)
	}
}

// claimEntry is the audit entry of ag's claim.
func claimEntry(ag store.Agent) store.AuditEntry {
	return store.AuditEntry{Time: epoch(), Action: "agent.claim", Identity: ag.ID, Outcome: store.OutcomeOK, Detail: "owner " + ag.Owner}
}

// mustClaim records each of agents through its claim (PutAgentAudited,
// the one write that inserts an agent), one after the other, and returns
// their audit entries in order.
func mustClaim(t *testing.T, s store.Store, agents ...store.Agent) []store.AuditEntry {
	t.Helper()
	var log []store.AuditEntry
	for _, ag := range agents {
		a := claimEntry(ag)
		if err := s.PutAgentAudited(t.Context(), ag, a); err != nil {
			t.Fatalf("PutAgentAudited(%s by %q): %v", ag.ID, ag.Owner, err)
		}
		log = append(log, a)
	}
	return log
}

// mustClaimAll claims agents from several goroutines at once, so that a
// store that commits in groups records many in one transaction.
func mustClaimAll(t *testing.T, s store.Store, agents []store.Agent) {
	t.Helper()
	const workers = 16
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(agents); i += workers {
				if err := s.PutAgentAudited(t.Context(), agents[i], claimEntry(agents[i])); err != nil {
					t.Errorf("PutAgentAudited(%s): %v", agents[i].ID, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// ownedAs returns ag with the ownership (owner, entity, source) of of.
func ownedAs(ag, of store.Agent) store.Agent {
	ag.Owner, ag.Entity, ag.Source = of.Owner, of.Entity, of.Source
	return ag
}

// agentDiff describes how got differs from want, or returns "" if they
// are the same record.
func agentDiff(want, got store.Agent) string {
	return recordDiff(want, got, func(a *store.Agent) []timeRef {
		return []timeRef{{"RegisteredAt", &a.RegisteredAt}, {"LastSeen", &a.LastSeen}, {"RotateFrom", &a.RotateFrom}}
	}, func(a *store.Agent) {
		if len(a.Payload) == 0 {
			a.Payload = nil
		}
	})
}

// checkAgents fails t unless s holds exactly want; want need not be in
// id order.
func checkAgents(t *testing.T, what string, s store.Store, want []store.Agent) {
	t.Helper()
	want = slices.Clone(want)
	sort.Slice(want, func(i, j int) bool { return want[i].ID < want[j].ID })
	got, err := s.Agents(t.Context())
	if err != nil {
		t.Fatalf("%s: Agents: %v", what, err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: Agents returned %d agents, want %d", what, len(got), len(want))
	}
	bad := 0
	for i := range want {
		if got[i].ID != want[i].ID {
			t.Fatalf("%s: Agents[%d] is %q, want %q (Agents must be in id order)", what, i, got[i].ID, want[i].ID)
		}
		if d := agentDiff(want[i], got[i]); d != "" {
			t.Errorf("%s: Agents[%d] (%q): %s", what, i, want[i].ID, d)
			if bad++; bad == 5 {
				t.Fatalf("%s: giving up after %d differences", what, bad)
			}
		}
	}
}

func testAgentRoundTrip(t *testing.T, open Opener) {
	cet := time.FixedZone("CET", 3600)
	full := newAgent(7, time.Date(2026, 3, 1, 13, 0, 0, 7, cet))
	full.Payload = []byte(`{"agent_id":"agent-00007","description":"Bücher \u2603 \n","tools":[]}`)
	full.Entity, full.Source = "", "localca"
	full.Status = "evicted"
	full.Reason = `entity "partner-corp" revoked`
	full.LastSeen = time.Unix(0, 0) // the epoch is a time, not "never"
	full.RotateFrom = time.Date(2262, 1, 1, 0, 0, 0, 1, time.UTC)
	full.Version = 1<<53 + 1 // not rounded through a float
	// Every time zero, no source (a record from before sources were kept)
	// and no payload: what the store is given back unchanged.
	bare := store.Agent{ID: "agent-00001"}
	mid := newAgent(3, epoch())
	want := []store.Agent{full, bare, mid}

	dir := t.TempDir()
	s := openRegistry(t, open, dir)
	// The registry records an agent through its claim, with its audit
	// entry.
	claims := mustClaim(t, s, full, bare, mid)
	// Liveness is not audited.
	mustPutAgents(t, s, mid)
	for _, phase := range []string{"before reopen", "after reopen"} {
		checkAgents(t, phase, s, want)
		checkLog(t, phase, s, claims)
		s = reopenRegistry(t, open, dir, s)
	}
}

func testPutAgentsUpsert(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openRegistry(t, open, dir)
	a1, a2, a3 := newAgent(1, epoch()), newAgent(2, epoch()), newAgent(3, epoch())
	a2.RotateFrom = epoch().Add(time.Minute)
	claims := mustClaim(t, s, a1, a2, a3)

	// a2 changes every field but its ownership (its rotation done, so
	// RotateFrom goes back to zero); a4 is not stored, and PutAgents
	// never inserts: only a claim does.
	a2b := ownedAs(newAgent(22, epoch().Add(time.Hour)), a2)
	a2b.ID = a2.ID
	a2b.Status, a2b.Reason = "unhealthy", "silent for 90s"
	a4 := newAgent(4, epoch().Add(time.Hour))
	mustPutAgents(t, s, a4, a2b)
	want := []store.Agent{a1, a2b, a3}
	checkAgents(t, "after the update", s, want)

	for _, empty := range [][]store.Agent{nil, {}} {
		if err := s.PutAgents(t.Context(), empty); err != nil {
			t.Errorf("PutAgents(%#v) = %v, want nil", empty, err)
		}
	}
	s = reopenRegistry(t, open, dir, s)
	checkAgents(t, "after empty batches and a reopen", s, want)
	checkLog(t, "after PutAgents", s, claims)

	// The upsert's version rule, run from here rather than listed in Run,
	// so that it comes with the check it refines.
	t.Run("Versions", func(t *testing.T) { testPutAgentsVersions(t, open) })
}

// testPutAgentsVersions checks the version rule of PutAgents: a record
// replaces the stored one only if its version is not older, so a batch
// the registry copied before a newer write cannot undo that write, while
// a batch of the same version still carries newer liveness.
func testPutAgentsVersions(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openRegistry(t, open, dir)
	cur := newAgent(1, epoch())
	cur.Version = 3
	other := newAgent(2, epoch())
	other.Version = 5
	claims := mustClaim(t, s, cur, other)

	// Older: every field but the ownership differs, and none of it may
	// land.
	old := ownedAs(newAgent(11, epoch().Add(-time.Hour)), cur)
	old.ID, old.Version = cur.ID, 2
	old.Status, old.Reason = "evicted", "a stale copy"
	mustPutAgents(t, s, old)
	checkAgents(t, "after an older version", s, []store.Agent{cur, other})

	// Equal: newer liveness (and whatever else came with it) is applied.
	cur.LastSeen = cur.LastSeen.Add(time.Minute)
	cur.Status = "unhealthy"
	mustPutAgents(t, s, cur)
	checkAgents(t, "after an equal version with newer liveness", s, []store.Agent{cur, other})

	// Within one batch too: the newer record stands whatever its place,
	// and an agent not stored is not inserted whatever its version.
	newer := ownedAs(newAgent(21, epoch().Add(time.Hour)), cur)
	newer.ID, newer.Version = cur.ID, 4
	stale := other
	stale.Version, stale.Status = 4, "healthy, a stale copy"
	fresh := newAgent(3, epoch())
	fresh.Version = 9
	mustPutAgents(t, s, newer, old, stale, fresh)
	want := []store.Agent{newer, other}
	checkAgents(t, "after a batch of mixed versions", s, want)
	s = reopenRegistry(t, open, dir, s)
	checkAgents(t, "after a reopen", s, want)

	// A deleted agent's version goes with it: claimed again, it starts
	// over.
	del := markEntry("agent.delete", newer.ID, epoch().Add(2*time.Hour))
	if err := s.DeleteAgent(t.Context(), newer.ID, del); err != nil {
		t.Fatalf("DeleteAgent: %v", err)
	}
	again := newAgent(1, epoch().Add(3*time.Hour))
	again.Version = 1
	claims = append(claims, del)
	claims = append(claims, mustClaim(t, s, again)...)
	checkAgents(t, "after a delete and a new claim", s, []store.Agent{again, other})
	checkLog(t, "after PutAgents", s, claims)
}

func testPutAgentsBatch(t *testing.T, open Opener) {
	const n = 5000
	dir := t.TempDir()
	s := openRegistry(t, open, dir)
	batch := make([]store.Agent, n)
	for i := range batch {
		// Out of id order, so the store has to sort.
		batch[i] = newAgent((i*7919)%n, epoch())
	}
	mustClaimAll(t, s, batch)
	checkAgents(t, "after the claims", s, batch)

	// The registry's flusher: every agent's liveness changes at once.
	for i := range batch {
		batch[i].Status = "unhealthy"
		batch[i].LastSeen = batch[i].LastSeen.Add(time.Minute)
	}
	mustPutAgents(t, s, batch...)
	s = reopenRegistry(t, open, dir, s)
	checkAgents(t, "after the batch and a reopen", s, batch)
	if log := auditLog(t, s); len(log) != n {
		t.Errorf("the audit log holds %d entries after %d claims and a batch of liveness, want the claims alone", len(log), n)
	}
}

func testDeleteAgent(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := openRegistry(t, open, dir)
	a1, a2 := newAgent(1, epoch()), newAgent(2, epoch())
	claims := mustClaim(t, s, a1, a2)
	del := store.AuditEntry{Time: epoch().Add(time.Hour), Action: "agent.delete", Identity: a1.ID, Outcome: store.OutcomeOK, Detail: "by " + a1.Owner}
	if err := s.DeleteAgent(t.Context(), a1.ID, del); err != nil {
		t.Fatalf("DeleteAgent: %v", err)
	}
	if err := s.DeleteAgent(t.Context(), a1.ID, del); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteAgent(deleted agent) = %v, want an error wrapping store.ErrNotFound", err)
	}
	s = reopenRegistry(t, open, dir, s)
	checkAgents(t, "after DeleteAgent", s, []store.Agent{a2})
	checkLog(t, "after DeleteAgent", s, append(claims, del))

	// A write other than a claim does not bring it back (a replica's
	// flush of the record it held, say).
	late := a1
	late.Version++
	mustPutAgents(t, s, late)
	if err := s.UpdateAgent(t.Context(), late); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateAgent(deleted agent) = %v, want an error wrapping store.ErrNotFound", err)
	}
	checkAgents(t, "after writes to the deleted agent", s, []store.Agent{a2})

	// A deleted agent can be claimed again.
	mustClaim(t, s, a1)
	checkAgents(t, "after a new claim", s, []store.Agent{a1, a2})
}

// testRegistryConcurrent runs batches of agents, entity operations and
// reads at once. Readers must see each batch whole or not at all, and a
// writer must see its own batch once PutAgents has returned.
func testRegistryConcurrent(t *testing.T, open Opener) {
	const writers, batches, batchSize, entities = 8, 4, 25, 10
	s := openRegistry(t, open, t.TempDir())

	var (
		writing sync.WaitGroup
		wg      sync.WaitGroup
		done    = make(chan struct{})
		all     = make([]store.Agent, writers*batches*batchSize)
	)
	// Claimed first (PutAgents never inserts); each batch then marks its
	// agents unhealthy at once.
	for i := range all {
		all[i] = newAgent(i, epoch())
	}
	mustClaimAll(t, s, all)
	marked := func(got []store.Agent) int {
		n := 0
		for _, a := range got {
			if a.Status == "unhealthy" {
				n++
			}
		}
		return n
	}
	for w := range writers {
		writing.Go(func() {
			for b := range batches {
				batch := slices.Clone(all[((w*batches)+b)*batchSize:][:batchSize])
				for i := range batch {
					batch[i].Status = "unhealthy"
				}
				if err := s.PutAgents(t.Context(), batch); err != nil {
					t.Errorf("PutAgents: %v", err)
					return
				}
				got, err := s.Agents(t.Context())
				if err != nil {
					t.Errorf("Agents: %v", err)
					return
				}
				i, ok := slices.BinarySearchFunc(got, batch[0].ID, func(a store.Agent, id string) int {
					return strings.Compare(a.ID, id)
				})
				if !ok || got[i].Status != "unhealthy" {
					t.Errorf("agent %s is not marked in Agents after PutAgents returned", batch[0].ID)
				}
			}
		})
	}
	var wantLog []store.AuditEntry
	writing.Go(func() {
		for i := range entities {
			e := newEntity(fmt.Sprintf("entity-%02d", i), epoch())
			at := epoch().Add(time.Duration(i) * time.Second)
			steps := []store.AuditEntry{entityEntry(e), markEntry("entity.rotate", e.Name, at), markEntry("entity.revoke", e.Name, at)}
			if err := s.PutEntity(t.Context(), e, false, steps[0]); err != nil {
				t.Errorf("PutEntity: %v", err)
				return
			}
			if err := s.RotateEntity(t.Context(), e.Name, at, steps[1]); err != nil {
				t.Errorf("RotateEntity: %v", err)
				return
			}
			if err := s.RevokeEntity(t.Context(), e.Name, at, steps[2]); err != nil {
				t.Errorf("RevokeEntity: %v", err)
				return
			}
			wantLog = append(wantLog, steps...)
		}
	})
	for range 2 {
		wg.Go(func() {
			last := 0
			for {
				select {
				case <-done:
					return
				default:
				}
				got, err := s.Agents(t.Context())
				if err != nil {
					t.Errorf("Agents: %v", err)
					return
				}
				n := marked(got)
				if n%batchSize != 0 || n < last {
					t.Errorf("Agents returned %d marked agents after %d: a batch of %d was seen in part, or writes went back", n, last, batchSize)
					return
				}
				last = n
				if !slices.IsSortedFunc(got, func(a, b store.Agent) int { return strings.Compare(a.ID, b.ID) }) {
					t.Error("Agents is not in id order")
					return
				}
				es, err := s.Entities(t.Context())
				if err != nil {
					t.Errorf("Entities: %v", err)
					return
				}
				if !slices.IsSortedFunc(es, func(a, b store.Entity) int { return strings.Compare(a.Name, b.Name) }) {
					t.Error("Entities is not in name order")
					return
				}
			}
		})
	}
	writing.Wait()
	close(done)
	wg.Wait()
	if t.Failed() {
		return
	}

	got, err := s.Agents(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(all) || marked(got) != len(all) {
		t.Errorf("Agents returned %d agents, %d of them marked, want %d, all marked", len(got), marked(got), len(all))
	}
	es, err := s.Entities(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != entities {
		t.Errorf("Entities returned %d entities, want %d", len(es), entities)
	}
	for _, e := range es {
		if !e.Revoked() || e.RotatedAt.IsZero() {
			t.Errorf("entity %q: RevokedAt %s, RotatedAt %s; want both set", e.Name, fmtTime(e.RevokedAt), fmtTime(e.RotatedAt))
		}
	}
	// The claims, and the entity operations' entries in order; nothing
	// for the batches.
	var entityLog []store.AuditEntry
	claims := 0
	for _, a := range auditLog(t, s) {
		if a.Action == "agent.claim" {
			claims++
			continue
		}
		entityLog = append(entityLog, a)
	}
	if claims != len(all) || len(entityLog) != len(wantLog) {
		t.Fatalf("audit log holds %d claims and %d other entries, want %d and %d", claims, len(entityLog), len(all), len(wantLog))
	}
	for i := range wantLog {
		checkEntry(t, entityLog[i], wantLog[i])
	}
}

func testRegistryCanceledContext(t *testing.T, open Opener) {
	s, e, ag, claims := openWithAgent(t, open, "partner-corp")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	at := epoch().Add(time.Hour)
	calls := []namedCall{
		{"PutEntity", func() error { e2 := newEntity("other", epoch()); return s.PutEntity(ctx, e2, false, entityEntry(e2)) }},
		{"RevokeEntity", func() error { return s.RevokeEntity(ctx, e.Name, at, markEntry("entity.revoke", e.Name, at)) }},
		{"RotateEntity", func() error { return s.RotateEntity(ctx, e.Name, at, markEntry("entity.rotate", e.Name, at)) }},
		{"PutAgents", func() error { return s.PutAgents(ctx, []store.Agent{newAgent(2, epoch())}) }},
		{"UpdateAgent", func() error { return s.UpdateAgent(ctx, ag) }},
		{"PutAgentAudited", func() error { return s.PutAgentAudited(ctx, newAgent(2, epoch()), claimEntry(newAgent(2, epoch()))) }},
		{"DeleteAgent", func() error { return s.DeleteAgent(ctx, ag.ID, markEntry("agent.delete", ag.ID, at)) }},
	}
	checkCalls(t, "with a canceled context", context.Canceled, calls)
	checkRegistry(t, "after canceled writes", s, e, ag, claims)
}

func testRegistryClosed(t *testing.T, open Opener) {
	s, e, ag, _ := openWithAgent(t, open, "partner-corp")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := t.Context()
	at := epoch().Add(time.Hour)
	calls := []namedCall{
		{"PutEntity", func() error { return s.PutEntity(ctx, e, true, entityEntry(e)) }},
		{"Entity", func() error { _, err := s.Entity(ctx, e.Name); return err }},
		{"Entities", func() error { _, err := s.Entities(ctx); return err }},
		{"RevokeEntity", func() error { return s.RevokeEntity(ctx, e.Name, at, markEntry("entity.revoke", e.Name, at)) }},
		{"RotateEntity", func() error { return s.RotateEntity(ctx, e.Name, at, markEntry("entity.rotate", e.Name, at)) }},
		{"PutAgents", func() error { return s.PutAgents(ctx, []store.Agent{ag}) }},
		{"UpdateAgent", func() error { return s.UpdateAgent(ctx, ag) }},
		{"PutAgentAudited", func() error { return s.PutAgentAudited(ctx, ag, claimEntry(ag)) }},
		{"DeleteAgent", func() error { return s.DeleteAgent(ctx, ag.ID, markEntry("agent.delete", ag.ID, at)) }},
		{"Agents", func() error { _, err := s.Agents(ctx); return err }},
	}
	checkCalls(t, "after Close", store.ErrClosed, calls)
}
