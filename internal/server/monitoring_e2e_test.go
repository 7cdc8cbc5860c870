package server_test

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/server"
)

// monitoredEnv is a meshd with the local CA, in TLS mode auto, that has
// seen a little of everything its dashboard and alerts watch: agents
// registered with a certificate and without one, another revoked and
// evicted, a heartbeat without a certificate refused by the certless
// bounds, an enrollment refused and one rate limited, the audit log
// verified. Its audit log is verified every 50ms.
func monitoredEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, envOptions{mode: server.TLSAuto, configure: func(c *meshd.Config) {
		c.Enroll.Burst = 1 // the second /enroll from one address is rate limited
		c.AuditVerifyInterval = 50 * time.Millisecond
		c.Certless.MaxPayload = 1024
	}})
	e.registeredAgent("opus", "ct111", 9000)
	e.registeredAgent("gpt", "ct111", 9001)
	if r := e.adminDo("POST", "/admin/revoke", map[string]string{"target": "gpt@ct111", "reason": "superseded"}); r.code != http.StatusOK {
		t.Fatalf("revoke gpt@ct111: %s", r)
	}
	anon := e.client(nil)
	if r := e.do(anon, "POST", "/heartbeat", heartbeat("legacy", 9002)); r.code != http.StatusOK {
		t.Fatalf("a heartbeat without a certificate in auto: %s", r)
	}
	big := heartbeat("legacy2", 9003)
	big["description"] = strings.Repeat("x", 4096)
	if r := e.do(anon, "POST", "/heartbeat", big); r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a heartbeat without a certificate past the certless payload bound: %s, want 413", r)
	}
	if r := e.do(anon, "POST", "/enroll", map[string]string{"csr": "not a CSR"}); r.code != http.StatusBadRequest && r.code != http.StatusUnauthorized {
		t.Fatalf("an enrollment without a secret or token: %s, want it refused", r)
	}
	if r := e.do(anon, "POST", "/enroll", map[string]string{"csr": "not a CSR"}); r.code != http.StatusTooManyRequests {
		t.Fatalf("a second enrollment at once from one address: %s, want 429", r)
	}
	return e
}

// TestE2EMonitoringMetrics: the metrics the dashboard and the alerts need
// say what happened: the revocation's time to eviction observed once, the
// agents counted by status, entity and source, the enrollment refusals and
// the rate limit counted, the change feed caught up with the store, the
// audit log verified intact, and then found tampered with once a forged
// line is appended to its checkpoints.
func TestE2EMonitoringMetrics(t *testing.T) {
	e := monitoredEnv(t)
	m := e.metrics()
	for name, want := range map[string]float64{
		// Revoking a name revokes the identity and its one certificate:
		// each change applied once.
		`meshd_revocation_eviction_seconds_count{cause="certificate_revoked"}`: 1,
		`meshd_revocation_eviction_seconds_count{cause="identity_revoked"}`:    1,
		`meshd_revocation_eviction_seconds_count{cause="entity_revoked"}`:      0,
		`meshd_registered_agents{entity="",source="localca",status="healthy"}`: 1,
		`meshd_registered_agents{entity="",source="localca",status="evicted"}`: 1,
		`meshd_registered_agents{entity="",source="",status="healthy"}`:        1, // without a certificate
		`meshd_rate_limited_total{limiter="enroll_source"}`:                    1,
		`meshd_rate_limited_total{limiter="agent_cert"}`:                       0,
		`meshd_enroll_refusals_total{reason="rate_limited"}`:                   1,
		`meshd_certificates_due_renewal`:                                       0,
		`meshd_crl_validity_seconds`:                                           (7 * 24 * time.Hour).Seconds(),
	} {
		got, ok := m[name]
		if name == `meshd_certificates_due_renewal` && got == -1 {
			// Counted by the observer's first refresh, which may not have run.
			eventually.True(t, "the certificates due counted", func() bool { return e.metrics()[name] == 0 })
			continue
		}
		if !ok || got != want {
			t.Errorf("%s = %v (exported: %v), want %v", name, got, ok, want)
		}
	}
	var enrollRefused float64
	for k, v := range m {
		if len(k) > len("meshd_enroll_refusals_total") && k[:len("meshd_enroll_refusals_total")] == "meshd_enroll_refusals_total" {
			enrollRefused += v
		}
	}
	if enrollRefused != 2 {
		t.Errorf("meshd_enroll_refusals_total sums to %v over its reasons, want 2 (the bad request and the rate limited one)", enrollRefused)
	}
	root, inter := e.ca.auth.Root().NotAfter.Unix(), e.ca.auth.ActiveIntermediate().NotAfter.Unix()
	if got := m[`meshd_ca_certificate_expiry_timestamp_seconds{certificate="root"}`]; got != float64(root) {
		t.Errorf("the root's expiry = %v, want %d", got, root)
	}
	if got := m[`meshd_ca_certificate_expiry_timestamp_seconds{certificate="intermediate"}`]; got != float64(inter) {
		t.Errorf("the intermediate's expiry = %v, want %d", got, inter)
	}
	eventually.True(t, "the change feed's cursor at the store's newest event", func() bool {
		m := e.metrics()
		return m["meshd_change_feed_store_seq"] >= 1 && m["meshd_change_feed_applied_seq"] == m["meshd_change_feed_store_seq"]
	})
	eventually.True(t, "the audit log verified intact", func() bool {
		m := e.metrics()
		return m["meshd_audit_verified"] == 1 && m["meshd_audit_last_verification_timestamp_seconds"] > 0
	})

	// A line that is no checkpoint: someone edited the file.
	f, err := os.OpenFile(e.ca.auth.Config().CheckpointsPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("{\"seq\":0}\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	eventually.True(t, "the tampered audit log reported", func() bool { return e.metrics()["meshd_audit_verified"] == 0 })
	if !e.log.hasRecord(t, "ERROR", "the audit log does not verify: it was changed or cut short (keep the store and the checkpoints file as they are, and run meshctl ca audit --verify)") {
		t.Error("no error logged for the tampered audit log")
	}
}

// TestE2ERuntimeMemoryMetrics: /metrics serves the Go runtime's memory
// classes and the collector's target, what an operator sizes meshd's
// memory per live agent from.
func TestE2ERuntimeMemoryMetrics(t *testing.T) {
	e := monitoredEnv(t)
	m := e.metrics()
	for _, name := range []string{
		"go_memory_classes_heap_objects_bytes", "go_memory_classes_heap_stacks_bytes", "go_memory_classes_total_bytes",
		"go_gc_heap_goal_bytes", "go_gc_stack_starting_size_bytes", "go_gc_gogc_percent",
	} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want a positive figure", name, m[name])
		}
	}
	// Free heap kept or returned, and no limit: may be 0, must be there.
	for _, name := range []string{"go_memory_classes_heap_free_bytes", "go_memory_classes_heap_released_bytes", "go_gc_gomemlimit_bytes"} {
		if _, ok := m[name]; !ok {
			t.Errorf("%s is not exported", name)
		}
	}
}
