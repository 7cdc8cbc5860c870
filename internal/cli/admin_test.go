package cli_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestRevokeJSONShape: `ca revoke --json` prints []store.Revocation offline
// and meshd's []meshapi.RevokedCert online; scripts must not see which ran.
func TestRevokeJSONShape(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 21, 22, 40, 0, 0, time.UTC)
	offline, err := json.Marshal(store.Revocation{Seq: 7, Serial: "9fa1", CommonName: "opus@ct1", IssuerKeyID: "a1b2", Reason: 1, RevokedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	online, err := json.Marshal(meshapi.RevokedCert{Seq: 7, Serial: "9fa1", CommonName: "opus@ct1", IssuerKeyID: "a1b2", Reason: 1, RevokedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	if string(offline) != string(online) {
		t.Errorf("ca revoke --json differs:\noffline %s\n online %s", offline, online)
	}
}
