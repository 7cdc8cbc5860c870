package cli_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// completeWith runs `meshctl __complete <args...> <word>` with the env's
// directories and the meshd's socket, and returns the candidates (without
// their descriptions) and the directive line.
func (m *testMeshd) complete(dataDir string, words ...string) (cands []string, directive string, r result) {
	m.t.Helper()
	args := append([]string{"__complete", "--root-dir", m.root, "--ca-dir", m.caDir, "--data-dir", dataDir}, words...)
	r = execute(m.t, args...)
	for _, line := range strings.Split(strings.TrimRight(r.stdout, "\n"), "\n") {
		if strings.HasPrefix(line, ":") {
			directive = line
			continue
		}
		if line != "" {
			name, _, _ := strings.Cut(line, "\t")
			cands = append(cands, name)
		}
	}
	return cands, directive, r
}

// TestCompletionDynamic: agent ids, entity names, identities and serials
// are completed from the running meshd and its CA's store; a meshd that
// cannot be reached, or never answers, completes nothing, prints nothing
// but the directive, and never offers file names.
func TestCompletionDynamic(t *testing.T) {
	m := startMeshd(t)
	acme, beta := m.validCA("acme"), m.validCA("beta")
	m.mustCtl("entity", "register", "acme", "--ca-cert", acme.file)
	m.mustCtl("entity", "register", "beta", "--ca-cert", beta.file)
	m.mustCtl("entity", "revoke", "beta", "--force")
	m.mustHeartbeat(m.agentClient(acme.agentCert(t, "acme-one")), "acme-one")
	m.mustHeartbeat(m.agentClient(acme.agentCert(t, "acme-two")), "acme-two")
	m.mustRun("ca", "issue-agent", "opus", "ct1")
	m.mustRun("ca", "issue-agent", "gone", "ct1")
	m.mustRun("ca", "revoke", "gone@ct1")
	opusSerial := readCert(t, m.issued("opus@ct1")).SerialNumber.Text(16)

	const noFiles = ":4" // cobra.ShellCompDirectiveNoFileComp
	for _, tc := range []struct {
		words   []string
		want    []string
		exclude []string
	}{
		{[]string{"agent", "release", ""}, []string{"acme-one", "acme-two"}, nil},
		{[]string{"agent", "release", "acme-t"}, []string{"acme-two"}, nil},
		{[]string{"agent", "release", "acme-one", ""}, nil, nil},
		{[]string{"entity", "revoke", ""}, []string{"acme"}, nil},
		{[]string{"entity", "rotate", "a"}, []string{"acme"}, nil},
		{[]string{"ca", "revoke", "opus"}, []string{"opus@ct1"}, nil},
		{[]string{"ca", "revoke", ""}, nil, []string{"gone@ct1"}},
		{[]string{"ca", "revoke", opusSerial[:4]}, nil, nil},
		{[]string{"ca", "reinstate", ""}, []string{"gone@ct1"}, nil},
		{[]string{"ca", "revoke", "--reason", "key"}, []string{"keyCompromise"}, nil},
	} {
		got, directive, r := m.complete(m.dataDir, tc.words...)
		what := strings.Join(tc.words, " ")
		if r.code != 0 || directive != noFiles {
			t.Errorf("complete %q: exit %d, directive %q, want 0 and %s\n%s", what, r.code, directive, noFiles, r.output())
		}
		if tc.want != nil && !slices.Equal(got, tc.want) {
			t.Errorf("complete %q = %v, want %v", what, got, tc.want)
		}
		for _, x := range tc.exclude {
			if slices.Contains(got, x) {
				t.Errorf("complete %q offers %s", what, x)
			}
		}
		if tc.want == nil && len(tc.words) == 3 && tc.words[2] == "" && tc.words[0] == "ca" {
			if !slices.Contains(got, "opus@ct1") || !slices.Contains(got, opusSerial) || !slices.Contains(got, "meshd.mesh") {
				t.Errorf("complete %q = %v, want the live identities and their serials", what, got)
			}
		}
	}
	if got, _, _ := m.complete(m.dataDir, "ca", "revoke", opusSerial[:4]); !slices.Contains(got, opusSerial) {
		t.Errorf("complete ca revoke %s = %v, want opus@ct1's serial %s", opusSerial[:4], got, opusSerial)
	}

	// No meshd behind the socket, then one that accepts and never answers.
	dead, err := os.MkdirTemp("", "mtcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dead) })
	check := func(what string) {
		t.Helper()
		got, directive, r := m.complete(dead, "agent", "release", "")
		if r.code != 0 || directive != noFiles || len(got) != 0 {
			t.Errorf("%s: exit %d, candidates %v, directive %q; want none and %s\n%s", what, r.code, got, directive, noFiles, r.stdout)
		}
	}
	check("no meshd")
	ln, err := net.Listen("unix", filepath.Join(dead, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	check("a meshd that never answers")
}

// TestCompletionScripts: meshctl completion writes a script for bash, zsh
// and fish, each of which its shell parses.
func TestCompletionScripts(t *testing.T) {
	for _, tc := range []struct{ shell, flag string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		t.Run(tc.shell, func(t *testing.T) {
			r := execute(t, "completion", tc.shell)
			if r.code != 0 || !strings.Contains(r.stdout, "__complete") {
				t.Fatalf("completion %s: exit %d\n%s", tc.shell, r.code, r.output())
			}
			path, err := exec.LookPath(tc.shell)
			if err != nil {
				t.Skipf("%s is not installed: its script's syntax is not checked", tc.shell)
			}
			file := filepath.Join(t.TempDir(), "meshctl."+tc.shell)
			if err := os.WriteFile(file, []byte(r.stdout), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(path, tc.flag, file).CombinedOutput(); err != nil {
				t.Errorf("%s %s: %v\n%s", tc.shell, tc.flag, err, out)
			}
		})
	}
}
