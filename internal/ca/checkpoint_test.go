package ca_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" driver, for tampering as an attacker would

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
)

// appendAudit appends n entries to f's audit log.
func appendAudit(t testing.TB, f *fixture, n int) {
	t.Helper()
	for i := range n {
		e := store.AuditEntry{Action: "test.op", Identity: fmt.Sprintf("op%d", i), Outcome: store.OutcomeOK}
		if err := f.store.Append(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
}

// checkpoint runs f.ca.Checkpoint and fails the test unless it reports
// wrote.
func checkpoint(t testing.TB, f *fixture, wrote bool) {
	t.Helper()
	got, err := f.ca.Checkpoint(t.Context())
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if got != wrote {
		t.Fatalf("Checkpoint wrote = %v, want %v", got, wrote)
	}
}

// auditLen is the number of entries in f's audit log.
func auditLen(t testing.TB, f *fixture) int {
	t.Helper()
	log, err := f.store.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(log)
}

// verifyAudit runs ca.VerifyAudit on f's log and checkpoints file, with the
// signers the CA directory holds, and also returns what the chain check
// alone made of the log.
func verifyAudit(t testing.TB, f *fixture) (rep ca.AuditReport, err, chainErr error) {
	t.Helper()
	log, err := f.store.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(f.cfg.CheckpointsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	signers, err := ca.CheckpointSigners(f.cfg)
	if err != nil {
		t.Fatalf("CheckpointSigners: %v", err)
	}
	rep, err = ca.VerifyAudit(log, file, signers, nil)
	return rep, err, store.VerifyAuditChain(log)
}

// readCheckpoints parses every line of f's checkpoints file.
func readCheckpoints(t testing.TB, f *fixture) []ca.Checkpoint {
	t.Helper()
	var out []ca.Checkpoint
	for i, line := range strings.Split(strings.TrimSuffix(string(readFile(t, f.cfg.CheckpointsPath())), "\n"), "\n") {
		var cp ca.Checkpoint
		if err := json.Unmarshal([]byte(line), &cp); err != nil {
			t.Fatalf("line %d of the checkpoints %q: %v", i+1, line, err)
		}
		out = append(out, cp)
	}
	return out
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func appendLine(t testing.TB, path, line string) {
	t.Helper()
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.WriteString(line); err != nil {
		t.Fatal(err)
	}
}

// tamper closes f's store, runs tamper on a raw connection to the database
// file, as someone who can write the file would, and reopens the store
// (and the CA on it).
func tamper(t testing.TB, f *fixture, tamper func(*sql.DB) error) {
	t.Helper()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", f.cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	if err := tamper(db); err != nil {
		db.Close()
		t.Fatalf("tampering: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(t.Context(), f.cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.store = st
	f.open(t)
}

// execSQL returns a tampering step that runs queries.
func execSQL(queries ...string) func(*sql.DB) error {
	return func(db *sql.DB) error {
		for _, q := range queries {
			if _, err := db.Exec(q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	}
}

// rewriteAudit returns a tampering step that changes the detail of entry
// seq and recomputes its hash and every later one, so the chain verifies.
func rewriteAudit(seq int64, detail string) func(*sql.DB) error {
	return func(db *sql.DB) error {
		rows, err := db.Query(`SELECT seq, time, action, identity, outcome, detail FROM audit ORDER BY seq`)
		if err != nil {
			return err
		}
		var log []store.AuditEntry
		for rows.Next() {
			var (
				e  store.AuditEntry
				ns int64
			)
			if err := rows.Scan(&e.Seq, &ns, &e.Action, &e.Identity, &e.Outcome, &e.Detail); err != nil {
				rows.Close()
				return err
			}
			e.Time = time.Unix(0, ns)
			log = append(log, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := db.Exec("DROP TRIGGER audit_no_update"); err != nil {
			return err
		}
		prev := ""
		for _, e := range log {
			if e.Seq == seq {
				e.Detail = detail
			}
			hash := store.HashEntry(prev, e)
			if e.Seq >= seq {
				if _, err := db.Exec("UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?", e.Detail, prev, hash, e.Seq); err != nil {
					return err
				}
			}
			prev = hash
		}
		return nil
	}
}

func TestCheckpointWritesOnlyWhenTheLogMoves(t *testing.T) {
	f := newCA(t, caOptions{})
	path := f.cfg.CheckpointsPath()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("checkpoints before the first Checkpoint: %v", err)
	}
	checkpoint(t, f, true)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("%s has mode %04o, want 0644", path, fi.Mode().Perm())
	}
	before := readFile(t, path)
	checkpoint(t, f, false)
	if !bytes.Equal(before, readFile(t, path)) {
		t.Errorf("a Checkpoint with nothing new changed the file")
	}

	appendAudit(t, f, 2)
	f.clock.Advance(1)
	checkpoint(t, f, true)
	cps := readCheckpoints(t, f)
	if len(cps) != 2 {
		t.Fatalf("%d checkpoints, want 2", len(cps))
	}
	if !bytes.HasPrefix(readFile(t, path), before) {
		t.Errorf("the first checkpoint was rewritten, not appended to")
	}
	log, err := f.store.AuditLog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	last := log[len(log)-1]
	active := f.activeIntermediate(t)
	if cp := cps[1]; cp.Seq != last.Seq || cp.Hash != last.Hash || cp.KeyID != fmt.Sprintf("%x", active.SubjectKeyId) || !cp.Time.Equal(f.clock.Now()) {
		t.Errorf("checkpoint %+v, want seq %d hash %s key %x time %s", cp, last.Seq, last.Hash, active.SubjectKeyId, f.clock.Now())
	}
	if cps[0].Seq >= cps[1].Seq {
		t.Errorf("checkpoint seqs %d then %d, want increasing", cps[0].Seq, cps[1].Seq)
	}
}

func TestVerifyAuditIntact(t *testing.T) {
	f := newCA(t, caOptions{})
	appendAudit(t, f, 3)
	checkpoint(t, f, true)
	appendAudit(t, f, 2)
	checkpoint(t, f, true)
	appendAudit(t, f, 4) // after the last checkpoint: the chain alone covers these
	rep, err, _ := verifyAudit(t, f)
	if err != nil {
		t.Fatalf("VerifyAudit of an intact log: %v", err)
	}
	n := auditLen(t, f)
	if rep.Entries != n || rep.Checkpoints != 2 || rep.Newest.Seq != int64(n-4) {
		t.Errorf("report %+v, want %d entries, 2 checkpoints, the newest at %d", rep, n, n-4)
	}
}

// TestVerifyAuditDetectsTampering: each way of tampering here leaves a hash
// chain that store.VerifyAuditChain accepts; the checkpoints catch it.
func TestVerifyAuditDetectsTampering(t *testing.T) {
	tests := []struct {
		name string
		// tamper changes a CA whose log has a checkpoint at entry 10 and
		// two entries after it.
		tamper func(t *testing.T, f *fixture)
		// chainOK is whether the hash chain alone still verifies.
		chainOK bool
		want    []string
	}{
		{
			name:    "entry rewritten and every later hash recomputed",
			tamper:  func(t *testing.T, f *fixture) { tamper(t, f, rewriteAudit(4, "nothing happened here")) },
			chainOK: true,
			want:    []string{"entry 10 does not match the checkpoint on line 1", "an entry from 1 to 10 was changed and every hash after it recomputed"},
		},
		{
			name: "entry rewritten between two checkpoints",
			tamper: func(t *testing.T, f *fixture) {
				appendAudit(t, f, 3)
				checkpoint(t, f, true) // line 2, at entry 15
				tamper(t, f, rewriteAudit(13, "nothing happened here"))
			},
			chainOK: true,
			want:    []string{"entry 15 does not match the checkpoint on line 2", "an entry from 11 to 15 was changed"},
		},
		{
			name: "checkpointed tail removed",
			tamper: func(t *testing.T, f *fixture) {
				tamper(t, f, execSQL("DROP TRIGGER audit_no_delete", "DELETE FROM audit WHERE seq > 7"))
			},
			chainOK: true,
			want:    []string{"the log ends at entry 7, but the checkpoint on line 1 (entry 10", "entries 8 to 10 were removed"},
		},
		{
			name: "whole log removed",
			tamper: func(t *testing.T, f *fixture) {
				tamper(t, f, execSQL("DROP TRIGGER audit_no_delete", "DELETE FROM audit"))
			},
			chainOK: true,
			want:    []string{"the log ends at entry 0", "entries 1 to 10 were removed"},
		},
		{
			name: "checkpoint line edited to vouch for fewer entries",
			tamper: func(t *testing.T, f *fixture) {
				path := f.cfg.CheckpointsPath()
				data := bytes.Replace(readFile(t, path), []byte(`"seq":10,`), []byte(`"seq":7,`), 1)
				if err := os.WriteFile(path, data, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			chainOK: true,
			want:    []string{"checkpoint on line 1 (entry 7", "the signature does not verify"},
		},
		{
			name: "forged checkpoint appended",
			tamper: func(t *testing.T, f *fixture) {
				cp := readCheckpoints(t, f)[0]
				cp.Seq, cp.Hash = 12, strings.Repeat("0", 64)
				line, _ := json.Marshal(cp)
				appendLine(t, f.cfg.CheckpointsPath(), string(line)+"\n")
			},
			chainOK: true,
			want:    []string{"checkpoint on line 2 (entry 12", "the signature does not verify, so the line was forged or edited"},
		},
		{
			name: "checkpoint signed by another CA",
			tamper: func(t *testing.T, f *fixture) {
				other := newCA(t, caOptions{})
				checkpoint(t, other, true)
				appendLine(t, f.cfg.CheckpointsPath(), string(readFile(t, other.cfg.CheckpointsPath())))
			},
			chainOK: true,
			want:    []string{"checkpoint on line 2", "is not an intermediate of this CA"},
		},
		{
			name:   "garbage line",
			tamper: func(t *testing.T, f *fixture) { appendLine(t, f.cfg.CheckpointsPath(), "{\"seq\": 11, \"hash\n") },
			// The chain is fine; the checkpoints file is not.
			chainOK: true,
			want:    []string{"line 2 of the checkpoints is not a checkpoint"},
		},
		{
			name: "entry edited in place",
			tamper: func(t *testing.T, f *fixture) {
				tamper(t, f, execSQL("DROP TRIGGER audit_no_update", "UPDATE audit SET identity = 'mallory' WHERE seq = 5"))
			},
			chainOK: false,
			want:    []string{"entry 5", "mallory", "was altered"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newCA(t, caOptions{})
			appendAudit(t, f, 10-auditLen(t, f))
			checkpoint(t, f, true)
			appendAudit(t, f, 2)
			if _, err, _ := verifyAudit(t, f); err != nil {
				t.Fatalf("VerifyAudit before tampering: %v", err)
			}

			tt.tamper(t, f)
			_, err, chainErr := verifyAudit(t, f)
			if (chainErr == nil) != tt.chainOK {
				t.Errorf("VerifyAuditChain = %v, want it to accept the log: %v", chainErr, tt.chainOK)
			}
			if !errors.Is(err, store.ErrAuditTampered) {
				t.Fatalf("VerifyAudit = %v, want store.ErrAuditTampered", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("VerifyAudit error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestCheckpointsOfARetiredIntermediate: a checkpoint stays verifiable after
// the intermediate that signed it is retired, even once its key is gone.
func TestCheckpointsOfARetiredIntermediate(t *testing.T) {
	f := newCA(t, caOptions{})
	old := f.activeIntermediate(t)
	checkpoint(t, f, true)
	f.rotate(t)
	appendAudit(t, f, 2)
	checkpoint(t, f, true)
	if err := os.Remove(f.intKeyFile(old)); err != nil {
		t.Fatal(err)
	}

	cps := readCheckpoints(t, f)
	if len(cps) != 2 || cps[0].KeyID == cps[1].KeyID || cps[0].KeyID != fmt.Sprintf("%x", old.SubjectKeyId) {
		t.Fatalf("checkpoints signed by %v, want the retired %x then the new active", []string{cps[0].KeyID, cps[len(cps)-1].KeyID}, old.SubjectKeyId)
	}
	rep, err, _ := verifyAudit(t, f)
	if err != nil {
		t.Fatalf("VerifyAudit with a retired intermediate's checkpoint: %v", err)
	}
	if rep.Checkpoints != 2 {
		t.Errorf("%d checkpoints verified, want 2", rep.Checkpoints)
	}

	// What the retired intermediate vouched for is still held against the log.
	tamper(t, f, rewriteAudit(2, "nothing happened here"))
	_, err, _ = verifyAudit(t, f)
	if want := fmt.Sprintf("does not match the checkpoint on line 1 (entry %d, signed %s by intermediate %x)", cps[0].Seq, cps[0].Time.Format(time.RFC3339), old.SubjectKeyId); !errors.Is(err, store.ErrAuditTampered) || !strings.Contains(err.Error(), want) {
		t.Errorf("VerifyAudit = %v, want store.ErrAuditTampered naming %q", err, want)
	}
}

func TestCheckpointKeyTypes(t *testing.T) {
	for _, kt := range []ca.KeyType{ca.KeyECDSAP384, ca.KeyEd25519, ca.KeyRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			f := newCA(t, caOptions{intKey: kt})
			checkpoint(t, f, true)
			if _, err, _ := verifyAudit(t, f); err != nil {
				t.Fatalf("VerifyAudit: %v", err)
			}
			tamper(t, f, rewriteAudit(1, "nothing happened here"))
			if _, err, _ := verifyAudit(t, f); !errors.Is(err, store.ErrAuditTampered) {
				t.Fatalf("VerifyAudit of a rewritten log = %v, want store.ErrAuditTampered", err)
			}
		})
	}
}

func TestCheckpointRefusesAHeadThatContradictsTheLastOne(t *testing.T) {
	f := newCA(t, caOptions{})
	appendAudit(t, f, 4)
	checkpoint(t, f, true)
	n := auditLen(t, f)
	before := readFile(t, f.cfg.CheckpointsPath())

	tamper(t, f, execSQL("DROP TRIGGER audit_no_delete", fmt.Sprintf("DELETE FROM audit WHERE seq > %d", n-2)))
	_, err := f.ca.Checkpoint(t.Context())
	if want := fmt.Sprintf("the log ends at entry %d, but the last checkpoint", n-2); !errors.Is(err, store.ErrAuditTampered) || !strings.Contains(err.Error(), want) {
		t.Errorf("Checkpoint after truncation = %v, want store.ErrAuditTampered saying %q", err, want)
	}

	tamper(t, f, rewriteAudit(int64(n-2), "nothing happened here"))
	appendAudit(t, f, 2) // as long as the checkpointed log again, but another one
	_, err = f.ca.Checkpoint(t.Context())
	if want := fmt.Sprintf("entry %d differs from the last checkpoint", n); !errors.Is(err, store.ErrAuditTampered) || !strings.Contains(err.Error(), want) {
		t.Errorf("Checkpoint after a rewrite = %v, want store.ErrAuditTampered saying %q", err, want)
	}
	if !bytes.Equal(before, readFile(t, f.cfg.CheckpointsPath())) {
		t.Errorf("a refused Checkpoint changed the file")
	}
}

// TestCheckpointAfterATornLine: a last line a crash cut short is reported
// by VerifyAudit, and the next checkpoint lands on a line of its own.
func TestCheckpointAfterATornLine(t *testing.T) {
	f := newCA(t, caOptions{})
	checkpoint(t, f, true)
	appendLine(t, f.cfg.CheckpointsPath(), `{"seq":9,"ha`)
	appendAudit(t, f, 1)
	checkpoint(t, f, true)

	lines := strings.Split(strings.TrimSuffix(string(readFile(t, f.cfg.CheckpointsPath())), "\n"), "\n")
	if len(lines) != 3 || lines[1] != `{"seq":9,"ha` {
		t.Fatalf("checkpoints file:\n%s\nwant the torn line on a line of its own, between two checkpoints", strings.Join(lines, "\n"))
	}
	if err := json.Unmarshal([]byte(lines[2]), new(ca.Checkpoint)); err != nil {
		t.Errorf("the checkpoint after the torn line: %v", err)
	}
	if _, err, _ := verifyAudit(t, f); !errors.Is(err, store.ErrAuditTampered) || !strings.Contains(err.Error(), "line 2 of the checkpoints is not a checkpoint") {
		t.Errorf("VerifyAudit = %v, want the torn line 2 reported", err)
	}
}

// TestCheckpointConcurrent: checkpoints written while the log grows, by two
// CAs open on one directory (as meshctl and meshd are), never interleave
// and each covers more of the log than the one before.
func TestCheckpointConcurrent(t *testing.T) {
	f := newCA(t, caOptions{})
	other, err := ca.Open(t.Context(), f.cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*10)
	for i := range 8 {
		c := f.ca
		if i%2 == 1 {
			c = other
		}
		wg.Go(func() {
			for j := range 10 {
				if err := f.store.Append(t.Context(), store.AuditEntry{Action: "test.op", Identity: fmt.Sprintf("op%d.%d", i, j), Outcome: store.OutcomeOK}); err != nil {
					errs <- err
					return
				}
				if _, err := c.Checkpoint(t.Context()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every goroutine checkpointed after its last append, so the last
	// checkpoint covers the whole log.
	checkpoint(t, f, false)

	cps := readCheckpoints(t, f)
	for i := 1; i < len(cps); i++ {
		if cps[i].Seq <= cps[i-1].Seq {
			t.Errorf("checkpoint %d covers %d entries, checkpoint %d %d: want increasing", i, cps[i-1].Seq, i+1, cps[i].Seq)
		}
	}
	rep, err, _ := verifyAudit(t, f)
	if err != nil {
		t.Fatalf("VerifyAudit: %v", err)
	}
	if rep.Checkpoints != len(cps) || rep.Newest.Seq != int64(auditLen(t, f)) {
		t.Errorf("report %+v, want %d checkpoints, the newest covering all %d entries", rep, len(cps), auditLen(t, f))
	}
}

// headStore is a store that can read the head of its log alone; AuditLog
// counts its calls.
type headStore struct {
	store.Store
	mu       sync.Mutex
	logReads int
}

func (s *headStore) AuditLog(ctx context.Context) ([]store.AuditEntry, error) {
	s.mu.Lock()
	s.logReads++
	s.mu.Unlock()
	return s.Store.AuditLog(ctx)
}

func (s *headStore) AuditHead(ctx context.Context) (store.AuditEntry, error) {
	log, err := s.Store.AuditLog(ctx)
	if err != nil || len(log) == 0 {
		return store.AuditEntry{}, err
	}
	return log[len(log)-1], nil
}

func TestCheckpointReadsOnlyTheHead(t *testing.T) {
	f := newCA(t, caOptions{})
	hs := &headStore{Store: f.store}
	c, err := ca.Open(t.Context(), f.cfg, hs)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.Checkpoint(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if hs.logReads != 0 {
		t.Errorf("Checkpoint read the whole log %d times from a store that serves its head", hs.logReads)
	}
	if cps := readCheckpoints(t, f); len(cps) != 1 || cps[0].Seq != int64(auditLen(t, f)) {
		t.Errorf("checkpoints %+v, want one at entry %d", cps, auditLen(t, f))
	}
}
