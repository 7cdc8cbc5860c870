package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// TestPrintStatusDegraded: a degraded meshd without a CA, a stale feed
// and a failed audit verification print ✗ on their lines, ✓ elsewhere,
// name each problem, and colour the markers only when asked (a terminal).
func TestPrintStatusDegraded(t *testing.T) {
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	st := meshapi.Status{Service: "meshd", Version: "0.3.0", Time: at, UptimeSeconds: 3600, Health: "degraded",
		Degraded: []meshapi.Degradation{{Component: "trust backend spire", Reason: "stale_trust", Since: at.Add(-10 * time.Minute)}},
		Agents:   meshapi.StatusAgents{Total: 2, ByStatus: map[string]int{"healthy": 1, "evicted": 1}, ByEntity: []meshapi.StatusGroup{{Name: "acme", Agents: 1}}, BySource: []meshapi.StatusGroup{{Name: "spire", Agents: 1}}},
		Audit:    meshapi.StatusAudit{VerifiedAt: at, OnRequest: true, Entries: 9, Error: "entry 5 was altered"},
		Feed:     meshapi.StatusFeed{Pending: 2, LastPoll: &at, SinceLastPollSeconds: 45},
		Problems: []meshapi.StatusProblem{
			{Component: meshapi.ComponentHealth, Severity: meshapi.SeverityError, Message: "trust backend spire refuses what it would admit"},
			{Component: meshapi.ComponentAudit, Severity: meshapi.SeverityError, Message: "the audit log does not verify"},
			{Component: meshapi.ComponentFeed, Severity: meshapi.SeverityWarning, Message: "2 change event(s) failed to apply"},
			{Component: meshapi.ComponentFeed, Severity: meshapi.SeverityError, Message: "the change feed was not read for 45s"},
		}}
	var plain, colour strings.Builder
	printStatus(&plain, "/run/meshd/admin.sock", st, false)
	printStatus(&colour, "/run/meshd/admin.sock", st, true)
	out := plain.String()
	for _, want := range []string{
		"✗ meshd         reachable at /run/meshd/admin.sock, version 0.3.0, up 1h0m0s, degraded",
		"degraded: trust backend spire (stale_trust) since 2026-12-07T11:50:00Z",
		"✓ CA            none: this meshd has no mesh CA",
		"✓ agents        1 live (evicted 1, healthy 1)", "by entity: acme 1", "by source: spire 1",
		"✗ audit log     does not verify (verified for this request at 2026-12-07T12:00:00Z): entry 5 was altered",
		"✗ change feed   2 pending, read 45s ago",
		"needs attention:", "✗ health: trust backend spire", "! feed: 2 change event(s)", "✗ feed: the change feed was not read",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") || strings.Contains(out, "✓ CRL") || strings.Contains(out, "certificates") {
		t.Errorf("plain status:\n%s", out)
	}
	if c := colour.String(); !strings.Contains(c, "\x1b[31m✗\x1b[0m meshd") || !strings.Contains(c, "\x1b[32m✓\x1b[0m agents") {
		t.Errorf("coloured status:\n%q", c)
	}
}
