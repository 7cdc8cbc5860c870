package cli_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/meshtrust/meshtrust/internal/browsertest"
)

// TestConsoleInBrowser drives the operator console in a real headless
// Chromium, through a real meshd and the real `meshctl console`: the
// one-time URL logs in; an agent's heartbeat brings its row without a
// reload; revoking it from the console (with the confirmation) moves it
// to evicted in another tab, live; the audit page names the admin; the
// login URL does not work twice; a POST without the CSRF token is refused
// and changes nothing. With MESHTRUST_CONSOLE_SCREENSHOTS=<dir> it saves
// screenshots of the main pages there, at 1280×800 and on a phone.
func TestConsoleInBrowser(t *testing.T) {
	browser := browsertest.New(t)
	m := startMeshd(t)
	m.registerAgent(t, "haiku", "ct2")
	rc := m.startConsole()
	base := "http://" + rc.URL.Host
	admin := fmt.Sprintf("uid %d (admin socket)", os.Getuid())
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		if err := chromedp.Run(browser, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Log in with the one-time URL: the agents page, as the socket's uid.
	var who string
	run("log in", chromedp.Navigate(rc.URL.String()),
		chromedp.WaitVisible(`#agents-table`, chromedp.ByQuery),
		chromedp.Text(`body`, &who, chromedp.ByQuery))
	if !strings.Contains(who, admin) {
		t.Fatalf("the console does not name %q:\n%.1000s", admin, who)
	}

	// A heartbeat brings opus's row without a reload.
	m.registerAgent(t, "opus", "ct1")
	run("opus appears live", chromedp.WaitVisible(`tr[data-agent-id="opus"]`, chromedp.ByQuery))

	// Revoke it from a second tab (same session), confirming; the first
	// tab sees it evicted, live.
	tab, closeTab := chromedp.NewContext(browser)
	defer closeTab()
	var done string
	if err := chromedp.Run(tab,
		chromedp.Navigate(base+"/console/agents"),
		chromedp.Click(`tr[data-agent-id="opus"] a.action`, chromedp.ByQuery),
		chromedp.WaitVisible(`form.stack-form button[type=submit]`, chromedp.ByQuery),
		chromedp.Click(`form.stack-form button[type=submit]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#confirm-button`, chromedp.ByQuery),
		chromedp.Click(`#confirm-button`, chromedp.ByQuery),
		chromedp.WaitVisible(`#action-result`, chromedp.ByQuery),
		chromedp.Text(`#action-result`, &done, chromedp.ByQuery),
	); err != nil {
		t.Fatalf("revoke opus@ct1 in the console: %v", err)
	}
	if !strings.Contains(done, "opus@ct1") || !strings.Contains(done, "1 agent(s) evicted") {
		t.Fatalf("the revocation's result: %q", done)
	}
	run("opus evicted live", chromedp.WaitVisible(`tr[data-evicted-agent-id="opus"]`, chromedp.ByQuery))
	var live bool
	run("opus's live row", chromedp.Evaluate(`document.querySelector('tr[data-agent-id="opus"]') !== null`, &live))
	if live {
		t.Error("opus is still listed live after its revocation")
	}

	// The audit page names who revoked it.
	var audit string
	run("audit page", chromedp.Navigate(base+"/console/audit"), chromedp.Text(`body`, &audit, chromedp.ByQuery))
	if !strings.Contains(audit, "identity.revoke") || !strings.Contains(audit, "by "+admin) {
		t.Errorf("the audit page does not show identity.revoke by %s:\n%.3000s", admin, audit)
	}

	// A POST without the CSRF token, from the page itself (same origin,
	// with the session cookie), is refused and revokes nothing.
	var status int
	run("POST without CSRF", chromedp.Navigate(base+"/console/agents"), chromedp.Evaluate(
		`fetch('/console/revoke', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
			body: 'target=haiku%40ct2&reason=keyCompromise&confirm=haiku%40ct2'}).then(r => r.status)`,
		&status, func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
	if status != 403 && status != 400 {
		t.Errorf("a POST without the CSRF token: %d, want a refusal", status)
	}
	if r := m.run("ca", "verify", filepath.Join(m.caDir, "issued", "haiku@ct2.crt")); r.code != 0 {
		t.Errorf("haiku@ct2 after the refused POST: %s", r.output())
	}

	if dir := os.Getenv("MESHTRUST_CONSOLE_SCREENSHOTS"); dir != "" {
		screenshots(t, browser, base, dir)
	}

	// The login URL does not work twice, not even in this browser.
	var again string
	run("reuse the login URL", chromedp.Navigate(rc.URL.String()), chromedp.Text(`body`, &again, chromedp.ByQuery))
	if !strings.Contains(again, "not valid") {
		t.Errorf("the login URL used twice:\n%.1000s", again)
	}
}

// screenshots saves the main pages at 1280×800 and at a phone's 390×844.
func screenshots(t *testing.T, ctx context.Context, base, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, vp := range []struct {
		name string
		w, h int64
		opts []chromedp.EmulateViewportOption
	}{
		{"desktop", 1280, 800, nil},
		{"phone", 390, 844, []chromedp.EmulateViewportOption{chromedp.EmulateScale(2), chromedp.EmulateMobile}},
	} {
		for _, page := range []string{"agents", "certificates", "revocations", "audit", "intermediates", "entities", "policy"} {
			var png []byte
			if err := chromedp.Run(ctx, chromedp.EmulateViewport(vp.w, vp.h, vp.opts...),
				chromedp.Navigate(base+"/console/"+page), chromedp.WaitVisible(`main`, chromedp.ByQuery),
				chromedp.CaptureScreenshot(&png)); err != nil {
				t.Fatalf("screenshot of %s (%s): %v", page, vp.name, err)
			}
			if err := os.WriteFile(filepath.Join(dir, page+"-"+vp.name+".png"), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
