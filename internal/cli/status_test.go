package cli_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/meshapi"
)

// status runs `meshctl status --json` against m and decodes it.
func (m *testMeshd) status() (meshapi.Status, result) {
	m.t.Helper()
	r := m.ctl("status", "--json")
	var st meshapi.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		m.t.Fatalf("status --json: %v\n%s", err, r.output())
	}
	return st, r
}

// TestStatusHealthy: a fresh meshd is healthy on every line, and exits 0.
func TestStatusHealthy(t *testing.T) {
	m := startMeshd(t)
	r := m.ctl("status")
	if r.code != 0 {
		t.Fatalf("status: exit %d, want 0\n%s", r.code, r.output())
	}
	requireContains(t, "status", r.stdout, "✓ meshd", "reachable at "+m.dataDir, "healthy", "✓ CA", "active intermediate", "✓ CRL", "number ",
		"✓ agents", "✓ certificates", "0 due for renewal", "✓ audit log", "intact", "✓ change feed")
	if strings.ContainsAny(r.stdout, "\x1b") {
		t.Errorf("status to a pipe has colour codes:\n%q", r.stdout)
	}
	if r.stderr != "" {
		t.Errorf("status wrote to stderr: %s", r.stderr)
	}

	st, r := m.status()
	if r.code != 0 {
		t.Fatalf("status --json: exit %d\n%s", r.code, r.output())
	}
	if st.Health != "healthy" || len(st.Problems) != 0 || st.CA == nil || st.CRL == nil || st.Certificates == nil ||
		!st.Audit.OK || st.Audit.VerifiedAt.IsZero() || st.Audit.Entries == 0 {
		t.Errorf("status --json: %+v", st)
	}
	if st.CA.Active.DaysLeft < 1000 || st.CA.Prepared != nil || st.CRL.Number == "" {
		t.Errorf("CA %+v, CRL %+v", st.CA, st.CRL)
	}
	// The meshd server certificate and admin@external.
	if st.Certificates.Live != 2 || st.Certificates.RenewalDue != 0 {
		t.Errorf("certificates %+v, want 2 live, none due", st.Certificates)
	}

	// A registered agent is counted by status, entity and source.
	m.registerAgent(t, "opus", "ct1")
	// The route is the admin surface's only: an agent's certificate on
	// the agent port gets a 404.
	agentCert, err := tls.LoadX509KeyPair(m.issued("opus@ct1"), m.issuedKey("opus@ct1"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.agentClient(agentCert).Get("https://" + m.agentAddr + meshapi.PathAdminStatus)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET %s on the agent port: %d, want 404", meshapi.PathAdminStatus, resp.StatusCode)
	}
	// On the mTLS admin listener, the admin identity is answered and an
	// agent's certificate refused (the meshd-admin policy): exit 2.
	admin := func(cn string) result {
		return m.run("--admin-url", "https://"+m.srv.AdminTLSAddr(), "--cert", m.issued(cn), "--key", m.issuedKey(cn), "status")
	}
	if r := admin("admin@external"); r.code != 0 {
		t.Errorf("status as admin@external over mTLS: exit %d\n%s", r.code, r.output())
	}
	if r := admin("opus@ct1"); r.code != 2 || r.stdout != "" || r.stderr == "" {
		t.Errorf("status as opus@ct1 over mTLS: exit %d, want 2 with a message on stderr\n%s", r.code, r.output())
	}
	st, _ = m.status()
	if a := st.Agents; a.Total != 1 || a.ByStatus["healthy"] != 1 || len(a.BySource) != 1 || a.BySource[0] != (meshapi.StatusGroup{Name: "localca", Agents: 1}) ||
		len(a.ByEntity) != 1 || a.ByEntity[0] != (meshapi.StatusGroup{Name: "", Agents: 1}) {
		t.Errorf("agents %+v, want opus healthy, the mesh's own, from localca", a)
	}
	requireContains(t, "status", m.ctl("status").stdout, "✓ agents        1 live (healthy 1)", "by entity: mesh 1", "by source: localca 1")

	// A prepared intermediate is listed once meshd reloaded its CA (the
	// change feed's ca.rotated), and is no problem.
	m.mustRun("ca", "rotate-intermediate", "prepare")
	eventually.True(t, "status lists the prepared intermediate", func() bool {
		st, r = m.status()
		return st.CA != nil && st.CA.Prepared != nil
	})
	if r.code != 0 || st.CA.Prepared.NotAfter.Before(st.CA.Active.NotAfter) {
		t.Errorf("after prepare: exit %d, CA %+v\n%s", r.code, st.CA, r.stderr)
	}
}

// TestStatusNeedsAttention: a certificate that ends within a week and an
// audit log cut short (found by meshd's own periodic verification) are
// named, with their markers, and exit 1.
func TestStatusNeedsAttention(t *testing.T) {
	m := startMeshd(t, func(c *meshd.Config) { c.AuditVerifyInterval = 200 * time.Millisecond })
	m.mustRun("ca", "issue-agent", "short", "ct1", "--leaf-ttl", "5d")
	r := m.ctl("status")
	if r.code != 1 {
		t.Fatalf("status with a certificate ending in 5 days: exit %d, want 1\n%s", r.code, r.output())
	}
	requireContains(t, "status", r.stdout, "! certificates", "3 live, 1 due for renewal, 1 end within 7 days", "due: short@ct1",
		"needs attention:", "! certificates: 1 live certificate(s) end within 7 days", "✓ audit log")

	n := len(m.auditLog())
	m.truncateAuditLog(n - 2)
	var st meshapi.Status
	eventually.True(t, "meshd's verification finds the audit log cut", func() bool {
		st, r = m.status()
		return !st.Audit.OK
	})
	if r.code != 1 {
		t.Fatalf("status with a cut audit log: exit %d, want 1\n%s", r.code, r.output())
	}
	var audit *meshapi.StatusProblem
	for i, p := range st.Problems {
		if p.Component == meshapi.ComponentAudit {
			audit = &st.Problems[i]
		}
	}
	if st.Audit.OK || audit == nil || audit.Severity != meshapi.SeverityError || !strings.Contains(st.Audit.Error, "removed") {
		t.Errorf("audit %+v, problems %+v", st.Audit, st.Problems)
	}
	r = m.ctl("status")
	requireContains(t, "status", r.stdout, "✗ audit log", "does not verify", "✗ audit: the audit log does not verify")
}

// TestStatusUnreachable: no meshd behind the socket exits 2, saying so on
// stderr only.
func TestStatusUnreachable(t *testing.T) {
	noAdminEnv(t)
	dir, err := os.MkdirTemp("", "mtcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, args := range [][]string{{"--data-dir", dir, "status"}, {"--data-dir", dir, "status", "--json"}, {"status"}} {
		r := execute(t, args...)
		if r.code != 2 || r.stdout != "" || r.stderr == "" {
			t.Errorf("meshctl %v: exit %d, want 2 with stderr only\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
		}
	}
	requireContains(t, "stderr", execute(t, "--data-dir", dir, "status").stderr, "cannot reach meshd's admin API", "is meshd running")
}
