package server_test

import (
	"context"
	"encoding/hex"
	"testing"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/server"
)

// TestE2ERenewAfterInAnswers: every issuance answer (/enroll, /agent-cert,
// /renew and its agents) carries renew_after, the CA's RenewAt for the
// certificate, and no answer to a certificate of an untainted
// intermediate carries Meshtrust-Renew-After.
func TestE2ERenewAfterInAnswers(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	c := e.enrollClient()
	check := func(what string, b *enroll.Bundle) {
		t.Helper()
		l := b.Certificate
		want := e.ca.auth.RenewAt(hex.EncodeToString(l.AuthorityKeyId), l.SerialNumber.Text(16), l.NotBefore, l.NotAfter)
		if b.RenewAfter.IsZero() || !b.RenewAfter.Equal(want) {
			t.Errorf("%s: renew_after %s, want the CA's %s", what, b.RenewAfter, want)
		}
		if b.RenewAfter.Before(l.NotBefore) || b.RenewAfter.After(l.NotAfter) {
			t.Errorf("%s: renew_after %s outside the certificate's life", what, b.RenewAfter)
		}
	}
	n := e.enrollNode(clock, testSecret, "ct310")
	check("enroll", n.bundle)
	akey := e.newNodeKey()
	ab, err := c.AgentCert(ctx, n.cert, "opus", akey)
	if err != nil {
		t.Fatal(err)
	}
	check("agent-cert", ab)
	res, err := c.Renew(ctx, n.cert, n.key, []enroll.AgentKey{{ID: "opus", Key: akey}})
	if err != nil {
		t.Fatal(err)
	}
	check("renew", res.Node)
	check("renew's agent", res.Agents["opus"])
	if at, err := c.RenewAfter(ctx, res.Node.TLSCertificate(n.key)); err != nil || !at.IsZero() {
		t.Errorf("GET /health with nothing tainted: Meshtrust-Renew-After %s, %v", at, err)
	}
}

// BenchmarkE2EHeadHeartbeat is one HEAD /heartbeat/{id} of a registered
// agent over a kept-alive loopback TLS connection: the baseline that
// BenchmarkRenewHint's cost is read against.
func BenchmarkE2EHeadHeartbeat(b *testing.B) {
	e := newEnv(b, envOptions{mode: server.TLSStrict})
	c := e.registeredAgent("opus", "ct111", 9000)
	u := e.baseURL() + "/heartbeat/opus"
	for b.Loop() {
		resp, err := c.Head(u)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("HEAD: %d", resp.StatusCode)
		}
	}
}
