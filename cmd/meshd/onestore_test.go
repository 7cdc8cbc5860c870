package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/store/pgtest"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestOneStorePerCA is issue 22's scenario: a CA directory that meshd
// replicas use on PostgreSQL never grows an SQLite store of its own.
// `meshctl ca issue-agent` without a database refuses, naming the store,
// and creates nothing; with the right DATABASE_URL the certificate is
// recorded where the replicas see it, so `ca revoke <name>` through meshd
// finds it and meshd's CRL lists it; with another database it refuses,
// naming both stores.
func TestOneStorePerCA(t *testing.T) {
	bin := buildBinaries(t)
	pg := pgtest.Start(t)
	dsn, otherDSN := pg.Schema(t), pg.Schema(t)
	root := t.TempDir()
	data := filepath.Join(root, "a")
	startReplica(t, bin, "A", data, dsn, "--dev")
	cfg := ca.Config{RootDir: filepath.Join(data, "root"), Dir: filepath.Join(data, "ca")}

	bindingPath := filepath.Join(cfg.Dir, "store.json")
	bound, err := os.ReadFile(bindingPath)
	if err != nil {
		t.Fatalf("meshd --dev on PostgreSQL did not record the CA directory's store: %v", err)
	}
	var b struct {
		Kind    string `json:"kind"`
		Host    string `json:"host"`
		DBName  string `json:"dbname"`
		StoreID string `json:"store_id"`
	}
	if err := json.Unmarshal(bound, &b); err != nil || b.Kind != "postgres" || b.StoreID == "" {
		t.Fatalf("store.json = %s (%v), want a postgres store with its id", bound, err)
	}

	meshctl := func(databaseURL string, args ...string) (string, error) {
		var env []string
		for _, kv := range cleanEnv(filepath.Join(root, "home")) {
			if !strings.HasPrefix(kv, "DATABASE_URL=") {
				env = append(env, kv)
			}
		}
		if databaseURL != "" {
			env = append(env, "DATABASE_URL="+databaseURL)
		}
		cmd := exec.Command(filepath.Join(bin, "meshctl"), args...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	offline := []string{"ca", "issue-agent", "opus", "ct111", "--ca-dir", cfg.Dir, "--root-dir", cfg.RootDir}
	cn := "opus@ct111"
	nothingCreated := func(what string) {
		t.Helper()
		for _, p := range []string{cfg.StorePath(), cfg.IssuedCertPath(cn), cfg.IssuedKeyPath(cn)} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s exists (%v); the refused command created it", what, p, err)
			}
		}
		if now, err := os.ReadFile(bindingPath); err != nil || !bytes.Equal(now, bound) {
			t.Errorf("%s: store.json changed to %s (%v)", what, now, err)
		}
	}

	t.Run("WithoutDatabase", func(t *testing.T) {
		out, err := meshctl("", offline...)
		if err == nil {
			t.Fatalf("meshctl %s without a database succeeded:\n%s", strings.Join(offline, " "), out)
		}
		for _, want := range []string{b.Host + "/" + b.DBName, "--database", "DATABASE_URL"} {
			if !strings.Contains(out, want) {
				t.Errorf("the refusal does not name %q:\n%s", want, out)
			}
		}
		nothingCreated("without a database")
	})

	t.Run("AnotherDatabase", func(t *testing.T) {
		other, err := sqlstore.OpenPostgres(t.Context(), otherDSN, sqlstore.WithoutListen())
		if err != nil {
			t.Fatal(err)
		}
		otherID := other.ID()
		out, err := meshctl(otherDSN, offline...)
		if err == nil {
			t.Fatalf("meshctl with another database succeeded:\n%s", out)
		}
		for _, want := range []string{b.StoreID, otherID} {
			if !strings.Contains(out, want) {
				t.Errorf("the refusal does not name store %s:\n%s", want, out)
			}
		}
		nothingCreated("with another database")
		if certs, err := other.Certs(t.Context()); err != nil || len(certs) != 0 {
			t.Errorf("the other database holds %d certificates (%v), want none", len(certs), err)
		}
		other.Close()
	})

	t.Run("RightDatabase", func(t *testing.T) {
		out, err := meshctl(dsn, offline...)
		if err != nil {
			t.Fatalf("meshctl with the CA directory's database: %v\n%s", err, out)
		}
		if _, err := os.Stat(cfg.StorePath()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v): the command grew an SQLite store", cfg.StorePath(), err)
		}
		cert, err := pemfile.ReadCert(cfg.IssuedCertPath(cn))
		if err != nil {
			t.Fatal(err)
		}
		serial := cert.SerialNumber.Text(16)

		// Through meshd, which reads the same store.
		out, err = meshctl("", "ca", "revoke", cn, "--data-dir", data)
		if err != nil || !strings.Contains(out, "serial "+serial) {
			t.Fatalf("meshctl ca revoke %s through meshd: %v\n%s\nwant it to revoke serial %s", cn, err, out, serial)
		}
		eventually.NoError(t, "meshd's CRL lists "+serial, func() error {
			return crlLists(cfg.CRLPath(), serial)
		})
	})
}

// crlLists reports whether a CRL in the PEM file path lists serial
// (lowercase hex).
func crlLists(path, serial string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for {
		var blk *pem.Block
		if blk, data = pem.Decode(data); blk == nil {
			return fmt.Errorf("no CRL in %s lists %s", path, serial)
		}
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return err
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Text(16) == serial {
				return nil
			}
		}
	}
}
