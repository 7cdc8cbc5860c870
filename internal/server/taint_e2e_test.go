package server_test

import (
	"context"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestE2ETaintSignals: a node and its agent enrolled under intermediate
// 1; prepare and activate 2, taint 1. The revocation stream says
// ca.tainted (to the subscriber that was there, and at once to a new
// one); the agent's heartbeats, HEAD and POST, stay admitted and carry
// Meshtrust-Renew-After, within the taint window; the node's renewal,
// its agent piggybacking, moves both onto intermediate 2, whose answers
// carry the normal renew_after and no header.
func TestE2ETaintSignals(t *testing.T) {
	e, clock := newEnrollEnv(t, enrollOptions{mode: server.TLSStrict})
	ctx := context.Background()
	c := e.enrollClient()
	n := e.enrollNode(clock, testSecret, "ct320")
	akey := e.newNodeKey()
	ab, err := c.AgentCert(ctx, n.cert, "opus", akey)
	if err != nil {
		t.Fatal(err)
	}
	acert := ab.TLSCertificate(akey)
	ac := e.client(&acert)
	if r := e.do(ac, "POST", "/heartbeat", heartbeat("opus", 9000)); r.code != http.StatusOK {
		t.Fatalf("register: %s", r)
	}
	old := hex.EncodeToString(n.bundle.Certificate.AuthorityKeyId)
	sub := e.subscribe("")

	cfg := e.ca.auth.Config()
	if _, err := ca.PrepareIntermediate(ctx, cfg, e.ca.st); err != nil {
		t.Fatal(err)
	}
	next, err := ca.ActivateIntermediate(ctx, cfg, e.ca.st)
	if err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "meshd signs with intermediate 2", func() bool {
		return hex.EncodeToString(e.ca.auth.ActiveIntermediate().SubjectKeyId) == hex.EncodeToString(next.SubjectKeyId)
	})
	head := func(c *http.Client) (int, string) {
		t.Helper()
		resp, err := c.Head(e.baseURL() + "/heartbeat/opus")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(meshapi.HeaderRenewAfter)
	}
	if code, h := head(ac); code != http.StatusOK || h != "" {
		t.Fatalf("before the taint: HEAD %d, Meshtrust-Renew-After %q", code, h)
	}

	taintedAt := time.Now()
	if _, err := ca.TaintIntermediate(ctx, cfg, e.ca.st, old); err != nil {
		t.Fatal(err)
	}
	ev := sub.next()
	if p := ev.payload(t); ev.event != meshapi.EventCATainted || ev.id != "" || p["issuer_key_id"] != old {
		t.Fatalf("after the taint the stream sent %q id %q: %s", ev.event, ev.id, ev.data)
	}
	late := e.subscribe("")
	if ev := late.next(); ev.event != meshapi.EventCATainted || ev.payload(t)["issuer_key_id"] != old {
		t.Fatalf("a new subscriber first got %q: %s", ev.event, ev.data)
	}
	var hint string
	eventually.True(t, "HEAD carries Meshtrust-Renew-After", func() bool {
		code, h := head(ac)
		if code != http.StatusOK {
			t.Fatalf("HEAD refused after the taint: %d", code)
		}
		hint = h
		return h != ""
	})
	at := enroll.ParseRenewAfter(hint, ab.Certificate)
	if at.Before(taintedAt.Add(-time.Second)) || at.After(time.Now().Add(ca.DefaultTaintWindow)) {
		t.Errorf("Meshtrust-Renew-After %s, want within the taint window after %s", hint, taintedAt)
	}
	if r := e.do(ac, "POST", "/heartbeat", heartbeat("opus", 9000)); r.code != http.StatusOK || r.header.Get(meshapi.HeaderRenewAfter) == "" {
		t.Errorf("POST after the taint: %s, header %q", r, r.header.Get(meshapi.HeaderRenewAfter))
	}
	if got, err := c.RenewAfter(ctx, n.cert); err != nil || got.IsZero() {
		t.Errorf("the node's GET /health after the taint: %s, %v", got, err)
	}

	// The node renews, its agent with it: both onto intermediate 2.
	res, err := c.Renew(ctx, n.cert, n.key, []enroll.AgentKey{{ID: "opus", Key: akey}})
	if err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(next.SubjectKeyId)
	for what, b := range map[string]*enroll.Bundle{"node": res.Node, "agent": res.Agents["opus"]} {
		if got := hex.EncodeToString(b.Certificate.AuthorityKeyId); got != want {
			t.Errorf("renewed %s issued by %s, want intermediate 2 (%s)", what, got, want)
		}
		l := b.Certificate
		if normal := e.ca.auth.RenewAt(want, l.SerialNumber.Text(16), l.NotBefore, l.NotAfter); !b.RenewAfter.Equal(normal) || b.RenewAfter.Before(l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore)/2)) {
			t.Errorf("renewed %s: renew_after %s, want the normal %s", what, b.RenewAfter, normal)
		}
	}
	nac := res.Agents["opus"].TLSCertificate(akey)
	fresh := e.freshClient(&nac)
	code, h := head(fresh)
	if code == http.StatusAccepted || code == http.StatusGone {
		if r := e.do(fresh, "POST", "/heartbeat", heartbeat("opus", 9000)); r.code != http.StatusOK {
			t.Fatalf("register with the renewed certificate: %s", r)
		}
		code, h = head(fresh)
	}
	if code != http.StatusOK || h != "" {
		t.Errorf("with the renewed certificate: HEAD %d, Meshtrust-Renew-After %q", code, h)
	}
}
