package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/pemfile"
)

// repoRoot is the module root, two levels above this package.
const repoRoot = "../.."

// built is where buildBinaries put meshd and meshctl, once per test run.
var built struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildBinaries builds meshd and meshctl into a bin directory, as `make
// run` does into ./bin, and returns it.
func buildBinaries(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds meshd and meshctl")
	}
	built.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			built.err = fmt.Errorf("the go command is needed to build meshd and meshctl: %w", err)
			return
		}
		if built.dir, built.err = os.MkdirTemp("", "mtbin"); built.err != nil {
			return
		}
		// -buildvcs=auto is go build's default, which the environment's
		// GOFLAGS may have turned off: --version reports what it records.
		cmd := exec.Command(goBin, "build", "-buildvcs=auto", "-o", built.dir+"/", "./cmd/...")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build -o bin/ ./cmd/...: %w\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

// cleanEnv is the environment with nothing of meshtrust's set, and HOME in
// home, so nothing outside the test's directories is read or written.
func cleanEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "MESHTRUST_") || strings.HasPrefix(k, "MCP_MESH_") || k == "MESHD_LISTEN" || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// devMeshd is `./bin/meshd --dev` running in a newcomer's directory.
type devMeshd struct {
	cmd    *exec.Cmd
	hint   []string // the lines printDevHint printed
	stderr *bytes.Buffer
}

// startDev starts wd/bin/meshd --dev in wd, as `make run` does, on a free
// port, and waits for its hint.
func startDev(t *testing.T, wd string, extra ...string) *devMeshd {
	t.Helper()
	args := append([]string{"--dev", "--data-dir", "./meshtrust-data", "--listen", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	cmd := exec.Command("./bin/meshd", args...)
	cmd.Dir = wd
	cmd.Env = cleanEnv(filepath.Join(wd, "home"))
	d := &devMeshd{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = d.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(t) })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("meshd exited before printing its hint:\n%s\nstderr:\n%s", strings.Join(d.hint, "\n"), d.stderr)
			}
			// The hint runs from "meshd is up" to the next empty line.
			switch {
			case strings.HasPrefix(l, "meshd is up"), len(d.hint) > 0 && l != "":
				d.hint = append(d.hint, l)
			case len(d.hint) > 0:
				go func() {
					for range lines {
					}
				}()
				return d
			}
		case <-deadline:
			t.Fatalf("no hint from meshd --dev within 30s:\n%s\nstderr:\n%s", strings.Join(d.hint, "\n"), d.stderr)
		}
	}
}

func (d *devMeshd) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("meshd --dev did not shut down cleanly: %v\nstderr:\n%s", err, d.stderr)
		}
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-done
		t.Errorf("meshd --dev did not stop within 20s of SIGTERM")
	}
}

// addr is the agent port's address, as the hint names it.
func (d *devMeshd) addr(t *testing.T) string {
	t.Helper()
	addr := regexp.MustCompile(`https://(127\.0\.0\.1:\d+)`).FindStringSubmatch(strings.Join(d.hint, "\n"))
	if addr == nil {
		t.Fatalf("no address in the hint:\n%s", strings.Join(d.hint, "\n"))
	}
	return addr[1]
}

