// Package kubetest runs a real Kubernetes API server (kube-apiserver on
// etcd, started by scripts/kube.sh) for tests, and finds the Helm the same
// script builds.
//
// A test that needs one calls Shared, which starts the servers on first
// use; the package's TestMain calls Main, which stops them by PID when the
// tests are done. Without a built kube-apiserver the tests skip, unless
// MESHTRUST_REQUIRE_KUBE is set (as CI sets it): then they fail.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RequireEnv makes a missing kube-apiserver a test failure instead of a
// skip.
const RequireEnv = "MESHTRUST_REQUIRE_KUBE"

// Cluster is a running API server.
type Cluster struct {
	// Dir holds the servers' files: logs, pids, credentials.
	Dir string
	// Addr is the API server's https URL.
	Addr string
	// Kubeconfig is a kubeconfig of an admin (system:masters);
	// MeshdKubeconfig one of user "meshd", who may do nothing a test has
	// not granted.
	Kubeconfig, MeshdKubeconfig string
}

// Admin returns a client with every permission.
func (c *Cluster) Admin(t testing.TB) kubernetes.Interface { return client(t, c.Kubeconfig) }

// Meshd returns a client as user "meshd", with the permissions the test
// granted it.
func (c *Cluster) Meshd(t testing.TB) kubernetes.Interface { return client(t, c.MeshdKubeconfig) }

// AdminConfig returns the admin's REST config.
func (c *Cluster) AdminConfig(t testing.TB) *rest.Config { return restConfig(t, c.Kubeconfig) }

// StopAPIServer stops the API server alone, as an outage; etcd keeps the
// data.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	script(t, "stop-apiserver", c.Dir)
}

// StartAPIServer starts the API server again on its address.
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	script(t, "start-apiserver", c.Dir)
}

var (
	sharedMu  sync.Mutex
	shared    *Cluster
	sharedErr string
)

// Shared returns the package's API server, starting it on first use. It
// skips t when kube-apiserver is not built and RequireEnv is not set.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		return shared
	}
	if sharedErr != "" {
		t.Fatal(sharedErr)
	}
	requireBinaries(t)
	dir, err := os.MkdirTemp("", "meshtrust-kube-")
	if err != nil {
		t.Fatal(err)
	}
	out, err := runScript(fmt.Sprintf("KUBE_SH_PARENT=%d", os.Getpid()), "start", dir)
	if err != nil {
		os.RemoveAll(dir)
		sharedErr = "scripts/kube.sh start: " + err.Error()
		t.Fatal(sharedErr)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	shared = &Cluster{Dir: dir, Addr: vars["KUBE_ADDR"], Kubeconfig: vars["KUBECONFIG"], MeshdKubeconfig: vars["KUBE_MESHD_KUBECONFIG"]}
	if shared.Addr == "" || shared.Kubeconfig == "" {
		t.Fatalf("scripts/kube.sh start printed no address or kubeconfig:\n%s", out)
	}
	return shared
}

// Main runs the tests, then stops the shared API server if one was
// started. Use it as TestMain: os.Exit(kubetest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		if _, err := runScript("", "stop", shared.Dir); err != nil {
			fmt.Fprintln(os.Stderr, "kubetest: scripts/kube.sh stop:", err)
			code = 1
		}
		if code == 0 {
			os.RemoveAll(shared.Dir)
		} else {
			fmt.Fprintln(os.Stderr, "kubetest: API server logs kept in", shared.Dir)
		}
		shared = nil
	}
	return code
}

// Helm returns the path of the helm binary scripts/kube.sh builds, or
// skips t as Shared does.
func Helm(t testing.TB) string {
	t.Helper()
	return binary(t, 1)
}

// requireBinaries skips or fails t when kube-apiserver or etcd is missing.
func requireBinaries(t testing.TB) {
	t.Helper()
	binary(t, 0)
	if _, err := exec.LookPath("etcd"); err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("no etcd on PATH and %s is set: run scripts/install-test-deps.sh", RequireEnv)
		}
		t.Skip("no etcd on PATH: run scripts/install-test-deps.sh (Debian package etcd-server)")
	}
}

// binary returns the i-th path scripts/kube.sh path prints (0:
// kube-apiserver, 1: helm), skipping or failing t when it is missing.
func binary(t testing.TB, i int) string {
	t.Helper()
	out, err := runScript("", "path")
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(out)
	if len(paths) != 2 {
		t.Fatalf("scripts/kube.sh path printed %q, want two paths", out)
	}
	p := paths[i]
	if _, err := os.Stat(p); err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("no %s and %s is set: build it with scripts/kube.sh build", p, RequireEnv)
		}
		t.Skipf("no %s: build it with scripts/kube.sh build (about 10 minutes, once) to run the tests against a real API server", p)
	}
	return p
}

// Root returns the repository's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func script(t testing.TB, args ...string) {
	t.Helper()
	if _, err := runScript("", args...); err != nil {
		t.Fatal(err)
	}
}

// runScript runs scripts/kube.sh with args (env added when not empty) and
// returns its standard output.
func runScript(env string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(Root(), "scripts", "kube.sh")}, args...)...)
	cmd.Env = os.Environ()
	if env != "" {
		cmd.Env = append(cmd.Env, env)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("scripts/kube.sh %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func restConfig(t testing.TB, kubeconfig string) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func client(t testing.TB, kubeconfig string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(restConfig(t, kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
