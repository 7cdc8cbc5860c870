package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one meshd the harness started: a built binary, so that the
// RSS and file descriptors read from /proc are meshd's alone.
type process struct {
	name    string
	cmd     *exec.Cmd
	addr    string // the agent port, on 127.0.0.1
	metrics string // --metrics-listen, on 127.0.0.1
	data    string // --data-dir, which holds admin.sock
	log     *tail
	done    chan error
}

// startMeshd starts bin with data directory data, the CA in caDir and
// rootDir, serving certFile/keyFile and its metrics on free loopback
// ports, on database ("" the CA directory's SQLite file), with env added
// to its environment, and waits until its agent port and admin socket
// answer.
func startMeshd(ctx context.Context, bin, name, data, caDir, rootDir, certFile, keyFile, database string, env []string) (*process, error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--data-dir", data, "--ca-dir", caDir, "--root-dir", rootDir, "--listen", addr, "--metrics-listen", metrics,
		"--tls-mode", "strict", "--tls-cert", certFile, "--tls-key", keyFile, "--log-level", "warn"}
	if database != "" {
		args = append(args, "--database", database)
	}
	p := &process{name: name, addr: addr, metrics: metrics, data: data, log: &tail{max: 64 << 10}, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(cleanEnv(filepath.Join(data, "home")), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	// meshd dies with the harness, even when the harness is killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			if _, err := os.Stat(p.sock()); err == nil {
				return p, nil
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("meshd %s exited (%v): %s", name, err, p.log)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("meshd %s does not answer on %s within 60s: %s", name, addr, p.log)
		}
	}
}

func (p *process) sock() string { return filepath.Join(p.data, "admin.sock") }

// stop sends meshd SIGTERM, by its pid, and waits up to 20 s for it to
// exit, then kills it.
func (p *process) stop() error {
	select {
	case err := <-p.done:
		p.done <- err
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return nil
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		return fmt.Errorf("meshd %s did not stop within 20s of SIGTERM", p.name)
	}
}

// usage is one reading of a process's resident memory and open files.
type usage struct {
	RSS int64 // bytes
	FDs int
}

// readUsage reads VmRSS from /proc/<pid>/status and counts
// /proc/<pid>/fd.
func readUsage(pid int) (usage, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return usage{}, err
	}
	var u usage
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return usage{}, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, v, err)
			}
			u.RSS = kb << 10
		}
	}
	if u.RSS == 0 {
		return usage{}, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return usage{}, err
	}
	u.FDs = len(fds)
	return u, nil
}

// runtimeMemory is a meshd's Go runtime memory classes and collector
// settings, as its /metrics serves them (go_memory_classes_*,
// go_gc_*); a meshd too old to serve them reads as zeros.
type runtimeMemory struct {
	HeapObjects  int64   `json:"heap_objects"`
	Stacks       int64   `json:"stacks"`
	HeapFree     int64   `json:"heap_free"`
	HeapReleased int64   `json:"heap_released"`
	HeapGoal     int64   `json:"heap_goal"`
	Total        int64   `json:"total"`
	StackStart   int64   `json:"stack_starting_size"`
	GOGC         float64 `json:"gogc_percent"`
	Goroutines   int64   `json:"goroutines"`
}

// runtimeFamilies are the series readRuntime reads, and where it puts
// them.
var runtimeFamilies = map[string]func(*runtimeMemory, float64){
	"go_memory_classes_heap_objects_bytes":  func(m *runtimeMemory, v float64) { m.HeapObjects = int64(v) },
	"go_memory_classes_heap_stacks_bytes":   func(m *runtimeMemory, v float64) { m.Stacks = int64(v) },
	"go_memory_classes_heap_free_bytes":     func(m *runtimeMemory, v float64) { m.HeapFree = int64(v) },
	"go_memory_classes_heap_released_bytes": func(m *runtimeMemory, v float64) { m.HeapReleased = int64(v) },
	"go_memory_classes_total_bytes":         func(m *runtimeMemory, v float64) { m.Total = int64(v) },
	"go_gc_heap_goal_bytes":                 func(m *runtimeMemory, v float64) { m.HeapGoal = int64(v) },
	"go_gc_stack_starting_size_bytes":       func(m *runtimeMemory, v float64) { m.StackStart = int64(v) },
	"go_gc_gogc_percent":                    func(m *runtimeMemory, v float64) { m.GOGC = v },
	"go_goroutines":                         func(m *runtimeMemory, v float64) { m.Goroutines = int64(v) },
}

// readRuntime reads a meshd's runtime memory from its metrics listener
// (plain HTTP on loopback, the harness's own meshd).
func readRuntime(ctx context.Context, addr string) (runtimeMemory, error) {
	var m runtimeMemory
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("GET http://%s/metrics: %s", addr, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if set := runtimeFamilies[name]; ok && set != nil {
			if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
				set(&m, v)
			}
		}
	}
	return m, sc.Err()
}

// raiseNoFile raises this process's soft RLIMIT_NOFILE to its hard limit
// (meshd, started after, inherits it) and fails when that cannot hold
// need descriptors.
func raiseNoFile(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < need {
		return fmt.Errorf("RLIMIT_NOFILE is %d, the run needs about %d descriptors: raise the hard limit (ulimit -Hn, or LimitNOFILE) or run fewer agents", lim.Cur, need)
	}
	return nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// cleanEnv is the environment without meshtrust's and MCP Mesh's
// variables, and HOME in home, so that meshd reads only its flags.
func cleanEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "MESHTRUST_") || strings.HasPrefix(k, "MCP_MESH_") || k == "MESHD_LISTEN" || k == "DATABASE_URL" || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// copyTree copies the directory src to dst with its modes (keys stay
// 0600), for a second replica's own CA directory.
func copyTree(src, dst string) error {
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %w: %s", src, dst, err, out)
	}
	return nil
}

// tail keeps the last max bytes written to it: meshd's log, quoted when
// it fails.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}
