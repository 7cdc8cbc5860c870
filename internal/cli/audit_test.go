package cli_test

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// auditLog reads the env's audit log through a store opened for the call.
func (e *env) auditLog() []store.AuditEntry {
	e.t.Helper()
	st, err := sqlstore.OpenSQLite(e.t.Context(), e.path("meshtrust.db"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer st.Close()
	log, err := st.AuditLog(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	return log
}

// forgeAuditLog replaces the env's database with one whose audit log is
// the real one with entry seq's detail changed: every hash from there on is
// computed afresh, so the chain is sound. It is what someone who can write
// the database file can do.
func (e *env) forgeAuditLog(seq int64, detail string) {
	e.t.Helper()
	log := e.auditLog()
	forged := filepath.Join(e.base, "forged.db")
	st, err := sqlstore.OpenSQLite(e.t.Context(), forged)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, a := range log {
		if a.Seq == seq {
			a.Detail = detail
		}
		if err := st.Append(e.t.Context(), a); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.copyStoreID(forged)
	for _, suffix := range []string{"-wal", "-shm"} {
		os.Remove(e.path("meshtrust.db" + suffix))
		os.Rename(forged+suffix, e.path("meshtrust.db"+suffix))
	}
	if err := os.Rename(forged, e.path("meshtrust.db")); err != nil {
		e.t.Fatal(err)
	}
}

// copyStoreID gives the SQLite store at path the env's store id, as a
// forger who rewrites the file would, so the CA directory takes it for
// its own store.
func (e *env) copyStoreID(path string) {
	e.t.Helper()
	var id string
	real, err := sql.Open("sqlite", e.path("meshtrust.db"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer real.Close()
	if err := real.QueryRow("SELECT id FROM store_identity").Scan(&id); err != nil {
		e.t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"DROP TRIGGER store_identity_fixed", "UPDATE store_identity SET id = '" + id + "'"} {
		if _, err := db.Exec(q); err != nil {
			e.t.Fatalf("%s: %v", q, err)
		}
	}
}

// truncateAuditLog deletes the audit entries after keep, dropping the
// trigger that forbids it first.
func (e *env) truncateAuditLog(keep int) {
	e.t.Helper()
	db, err := sql.Open("sqlite", e.path("meshtrust.db"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"DROP TRIGGER audit_no_delete", fmt.Sprintf("DELETE FROM audit WHERE seq > %d", keep)} {
		if _, err := db.Exec(q); err != nil {
			e.t.Fatalf("%s: %v", q, err)
		}
	}
}

func TestAuditVerifyCheckpoints(t *testing.T) {
	// Each case starts from a CA that issued two certificates, each
	// command checkpointing the log it left.
	tests := []struct {
		name string
		// prep changes the env and returns extra arguments for
		// `ca audit --verify`.
		prep     func(t *testing.T, e *env, n int) []string
		wantCode int
		want     []string
	}{
		{
			name:     "intact",
			prep:     func(t *testing.T, e *env, n int) []string { return nil },
			wantCode: 0,
			want:     []string{"audit log intact", "2 checkpoints verified", "the newest vouches for entries 1 to"},
		},
		{
			name: "entry rewritten, every later hash recomputed",
			prep: func(t *testing.T, e *env, n int) []string {
				e.forgeAuditLog(2, "nothing happened here")
				return nil
			},
			wantCode: 1,
			want:     []string{"does not match the checkpoint on line 1", "was changed and every hash after it recomputed", "for the investigation"},
		},
		{
			name: "tail removed",
			prep: func(t *testing.T, e *env, n int) []string {
				e.truncateAuditLog(n - 2)
				return nil
			},
			wantCode: 1,
			want:     []string{"the log ends at entry", "were removed"},
		},
		{
			name: "tail removed with the checkpoints, caught by a copy kept elsewhere",
			prep: func(t *testing.T, e *env, n int) []string {
				cp := e.write("offhost.checkpoints", readFile(t, e.path("audit.checkpoints")))
				e.truncateAuditLog(n - 2)
				if err := os.Remove(e.path("audit.checkpoints")); err != nil {
					t.Fatal(err)
				}
				// Locally it cannot be seen...
				r := e.mustRun("ca", "audit", "--verify")
				requireContains(t, "ca audit --verify without the checkpoints", r.stdout, "no checkpoints yet")
				// ...but the copy holds what the log had.
				return []string{"--checkpoints", cp}
			},
			wantCode: 1,
			want:     []string{"offhost.checkpoints", "were removed"},
		},
		{
			name: "named checkpoints file missing",
			prep: func(t *testing.T, e *env, n int) []string {
				return []string{"--checkpoints", filepath.Join(e.base, "nope.checkpoints")}
			},
			wantCode: 1,
			want:     []string{"nope.checkpoints", "no such file"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.initCA()
			r := e.mustRun("ca", "audit", "--verify")
			requireContains(t, "ca audit --verify before any checkpoint", r.stdout, "audit log intact", "no checkpoints yet", "the chain alone was checked")
			e.mustRun("ca", "issue-node", "ct1")
			e.mustRun("ca", "issue-agent", "opus", "ct1")
			n := len(e.auditLog())

			args := append([]string{"ca", "audit", "--verify"}, tt.prep(t, e, n)...)
			r = e.run(args...)
			if r.code != tt.wantCode {
				t.Fatalf("meshctl ca audit --verify: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tt.wantCode, r.stdout, r.stderr)
			}
			requireContains(t, "meshctl ca audit --verify", r.output(), tt.want...)
		})
	}
}

// TestCommandsCheckpoint: a CA command that succeeds anchors the log it
// leaves; one that changes nothing writes no checkpoint.
func TestCommandsCheckpoint(t *testing.T) {
	e := newEnv(t)
	e.initCA()
	e.mustRun("ca", "issue-node", "ct1")
	log := e.auditLog()
	last := log[len(log)-1]
	data := string(readFile(t, e.path("audit.checkpoints")))
	requireContains(t, "audit.checkpoints", data, fmt.Sprintf(`"seq":%d,"hash":%q`, last.Seq, last.Hash))

	e.mustRun("ca", "list")
	if got := string(readFile(t, e.path("audit.checkpoints"))); got != data {
		t.Errorf("ca list, which audits nothing, changed the checkpoints:\n%s\nwas:\n%s", got, data)
	}
}
