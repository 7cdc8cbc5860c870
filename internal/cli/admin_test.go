package cli_test

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"
)

// TestRevokeJSONShape: `ca revoke --json` prints the same snake_case
// objects whether the CA directory revoked (offline) or meshd did (through
// its admin API, whose RevokedCert keeps Go names on the wire); scripts
// must not see which ran.
func TestRevokeJSONShape(t *testing.T) {
	m := startMeshd(t)
	serial := func(agent string) string {
		t.Helper()
		var s struct {
			Serial string `json:"serial"`
		}
		r := m.mustRun("ca", "issue-agent", agent, "ct1", "--json")
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
			t.Fatal(err)
		}
		return s.Serial
	}
	offSerial, onSerial := serial("off"), serial("on")
	decode := func(what string, r result) map[string]any {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%s: exit %d\n%s", what, r.code, r.output())
		}
		var revs []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &revs); err != nil || len(revs) != 1 {
			t.Fatalf("%s: %v, want one revocation\n%s", what, err, r.stdout)
		}
		return revs[0]
	}
	off := decode("offline", m.run("ca", "revoke", offSerial, "--reason", "keyCompromise", "--json"))
	on := decode("through meshd", m.ctl("ca", "revoke", onSerial, "--reason", "keyCompromise", "--json"))

	wantKeys := []string{"common_name", "issuer_key_id", "key_hash", "reason", "reason_code", "revoked_at", "seq", "serial"}
	for _, tc := range []struct {
		path       string
		rev        map[string]any
		serial, cn string
	}{{"offline", off, offSerial, "off@ct1"}, {"through meshd", on, onSerial, "on@ct1"}} {
		if keys := slices.Sorted(maps.Keys(tc.rev)); !slices.Equal(keys, wantKeys) {
			t.Errorf("%s: keys %v, want %v", tc.path, keys, wantKeys)
		}
		if tc.rev["serial"] != tc.serial || tc.rev["common_name"] != tc.cn || tc.rev["reason"] != "keyCompromise" || tc.rev["reason_code"] != float64(1) ||
			tc.rev["key_hash"] == "" || tc.rev["seq"] == float64(0) {
			t.Errorf("%s: %v", tc.path, tc.rev)
		}
	}
	if off["issuer_key_id"] != on["issuer_key_id"] {
		t.Errorf("issuer_key_id offline %v, through meshd %v", off["issuer_key_id"], on["issuer_key_id"])
	}
}
