package cli_test

import (
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/cli"
)

// TestUnknownSubcommand: a mistyped command fails with a suggestion
// instead of printing help and exiting 0.
func TestUnknownSubcommand(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"ca", "revok", "x"}, []string{`unknown command "revok" for "meshctl ca"`, "did you mean revoke?"}},
		{[]string{"ca", "rotate-intermediate", "prepar"}, []string{`unknown command "prepar"`, "prepare"}},
		{[]string{"entity", "lst"}, []string{`unknown command "lst" for "meshctl entity"`, "list"}},
		{[]string{"token", "creat", "--node", "ct1"}, []string{`unknown command "creat"`, "create"}},
		{[]string{"ca", "frobnicate"}, []string{`unknown command "frobnicate"`, "meshctl ca --help"}},
		{[]string{"enrol"}, []string{`unknown command "enrol" for "meshctl"`, "enroll"}},
	} {
		r := e.run(tc.args...)
		requireRefused(t, "meshctl "+strings.Join(tc.args, " "), r, tc.want...)
	}
	// A group alone still shows its commands.
	if r := e.run("ca"); r.code != 0 || !strings.Contains(r.stdout, "issue-agent") {
		t.Errorf("meshctl ca: exit %d\n%s", r.code, r.output())
	}
}

// TestVersion: --version names the build and the Go that built it.
func TestVersion(t *testing.T) {
	r := execute(t, "--version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "meshctl ") || !strings.Contains(r.stdout, runtime.Version()) {
		t.Errorf("meshctl --version: exit %d\n%s", r.code, r.output())
	}
	if v := cli.Version(); !regexp.MustCompile(`^(devel|v\S+|[0-9a-f]{12}(-dirty)?) go\S+$`).MatchString(v) {
		t.Errorf("Version() = %q", v)
	}
}
