package cli

import (
	"io"
	"testing"
)

// SetTerminal makes meshctl take every writer for a terminal (is) or for
// none, until the test ends. Tests that call it must not run in parallel.
func SetTerminal(t testing.TB, is bool) {
	old := terminal
	terminal = func(io.Writer) bool { return is }
	t.Cleanup(func() { terminal = old })
}

// LoopbackPeerUID is loopbackPeerUID, for the test that asks the kernel.
var LoopbackPeerUID = loopbackPeerUID
