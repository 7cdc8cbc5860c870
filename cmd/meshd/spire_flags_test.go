package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

// TestSPIREMaxStalenessFlag: the spire backend's staleness bound is
// spirebundle's default unless --spire-max-staleness or
// MCP_MESH_SPIRE_MAX_STALENESS sets it, and a bound that is not a
// positive duration (zero would read as "never") is refused by name.
func TestSPIREMaxStalenessFlag(t *testing.T) {
	bound := func(args ...string) (time.Duration, error) {
		t.Helper()
		o := &options{}
		cmd := commandFor(o, io.Discard, io.Discard)
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		c, err := o.spire.config()
		return c.MaxStaleness, err
	}
	if d, err := bound(); err != nil || d != spirebundle.DefaultMaxStaleness {
		t.Errorf("default: %v, %v; want %v", d, err, spirebundle.DefaultMaxStaleness)
	}
	if d, err := bound("--spire-max-staleness", "30s"); err != nil || d != 30*time.Second {
		t.Errorf("--spire-max-staleness 30s: %v, %v", d, err)
	}
	t.Setenv("MCP_MESH_SPIRE_MAX_STALENESS", "2m")
	if d, err := bound(); err != nil || d != 2*time.Minute {
		t.Errorf("MCP_MESH_SPIRE_MAX_STALENESS=2m: %v, %v", d, err)
	}
	for _, bad := range []string{"0", "-1s", "never", ""} {
		if _, err := bound("--spire-max-staleness", bad); err == nil || !strings.Contains(err.Error(), "--spire-max-staleness") {
			t.Errorf("--spire-max-staleness %q: %v, want it refused by name", bad, err)
		}
	}
}
