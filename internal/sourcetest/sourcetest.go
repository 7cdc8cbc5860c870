// Package sourcetest is test support for credentials.Source
// implementations and their users.
package sourcetest

import (
	"testing"

	"github.com/meshtrust/meshtrust/credentials"
)

// Current returns src's current credentials, failing the test when it has
// none.
func Current(t testing.TB, src credentials.Source) *credentials.Credentials {
	t.Helper()
	c, err := src.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	return c
}
