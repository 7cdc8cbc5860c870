package cli_test

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/internal/cli"
)

// executePipes runs meshctl with its stdout and stderr on pipes, as in a
// shell pipeline: the real terminal check sees no terminal.
func executePipes(t *testing.T, args ...string) result {
	t.Helper()
	read := func(r *os.File, into *bytes.Buffer, wg *sync.WaitGroup) {
		defer wg.Done()
		io.Copy(into, r)
		r.Close()
	}
	var out, errb bytes.Buffer
	var wg sync.WaitGroup
	or, ow, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	er, ew, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(2)
	go read(or, &out, &wg)
	go read(er, &errb, &wg)
	code := cli.Execute(t.Context(), args, ow, ew)
	ow.Close()
	ew.Close()
	wg.Wait()
	return result{code, out.String(), errb.String()}
}

// clear starts each redraw of the progress line.
const clear = "\r\x1b[K"

// TestProgressOnTerminal: on a terminal (the check injected), the long
// operations draw their progress on stderr, and clear it; stdout is what
// it is in a pipe, and --json draws nothing.
func TestProgressOnTerminal(t *testing.T) {
	e := newEnv(t)
	e.initCA()
	e.mustRun("ca", "issue-agent", "opus", "ct1")
	piped := func(args ...string) result {
		t.Helper()
		return executePipes(t, withFlags(args, "--root-dir", e.root, "--ca-dir", e.caDir, "--trust-domain", "mesh.local")...)
	}
	auditPiped := piped("ca", "audit", "--verify")
	auditJSONPiped := piped("ca", "audit", "--verify", "--json")
	for what, r := range map[string]result{"audit --verify": auditPiped, "audit --verify --json": auditJSONPiped} {
		if r.code != 0 || r.stderr != "" {
			t.Errorf("%s in a pipe: exit %d, stderr %q, want 0 and nothing", what, r.code, r.stderr)
		}
	}

	cli.SetTerminal(t, true)
	n := len(e.auditLog())
	r := e.mustRun("ca", "audit", "--verify")
	requireContains(t, "audit --verify stderr on a terminal", r.stderr, clear+"verified audit entries ")
	requireContains(t, "audit --verify stderr on a terminal", r.stderr, " of "+strconv.Itoa(n)+" (100%)")
	if !strings.HasSuffix(r.stderr, clear) {
		t.Errorf("audit --verify left its progress line: %q", r.stderr)
	}
	if r.stdout != auditPiped.stdout {
		t.Errorf("audit --verify stdout on a terminal:\n%s\nin a pipe:\n%s", r.stdout, auditPiped.stdout)
	}
	if r := e.mustRun("ca", "audit", "--verify", "--json"); r.stderr != "" || r.stdout != auditJSONPiped.stdout {
		t.Errorf("audit --verify --json on a terminal: stderr %q, stdout\n%s\nwant none and\n%s", r.stderr, r.stdout, auditJSONPiped.stdout)
	}

	r = e.mustRun("ca", "rotate-intermediate", "prepare")
	requireContains(t, "rotate-intermediate prepare stderr", r.stderr, clear+"prepare: generating the intermediate's key", clear+"prepare: signing the intermediate with the root key",
		clear+"prepare: publishing the bundle with both intermediates", clear+"prepare: re-signing the CRL of every live intermediate")
	requireContains(t, "rotate-intermediate prepare stdout", r.stdout, "prepared intermediate")
	if strings.Contains(r.stdout, clear) {
		t.Errorf("progress on stdout: %q", r.stdout)
	}
	r = e.mustRun("ca", "rotate-intermediate", "activate", "--json")
	if r.stderr != "" {
		t.Errorf("rotate-intermediate activate --json on a terminal drew %q", r.stderr)
	}
}

// TestProgressRotatePiped: in a pipe, rotate-intermediate's steps are not
// drawn, and its output is the usual.
func TestProgressRotatePiped(t *testing.T) {
	e := newEnv(t)
	e.initCA()
	r := executePipes(t, withFlags([]string{"ca", "rotate-intermediate", "prepare"}, "--root-dir", e.root, "--ca-dir", e.caDir, "--trust-domain", "mesh.local")...)
	if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "prepared intermediate") {
		t.Errorf("prepare in a pipe: exit %d, stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
}

// TestProgressRenew: renewing a node with agents on a terminal shows the
// wait for meshd and the agents' certificates written, n of m.
func TestProgressRenew(t *testing.T) {
	n := newNode(t, enrolltest.Config{})
	n.mustEnroll()
	for _, a := range []string{"opus", "sonnet", "haiku"} {
		if r := execute(t, "agent-cert", a, "--dir", n.dir); r.code != 0 {
			t.Fatalf("agent-cert %s: %s", a, r.output())
		}
	}
	piped := executePipes(t, "renew", "--dir", n.dir, "--force")
	if piped.code != 0 || piped.stderr != "" {
		t.Fatalf("renew in a pipe: exit %d, stderr %q\n%s", piped.code, piped.stderr, piped.stdout)
	}
	cli.SetTerminal(t, true)
	r := execute(t, "renew", "--dir", n.dir, "--force")
	if r.code != 0 {
		t.Fatalf("renew: %s", r.output())
	}
	requireContains(t, "renew stderr on a terminal", r.stderr, clear+"meshd at ", "is renewing ct112.mesh and 3 agent certificate(s) (",
		clear+"wrote agent certificates 3 of 3 (100%)")
	if !strings.HasSuffix(r.stderr, clear) || strings.Contains(r.stdout, clear) {
		t.Errorf("renew: stderr %q, stdout %q", r.stderr, r.stdout)
	}
	if got, want := strings.Count(r.stdout, "renewed "), strings.Count(piped.stdout, "renewed "); got != 4 || got != want {
		t.Errorf("renew stdout on a terminal has %d renewed lines, in a pipe %d, want 4:\n%s", got, want, r.stdout)
	}
}

// TestProgressAgentRun: `agent run` on a terminal shows what it waits for
// (the first credential, then the registration) above its log, and runs
// the command as in a pipe.
func TestProgressAgentRun(t *testing.T) {
	m := startMeshd(t)
	m.useFiles(t, "runner", "ct1")
	args := []string{"agent", "run", "--agent-id", "runner", "--provider", "file", "--registry-url", "https://" + m.agentAddr, "--", "true"}
	piped := executePipes(t, args...)
	if piped.code != 0 || strings.Contains(piped.stderr, clear) {
		t.Fatalf("agent run in a pipe: exit %d\n%s", piped.code, piped.stderr)
	}
	cli.SetTerminal(t, true)
	r := execute(t, args...)
	if r.code != 0 {
		t.Fatalf("agent run: %s", r.output())
	}
	requireContains(t, "agent run stderr on a terminal", r.stderr, clear+"agent runner: waiting for its first credential from the file provider (",
		clear+"agent runner: waiting for https://"+m.agentAddr+" to accept its registration (")
	if r.stdout != piped.stdout {
		t.Errorf("agent run stdout on a terminal %q, in a pipe %q", r.stdout, piped.stdout)
	}
}
