package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/config"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestStoreLocationDoesNotMove: the store is <ca-dir>/meshtrust.db with or
// without a CA, a store an older meshd left in the data dir is moved there
// with what it holds, and two stores are refused.
func TestStoreLocationDoesNotMove(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	t.Run("fresh", func(t *testing.T) {
		data := t.TempDir()
		cfg := ca.Config{Dir: filepath.Join(data, "ca")}
		got, err := storeLocation(data, cfg, log)
		if err != nil || got != cfg.StorePath() {
			t.Fatalf("storeLocation = %q, %v; want %q", got, err, cfg.StorePath())
		}
		if fi, err := os.Stat(cfg.Dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("CA dir made for the store: %v, %v; want mode 0700", fi, err)
		}
	})
	t.Run("legacy store is moved with its entities", func(t *testing.T) {
		data := t.TempDir()
		legacy := filepath.Join(data, "meshtrust.db")
		st, err := sqlstore.OpenSQLite(t.Context(), legacy)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		if err := st.PutEntity(t.Context(), store.Entity{Name: "acme", CAPEM: []byte("x"), Fingerprint: "ff", Subject: "CN=acme", CreatedAt: now}, false, store.AuditEntry{Action: "entity.register"}); err != nil {
			t.Fatal(err)
		}
		if err := st.RevokeEntity(t.Context(), "acme", now, store.AuditEntry{Action: "entity.revoke"}); err != nil {
			t.Fatal(err)
		}
		st.Close()
		cfg := ca.Config{Dir: filepath.Join(data, "ca")}
		got, err := storeLocation(data, cfg, log)
		if err != nil || got != cfg.StorePath() {
			t.Fatalf("storeLocation = %q, %v", got, err)
		}
		if pemfile.Exists(legacy) {
			t.Error("the legacy store is still in the data dir")
		}
		st, err = sqlstore.OpenSQLite(t.Context(), got)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		e, err := st.Entity(t.Context(), "acme")
		if err != nil || !e.Revoked() {
			t.Errorf("entity acme after the move: %+v, %v; want it, revoked", e, err)
		}
	})
	t.Run("two stores", func(t *testing.T) {
		data := t.TempDir()
		cfg := ca.Config{Dir: filepath.Join(data, "ca")}
		for _, p := range []string{filepath.Join(data, "meshtrust.db"), cfg.StorePath()} {
			os.MkdirAll(filepath.Dir(p), 0o700)
			st, err := sqlstore.OpenSQLite(t.Context(), p)
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
		}
		_, err := storeLocation(data, cfg, log)
		if err == nil || !strings.Contains(err.Error(), "two stores") || !strings.Contains(err.Error(), cfg.StorePath()) {
			t.Fatalf("storeLocation with two stores = %v, want a refusal naming both", err)
		}
	})
}

// TestRefusesDirsOthersControl: a data dir others can write, or a secret
// file another user owns, is refused before anything is read from it.
func TestRefusesDirsOthersControl(t *testing.T) {
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := checkPrivate("data dir", shared); err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Errorf("a world-writable data dir: %v, want a refusal saying chmod 700", err)
	}
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := checkPrivate("data dir", private); err != nil {
		t.Errorf("a 0700 data dir of meshd's user: %v", err)
	}
	if err := checkPrivate("CA dir", filepath.Join(private, "missing")); err != nil {
		t.Errorf("a dir that does not exist yet: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("changing a file's owner needs root")
	}
	secret := filepath.Join(private, "bootstrap.secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdefghij"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(secret, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	o := &options{Mesh: config.Mesh{DataDir: private}}
	if _, err := loadBootstrapSecret(o); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("a secret file another user owns: %v, want a refusal naming its owner", err)
	}
}

// TestEnrollLimitFlags: the /enroll limits are operator settings: the
// flags reach the server's EnrollLimits, unset ones keep the defaults, and
// a limit that would disable itself is refused.
func TestEnrollLimitFlags(t *testing.T) {
	o := &options{}
	cmd := commandFor(o, io.Discard, io.Discard)
	if err := cmd.ParseFlags([]string{"--enroll-burst", "200", "--enroll-global-interval", "10ms"}); err != nil {
		t.Fatal(err)
	}
	want := server.EnrollLimits{Burst: 200, Interval: server.DefaultEnrollInterval, GlobalBurst: server.DefaultEnrollGlobalBurst, GlobalInterval: 10 * time.Millisecond}
	if o.limits.enroll != want {
		t.Errorf("enroll limits = %+v, want %+v", o.limits.enroll, want)
	}
	if err := o.limits.check(); err != nil {
		t.Errorf("check: %v", err)
	}
	o.limits.enroll.Interval = 0
	if err := o.limits.check(); err == nil || !strings.Contains(err.Error(), "--enroll-interval") {
		t.Errorf("check with --enroll-interval 0 = %v, want it refused", err)
	}
}

// TestTimingFlags: the idle timeout, the change feed's poll and the
// checkpoint interval are operator settings: the flags reach their
// options, unset ones keep meshd's defaults, and an idle timeout that
// would disable itself is refused.
func TestTimingFlags(t *testing.T) {
	o := &options{}
	cmd := commandFor(o, io.Discard, io.Discard)
	if err := cmd.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	if o.limits.idleTimeout != server.DefaultIdleTimeout || o.revocationPoll != meshd.DefaultRevocationPoll || o.checkpointInterval != meshd.DefaultCheckpointInterval {
		t.Errorf("defaults: idle %v, poll %v, checkpoint %v", o.limits.idleTimeout, o.revocationPoll, o.checkpointInterval)
	}
	if err := cmd.ParseFlags([]string{"--idle-timeout", "30s", "--revocation-poll", "1s", "--checkpoint-interval", "5m"}); err != nil {
		t.Fatal(err)
	}
	if o.limits.idleTimeout != 30*time.Second || o.revocationPoll != time.Second || o.checkpointInterval != 5*time.Minute {
		t.Errorf("set: idle %v, poll %v, checkpoint %v", o.limits.idleTimeout, o.revocationPoll, o.checkpointInterval)
	}
	o.limits.idleTimeout = 0
	if err := o.limits.check(); err == nil || !strings.Contains(err.Error(), "--idle-timeout") {
		t.Errorf("check with --idle-timeout 0 = %v, want it refused", err)
	}
}

// TestAuditVerifyIntervalFlag: --audit-verify-interval reaches meshd,
// defaults to an hour, and one under a minute (a whole-log read back to
// back) is refused before anything starts.
func TestAuditVerifyIntervalFlag(t *testing.T) {
	o := &options{}
	cmd := commandFor(o, io.Discard, io.Discard)
	if err := cmd.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	if o.auditVerifyInterval != meshd.DefaultAuditVerifyInterval {
		t.Errorf("default: %v, want %v", o.auditVerifyInterval, meshd.DefaultAuditVerifyInterval)
	}
	cmd = newCommand(io.Discard, io.Discard)
	cmd.SetArgs([]string{"--audit-verify-interval", "10s", "--data-dir", t.TempDir()})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--audit-verify-interval 10s: at least 1m") {
		t.Errorf("meshd --audit-verify-interval 10s: %v, want it refused", err)
	}
}
