package main

import (
	"bytes"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEFlagTable: every flag `meshd --help` shows is in the README's
// meshd flag table, and the table names no flag meshd lacks.
func TestREADMEFlagTable(t *testing.T) {
	var help bytes.Buffer
	cmd := newCommand(io.Discard, io.Discard)
	cmd.SetOut(&help)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllStringSubmatch(help.String(), -1) {
		shown[m[1]] = true
	}
	if len(shown) < 20 {
		t.Fatalf("found %d flags in meshd --help:\n%s", len(shown), help.String())
	}

	readme := string(readFile(t, filepath.Join(repoRoot, "README.md")))
	_, section, ok := strings.Cut(readme, "\n## meshd flags\n")
	if !ok {
		t.Fatal("README.md has no \"## meshd flags\" section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	table := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		for _, m := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(line, -1) {
			table[m[1]] = true
		}
	}
	for f := range shown {
		if !table[f] {
			t.Errorf("meshd --help shows --%s; README.md's meshd flag table does not list it", f)
		}
	}
	for f := range table {
		if !shown[f] {
			t.Errorf("README.md's meshd flag table lists --%s; meshd --help does not show it", f)
		}
	}
}
