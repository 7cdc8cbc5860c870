// Package browsertest runs a headless Chromium for tests that drive a web
// page (the operator console's), with github.com/chromedp/chromedp.
//
// A test that needs it skips when Chromium is not installed, unless
// MESHTRUST_REQUIRE_CHROMIUM is set (CI sets it: scripts/install-test-deps.sh
// installs Debian's chromium), and then fails.
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meshtrust/meshtrust/internal/eventually"
)

// Timeout bounds everything one test does in the browser.
const Timeout = 3 * time.Minute

// candidates are where Chromium is looked for, in order.
var candidates = []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"}

// Path returns Chromium's executable, or skips tb (fails it when
// MESHTRUST_REQUIRE_CHROMIUM is set) when there is none.
func Path(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("MESHTRUST_CHROMIUM"); p != "" {
		return p
	}
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("MESHTRUST_REQUIRE_CHROMIUM") != "" {
		tb.Fatal("no Chromium and MESHTRUST_REQUIRE_CHROMIUM is set: install it with scripts/install-test-deps.sh (Debian's chromium), or name it in MESHTRUST_CHROMIUM")
	}
	tb.Skip("no Chromium: install it with scripts/install-test-deps.sh (Debian's chromium), or name it in MESHTRUST_CHROMIUM")
	return ""
}

// New starts a headless Chromium for tb, with a user data directory of its
// own and a 1280×800 window, and returns the context of its first tab.
// The browser is stopped when tb ends, and the context ends after Timeout
// at the latest. A new tab of the same browser (sharing its cookies) is
// chromedp.NewContext of the returned context.
func New(tb testing.TB) context.Context {
	tb.Helper()
	// Not tb.TempDir: its removal fails the test when Chromium's helper
	// processes (crashpad, the zygote) are still writing the profile just
	// after the browser quit. The cleanup below waits for them.
	profile, err := os.MkdirTemp("", "meshtrust-chromium-")
	if err != nil {
		tb.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(Path(tb)),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 800),
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to run as root with its sandbox on.
		opts = append(opts, chromedp.NoSandbox)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(alloc)
	tb.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
		cancel()
		eventually.NoError(tb, "Chromium's profile directory removed once its processes are gone", func() error { return os.RemoveAll(profile) })
	})
	// Start the browser now, so a test's first action is not also its
	// start-up.
	if err := chromedp.Run(bctx); err != nil {
		tb.Fatalf("start Chromium: %v", err)
	}
	return bctx
}
