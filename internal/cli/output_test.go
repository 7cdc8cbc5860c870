package cli

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestRevocationJSON: one revocation prints byte for byte the same from
// the store (offline) and from meshd's answer, in snake_case, the reason
// by name and by code.
func TestRevocationJSON(t *testing.T) {
	at := time.Date(2026, 11, 21, 22, 40, 0, 0, time.UTC)
	offline, err := json.Marshal(revocations([]store.Revocation{{Seq: 7, Serial: "9fa1", CommonName: "opus@ct1", IssuerKeyID: "a1b2", Reason: 1, RevokedAt: at, KeyHash: "c3d4"}}))
	if err != nil {
		t.Fatal(err)
	}
	online, err := json.Marshal(revokedCerts([]meshapi.RevokedCert{{Seq: 7, Serial: "9fa1", CommonName: "opus@ct1", IssuerKeyID: "a1b2", Reason: 1, RevokedAt: at, KeyHash: "c3d4"}}))
	if err != nil {
		t.Fatal(err)
	}
	const want = `[{"seq":7,"serial":"9fa1","common_name":"opus@ct1","issuer_key_id":"a1b2","reason":"keyCompromise","reason_code":1,"revoked_at":"2026-11-21T22:40:00Z","key_hash":"c3d4"}]`
	if string(offline) != want || string(online) != want {
		t.Errorf("ca revoke --json:\noffline %s\n online %s\n   want %s", offline, online, want)
	}
	none, _ := json.Marshal(revocations(nil))
	if string(none) != "[]" {
		t.Errorf("no revocations print %s, want []", none)
	}
}
