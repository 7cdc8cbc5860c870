package main

import (
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestVersionInProcess: --version prints the name, the build and the Go
// version, and starts nothing.
func TestVersionInProcess(t *testing.T) {
	var out bytes.Buffer
	cmd := newCommand(io.Discard, io.Discard)
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--version"})
	if err := cmd.Execute(); err != nil || !strings.HasPrefix(out.String(), "meshd ") || !strings.Contains(out.String(), runtime.Version()) {
		t.Errorf("meshd --version: %v\n%s", err, out.String())
	}
}

// TestVersionFlag: both binaries, built from this work tree, name its
// revision and the Go that built them.
func TestVersionFlag(t *testing.T) {
	revs := []string{gitHead(t)}
	bin := buildBinaries(t)
	revs = append(revs, gitHead(t)) // a commit may land while it builds
	goVersion, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"meshd", "meshctl"} {
		out, err := exec.Command(filepath.Join(bin, name), "--version").CombinedOutput()
		if err != nil {
			t.Errorf("%s --version: %v\n%s", name, err, out)
			continue
		}
		got := strings.TrimSpace(string(out))
		m := regexp.MustCompile(`^` + name + ` (\S+) (go\S+)$`).FindStringSubmatch(got)
		if m == nil {
			t.Errorf("%s --version = %q, want %q", name, got, name+" <version> <go version>")
			continue
		}
		if revs[0] != "" && !slices.ContainsFunc(revs, func(rev string) bool { return strings.Contains(m[1], rev) }) {
			t.Errorf("%s --version = %q, which names neither revision %v", name, got, revs)
		}
		if m[2] != strings.TrimSpace(string(goVersion)) {
			t.Errorf("%s --version names %s, built with %s", name, m[2], goVersion)
		}
	}
}

// gitHead is the work tree's revision, as the go command stamps it.
func gitHead(t *testing.T) string {
	out, err := exec.Command("git", "-C", repoRoot, "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))[:12]
}
