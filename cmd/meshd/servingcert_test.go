package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/meshtrust/meshtrust/internal/eventually"
)

// TestDevServingCertFollowsTaint: after `meshctl ca rotate-intermediate
// prepare`, `activate` and `taint`, run offline on meshd --dev's data
// dir, a new TLS handshake to meshd sees its certificate re-issued by the
// new intermediate, without a restart; once the fleet (one agent here)
// re-keyed, `ca status --json` shows no certificate of the old
// intermediate in use and `rotate-intermediate revoke` succeeds without
// --force; meshd keeps serving, verified against the bundle left.
func TestDevServingCertFollowsTaint(t *testing.T) {
	wd := newcomerDir(t)
	d := startDev(t, wd)
	addr := d.addr(t)
	roots := x509.NewCertPool()
	roots.AddCert(devRoot(t, wd))
	served := func() (*x509.Certificate, error) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0], nil
	}
	type intermediate struct {
		KeyID      string `json:"key_id"`
		State      string `json:"state"`
		Live       int    `json:"live_certificates"`
		Superseded int    `json:"superseded_certificates"`
	}
	status := func() []intermediate {
		t.Helper()
		var out []intermediate
		if err := json.Unmarshal([]byte(devCtl(t, wd, "ca", "status", "--json")), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first, err := served()
	if err != nil {
		t.Fatal(err)
	}
	old := hex.EncodeToString(first.AuthorityKeyId)
	devCtl(t, wd, "ca", "issue-agent", "hello", "dev1")
	devCtl(t, wd, "ca", "rotate-intermediate", "prepare")
	devCtl(t, wd, "ca", "rotate-intermediate", "activate")
	next := status()[0].KeyID
	if next == old {
		t.Fatal("the rotation made no new intermediate")
	}
	devCtl(t, wd, "ca", "rotate-intermediate", "taint", old)
	// The fleet re-keys: the agent's certificate, issued again.
	devCtl(t, wd, "ca", "issue-agent", "hello", "dev1")
	eventually.NoError(t, "a new handshake sees meshd's certificate from the new intermediate", func() error {
		c, err := served()
		if err != nil {
			return err
		}
		if got := hex.EncodeToString(c.AuthorityKeyId); got != next {
			return fmt.Errorf("meshd serves a certificate of %s, want %s", got, next)
		}
		return nil
	})
	for _, in := range status() {
		if in.KeyID == old && (in.State != "tainted" || in.Live != 0 || in.Superseded != 2) {
			t.Fatalf("ca status --json: the old intermediate is %+v, want tainted with 0 in use and 2 superseded (meshd's and the agent's)", in)
		}
	}
	devCtl(t, wd, "ca", "rotate-intermediate", "revoke", old)
	if c, err := served(); err != nil {
		t.Fatalf("after the revocation: %v", err)
	} else if got := hex.EncodeToString(c.AuthorityKeyId); got != next {
		t.Fatalf("after the revocation meshd serves a certificate of %s", got)
	}
	if d.cmd.ProcessState != nil {
		t.Fatalf("meshd exited:\n%s", d.stderr)
	}
}
