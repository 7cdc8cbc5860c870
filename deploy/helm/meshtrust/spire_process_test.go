package meshtrust_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/kubetest"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
)

// meshdArgs are the arguments of the meshd container the values render.
func meshdArgs(t *testing.T, values string) []string {
	t.Helper()
	args, _ := meshdContainer(t, values)
	return args
}

// meshdContainer returns the arguments and the environment (each
// variable's rendered entry: name, and value or valueFrom) of the meshd
// container that values render with the further --set flags.
func meshdContainer(t *testing.T, values string, set ...string) (args []string, env []map[string]any) {
	t.Helper()
	_, c, _ := meshdPodSpec(t, render(t, "mesh", values, set...))
	for _, a := range c["args"].([]any) {
		args = append(args, a.(string))
	}
	if e, ok := c["env"].([]any); ok {
		for _, v := range e {
			env = append(env, v.(map[string]any))
		}
	}
	return args, env
}

// buildMeshd builds cmd/meshd from the tree and returns the binary.
func buildMeshd(t *testing.T) string { return buildCommand(t, "meshd") }

// buildCommand builds cmd/<name> from the tree and returns the binary.
func buildCommand(t *testing.T, name string) string {
	t.Helper()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/"+name)
	build.Dir = kubetest.Root()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	return filepath.Join(bin, name)
}

// TestSPIREValuesProcess: the spire values combination runs as rendered.
// meshd is started with the StatefulSet's arguments — only the paths and
// addresses a pod has and a test does not are moved: the data directory,
// the listen address, and the SPIRE agent's socket, a real SPIRE 1.13.3
// agent's; the k8s-secrets backend reads the real kube-apiserver — and it
// presents its own X.509-SVID on the agent port and admits a CN-less SVID,
// spiffe://mcp-mesh.local/agent/opus, as agent opus of the mesh, with no
// binding setting in the values.
func TestSPIREValuesProcess(t *testing.T) {
	args := meshdArgs(t, filepath.Join("ci", "spire-values.yaml"))
	cluster := kubetest.Shared(t)
	s := spiretest.Start(t, "mcp-mesh.local")

	meshd := buildMeshd(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	registryID, opusID := "spiffe://mcp-mesh.local/mesh-registry", "spiffe://mcp-mesh.local/agent/opus"
	s.CreateEntry(t, registryID, "unix:path:"+meshd)
	s.CreateEntry(t, opusID, "unix:path:"+exe)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	data := filepath.Join(t.TempDir(), "data")
	var run []string
	for _, a := range args {
		name, _, _ := strings.Cut(a, "=")
		switch name {
		case "--data-dir":
			a = name + "=" + data
		case "--listen":
			a = name + "=" + addr
		case "--spire-socket":
			a = name + "=" + s.AgentSocket
		}
		run = append(run, a)
	}
	cmd := exec.Command(meshd, run...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "KUBECONFIG=" + cluster.Kubeconfig}
	var stderr logtest.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("meshd %s\n%s", strings.Join(run, " "), stderr.String())
		}
	})

	// meshd waits up to 30 s for its SVID; the agent syncs new entries
	// every 5 s.
	var served *tls.ConnectionState
	eventually.TrueWithin(t, 2*time.Minute, "meshd serving its SVID", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("meshd exited: %v", err)
		default:
		}
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return false
		}
		defer conn.Close()
		cs := conn.ConnectionState()
		served = &cs
		return true
	})
	if u := served.PeerCertificates[0].URIs; len(u) != 1 || u[0].String() != registryID {
		t.Errorf("meshd's agent port presents %v, want its SVID %s", u, registryID)
	}

	opus := s.FetchSVID(t, opusID)
	if opus.Leaf.Subject.CommonName != "" {
		t.Fatalf("the SVID has the CN %q; this test is about CN-less SVIDs", opus.Leaf.Subject.CommonName)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{opus}, InsecureSkipVerify: true}}}
	post := func(id string) (int, string) {
		body, _ := json.Marshal(map[string]any{"agent_id": id, "name": id, "version": "1.0.0", "http_host": "127.0.0.1", "http_port": 9443})
		resp, err := c.Post("https://"+addr+"/heartbeat", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST /heartbeat as %s: %v", id, err)
		}
		defer resp.Body.Close()
		var r struct{ Reason string }
		json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r.Reason
	}
	if code, reason := post("zed"); code != http.StatusForbidden || reason != "identity_mismatch" {
		t.Errorf("opus's SVID registering zed: %d %s, want 403 identity_mismatch", code, reason)
	}
	if code, reason := post("opus"); code != http.StatusOK {
		t.Errorf("opus's CN-less SVID registering opus with the chart's spire values: %d %s, want 200", code, reason)
	}
}
