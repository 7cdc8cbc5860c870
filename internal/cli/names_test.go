package cli_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestNodeFileNames: a node's files are issued/<node-id>.crt and .key, as
// the seed lays them out; in a CA directory an older meshtrust made, the
// old issued/<node-id>.mesh.crt keeps working and is renewed in place.
func TestNodeFileNames(t *testing.T) {
	e := newEnv(t)
	e.initCA()
	r := e.mustRun("ca", "issue-node", "ct1", "--json")
	var sum struct {
		CertFile string `json:"cert_file"`
		KeyFile  string `json:"key_file"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatal(err)
	}
	if want := e.path("issued", "ct1.crt"); sum.CertFile != want || sum.KeyFile != e.path("issued", "ct1.key") {
		t.Errorf("issue-node ct1 wrote %s and %s, want %s and its .key", sum.CertFile, sum.KeyFile, want)
	}
	for _, p := range []string{e.path("issued", "ct1.crt"), e.path("issued", "ct1.key")} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if old, _ := filepath.Glob(e.path("issued", "*.mesh.*")); len(old) != 0 {
		t.Errorf("files under the old name: %v", old)
	}
	requireContains(t, "ca verify", e.mustRun("ca", "verify", e.path("issued", "ct1.crt")).stdout, "OK: ct1.mesh is valid")
	// Agents and users keep their common names.
	e.mustRun("ca", "issue-agent", "opus", "ct1")
	e.mustRun("ca", "issue-client", "alice")
	for _, p := range []string{"opus@ct1.crt", "opus@ct1.key", "alice@external.crt", "alice@external.key"} {
		if _, err := os.Stat(e.path("issued", p)); err != nil {
			t.Error(err)
		}
	}

	// An older meshtrust's node files.
	e.mustRun("ca", "issue-node", "ct2")
	for _, ext := range []string{".crt", ".key"} {
		if err := os.Rename(e.path("issued", "ct2"+ext), e.path("issued", "ct2.mesh"+ext)); err != nil {
			t.Fatal(err)
		}
	}
	oldCert, oldKey := readFile(t, e.path("issued", "ct2.mesh.crt")), readFile(t, e.path("issued", "ct2.mesh.key"))
	requireContains(t, "ca verify of the old name", e.mustRun("ca", "verify", e.path("issued", "ct2.mesh.crt")).stdout, "OK: ct2.mesh is valid")
	e.mustRun("ca", "issue-node", "ct2")
	if bytes.Equal(readFile(t, e.path("issued", "ct2.mesh.crt")), oldCert) {
		t.Error("re-issuing ct2 did not renew issued/ct2.mesh.crt")
	}
	if !bytes.Equal(readFile(t, e.path("issued", "ct2.mesh.key")), oldKey) {
		t.Error("re-issuing ct2 changed the key in issued/ct2.mesh.key")
	}
	for _, p := range []string{"ct2.crt", "ct2.key"} {
		if _, err := os.Stat(e.path("issued", p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("re-issuing a node with old-style files wrote %s beside them: %v", p, err)
		}
	}
	rows := e.list()
	if !slices.ContainsFunc(rows["ct2.mesh"], func(r listRow) bool { return r.Status == "valid" }) {
		t.Errorf("ca list: %+v", rows["ct2.mesh"])
	}
}