// commands are the hint's command lines, continuation lines joined.
func (d *devMeshd) commands() []string {
	var out []string
	var cur string
	for _, l := range d.hint {
		if !strings.HasPrefix(l, "  ") && cur == "" {
			continue
		}
		l = strings.TrimSpace(l)
		if more, ok := strings.CutSuffix(l, `\`); ok {
			cur += more + " "
			continue
		}
		out = append(out, cur+l)
		cur = ""
	}
	return out
}

// words splits line the way a shell would, by asking one.
func words(t *testing.T, line string) []string {
	t.Helper()
	out, err := exec.Command("sh", "-c", `printf '%s\0' `+line).Output()
	if err != nil {
		t.Fatalf("sh cannot split %q: %v", line, err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
}

// runHint runs every command the hint printed, in wd as a newcomer
// pasting them would: meshctl lines through the shell, curl lines with
// curl when it is installed and always with their net/http equivalent.
func runHint(t *testing.T, wd string, d *devMeshd) {
	t.Helper()
	cmds := d.commands()
	if len(cmds) < 3 {
		t.Fatalf("the hint holds %d commands:\n%s", len(cmds), strings.Join(d.hint, "\n"))
	}
	for _, line := range cmds {
		w := words(t, line)
		switch w[0] {
		case "./bin/meshctl":
			if w[len(w)-1] == "console" {
				pasteConsole(t, wd, line)
				continue
			}
			sh := exec.Command("sh", "-c", line)
			sh.Dir, sh.Env = wd, cleanEnv(filepath.Join(wd, "home"))
			if out, err := sh.CombinedOutput(); err != nil {
				t.Errorf("pasted %q: %v\n%s", line, err, out)
			}
		case "curl":
			curlEquivalent(t, wd, line, w[1:])
			if _, err := exec.LookPath("curl"); err == nil {
				sh := exec.Command("sh", "-c", line+" --fail --silent --show-error")
				sh.Dir, sh.Env = wd, cleanEnv(filepath.Join(wd, "home"))
				if out, err := sh.CombinedOutput(); err != nil {
					t.Errorf("pasted %q: %v\n%s", line, err, out)
				}
			}
		default:
			t.Errorf("the hint prints %q, which is neither ./bin/meshctl (where make run builds it) nor curl", line)
		}
	}
	if _, err := os.Stat(filepath.Join(wd, "home", ".meshtrust")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a printed command used ~/.meshtrust instead of the dev data dir: %v", err)
	}
}

// pasteConsole runs the printed `meshctl console` as pasted, opens the
// one-time URL it prints (the login answers 303 with the session cookie),
// and interrupts it, as its operator would.
func pasteConsole(t *testing.T, wd, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sh := exec.CommandContext(ctx, "sh", "-c", "exec "+line)
	sh.Dir, sh.Env = wd, cleanEnv(filepath.Join(wd, "home"))
	sh.Cancel = func() error { return sh.Process.Signal(os.Interrupt) }
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	sh.Stderr = &stderr
	if err := sh.Start(); err != nil {
		t.Fatalf("pasted %q: %v", line, err)
	}
	defer func() {
		cancel()
		_ = sh.Wait()
	}()
	sc := bufio.NewScanner(out)
	var url string
	for url == "" && sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Open "); ok {
			url = strings.TrimSpace(rest)
		}
	}
	if url == "" {
		t.Fatalf("pasted %q printed no URL to open: %v\n%s", line, sc.Err(), stderr.String())
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("opening %s, printed by %q: %v", url, line, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) == 0 {
		t.Errorf("opening %s, printed by %q: %s with cookies %v, want 303 and a session", url, line, resp.Status, resp.Cookies())
	}
}

// curlEquivalent does what curl does with args: a POST of -d's data, as
// application/x-www-form-urlencoded, with --cacert, --cert and --key.
func curlEquivalent(t *testing.T, wd, line string, args []string) {
	t.Helper()
	var cacert, cert, key, data, url string
	for i := 0; i < len(args); i++ {
		next := func() string {
			i++
			if i == len(args) {
				t.Fatalf("%q: %s without a value", line, args[i-1])
			}
			return args[i]
		}
		switch a := args[i]; a {
		case "--cacert":
			cacert = inDir(wd, next())
		case "--cert":
			cert = inDir(wd, next())
		case "--key":
			key = inDir(wd, next())
		case "-d":
			data = next()
		default:
			if strings.HasPrefix(a, "-") {
				t.Fatalf("%q: curl option %s unknown to this test", line, a)
			}
			url = a
		}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{}}
	defer tr.CloseIdleConnections()
	if cacert != "" {
		roots, err := pemfile.ParseCerts(readFile(t, cacert))
		if err != nil {
			t.Fatalf("%q: --cacert: %v", line, err)
		}
		tr.TLSClientConfig.RootCAs = x509.NewCertPool()
		for _, r := range roots {
			tr.TLSClientConfig.RootCAs.AddCert(r)
		}
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatalf("%q: --cert/--key: %v", line, err)
		}
		tr.TLSClientConfig.Certificates = []tls.Certificate{pair}
	}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Post(url, "application/x-www-form-urlencoded", strings.NewReader(data))
	if err != nil {
		t.Errorf("%q: %v", line, err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Errorf("%q: %s\n%s", line, resp.Status, body)
	}
}

// inDir is p as a process in wd sees it.
func inDir(wd, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(wd, p)
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// newcomerDir is a fresh directory holding bin/meshd and bin/meshctl, as
// a checkout does after `make run` built them. Its path is short: the
// admin socket's must fit in 108 bytes.
func newcomerDir(t *testing.T) string {
	t.Helper()
	bin := buildBinaries(t)
	wd, err := os.MkdirTemp("", "mtdev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(wd) })
	if err := os.Mkdir(filepath.Join(wd, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"meshd", "meshctl"} {
		// A hard link, not a symlink: meshd finds meshctl beside the
		// executable the kernel reports, which resolves symlinks.
		if err := os.Link(filepath.Join(bin, name), filepath.Join(wd, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	return wd
}

// TestDevHintCommandsWork: every command `make run` prints works pasted in
// the directory it ran in, in every TLS mode, on the first start and after
// a restart on the same data dir.
func TestDevHintCommandsWork(t *testing.T) {
	for _, mode := range []string{"auto", "strict", "off"} {
		t.Run(mode, func(t *testing.T) {
			wd := newcomerDir(t)
			for start := 1; start <= 2; start++ {
				d := startDev(t, wd, "--tls-mode", mode)
				hint := strings.Join(d.hint, "\n")
				if !strings.Contains(hint, "./bin/meshctl --data-dir meshtrust-data") && !strings.Contains(hint, "./bin/meshctl --data-dir ./meshtrust-data") {
					t.Errorf("start %d: the hint does not run ./bin/meshctl on the data dir:\n%s", start, hint)
				}
				runHint(t, wd, d)
				d.stop(t)
			}
		})
	}
}

// TestMakeRunBuildsMeshctl: `make run` builds meshctl into ./bin beside the
// meshd it runs from there, which is where the hint finds it.
func TestMakeRunBuildsMeshctl(t *testing.T) {
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make not installed")
	}
	cmd := exec.Command(mk, "-n", "run")
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n run: %v\n%s", err, out)
	}
	s := string(out)
	build, run := strings.Index(s, "build -o bin/ ./cmd/..."), strings.Index(s, "./bin/meshd --dev")
	if build < 0 || run < build {
		t.Errorf("make run does not build ./bin/meshctl and then run ./bin/meshd --dev:\n%s", s)
	}
}

// TestSiblingMeshctl: the hint names the meshctl beside meshd by its path
// from the working directory.
func TestSiblingMeshctl(t *testing.T) {
	wd := t.TempDir()
	bin := filepath.Join(wd, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	meshd := filepath.Join(bin, "meshd")
	if _, ok := siblingMeshctl(meshd, wd); ok {
		t.Error("found a meshctl where there is none")
	}
	if err := os.WriteFile(filepath.Join(bin, "meshctl"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := siblingMeshctl(meshd, wd); ok {
		t.Error("found a meshctl that is not executable")
	}
	if err := os.Chmod(filepath.Join(bin, "meshctl"), 0o755); err != nil {
		t.Fatal(err)
	}
	if p, ok := siblingMeshctl(meshd, wd); !ok || p != "./bin/meshctl" {
		t.Errorf("siblingMeshctl from the repo root = %q, %v; want ./bin/meshctl", p, ok)
	}
	elsewhere := t.TempDir()
	if p, ok := siblingMeshctl(meshd, elsewhere); !ok || p != filepath.Join(bin, "meshctl") {
		t.Errorf("siblingMeshctl from elsewhere = %q, %v; want the absolute path", p, ok)
	}
}

// TestDevServerCertNames: meshd --dev writes its certificate as
// issued/meshd.crt and .key, the seed's names; a data dir an older meshd
// made, holding issued/meshd.mesh.crt, keeps serving that one.
func TestDevServerCertNames(t *testing.T) {
	wd := newcomerDir(t)
	issued := filepath.Join(wd, "meshtrust-data", "ca", "issued")
	d := startDev(t, wd)
	d.stop(t)
	for _, name := range []string{"meshd.crt", "meshd.key"} {
		if _, err := os.Stat(filepath.Join(issued, name)); err != nil {
			t.Errorf("meshd --dev did not write %s: %v", name, err)
		}
	}
	if old, _ := filepath.Glob(filepath.Join(issued, "meshd.mesh.*")); len(old) != 0 {
		t.Errorf("meshd --dev wrote the old names: %v", old)
	}

	// What an older meshd left.
	for _, ext := range []string{".crt", ".key"} {
		if err := os.Rename(filepath.Join(issued, "meshd"+ext), filepath.Join(issued, "meshd.mesh"+ext)); err != nil {
			t.Fatal(err)
		}
	}
	legacy := readFile(t, filepath.Join(issued, "meshd.mesh.crt"))
	d = startDev(t, wd)
	conn, err := tls.Dial("tcp", d.addr(t), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	served := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	want, err := pemfile.ParseCerts(legacy)
	if err != nil {
		t.Fatal(err)
	}
	if !served.Equal(want[0]) {
		t.Errorf("meshd serves %s serial %s, not the certificate in issued/meshd.mesh.crt", served.Subject.CommonName, served.SerialNumber.Text(16))
	}
	for _, name := range []string{"meshd.crt", "meshd.key"} {
		if _, err := os.Stat(filepath.Join(issued, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("meshd --dev wrote %s beside the old-style files: %v", name, err)
		}
	}
	runHint(t, wd, d)
}
