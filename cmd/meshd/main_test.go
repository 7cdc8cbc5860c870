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
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlite"
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
		st, err := sqlite.Open(t.Context(), legacy)
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
		if fileExists(legacy) {
			t.Error("the legacy store is still in the data dir")
		}
		st, err = sqlite.Open(t.Context(), got)
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
			st, err := sqlite.Open(t.Context(), p)
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
