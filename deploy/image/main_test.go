package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildStatic builds testdata/hello, a small stand-in for meshd and
// meshctl (scripts/image.sh builds those the same way), as the image
// needs it: CGO_ENABLED=0, so static.
func buildStatic(t *testing.T, name string) string {
	t.Helper()
	return goBuild(t, name, "./testdata/hello", "0")
}

// goBuild builds pkg for linux with CGO_ENABLED=cgo, no build id, as
// name in a new directory, and returns its path.
func goBuild(t *testing.T, name, pkg, cgo string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-ldflags=-buildid=", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo, "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// readLayout checks dir is a valid OCI image layout (every blob named by
// its digest, with its descriptor's size) and returns its config and the
// files of its one layer, with their headers.
func readLayout(t *testing.T, dir string) (Config, map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	var layout struct {
		Version string `json:"imageLayoutVersion"`
	}
	readJSON(t, filepath.Join(dir, "oci-layout"), &layout)
	if layout.Version != "1.0.0" {
		t.Fatalf("oci-layout version %q", layout.Version)
	}
	var idx Index
	readJSON(t, filepath.Join(dir, "index.json"), &idx)
	if idx.SchemaVersion != 2 || len(idx.Manifests) != 1 || idx.Manifests[0].MediaType != mediaManifest {
		t.Fatalf("index.json: %+v", idx)
	}
	var man Manifest
	json.Unmarshal(blob(t, dir, idx.Manifests[0]), &man)
	if man.SchemaVersion != 2 || man.Config.MediaType != mediaConfig || len(man.Layers) != 1 || man.Layers[0].MediaType != mediaLayer {
		t.Fatalf("manifest: %+v", man)
	}
	var cfg Config
	if err := json.Unmarshal(blob(t, dir, man.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(t, dir, man.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	tarData, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(tarData)
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(s[:]) {
		t.Fatalf("diff_ids %v do not match the layer's tar", cfg.RootFS.DiffIDs)
	}
	headers, files := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(tarData))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		headers[h.Name], files[h.Name] = h, b
	}
	return cfg, headers, files
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func blob(t *testing.T, dir string, d Descriptor) []byte {
	t.Helper()
	hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok {
		t.Fatalf("digest %q", d.Digest)
	}
	b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hexDigest))
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	if hex.EncodeToString(s[:]) != hexDigest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s does not match its descriptor (size %d, want %d)", d.Digest, len(b), d.Size)
	}
	return b
}

func TestImageLayout(t *testing.T) {
	meshd, meshctl := buildStatic(t, "meshd"), buildStatic(t, "meshctl")
	for _, bin := range []string{meshd, meshctl} {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked; the image has no libc", filepath.Base(bin))
			}
		}
		f.Close()
	}
	o := Options{Meshd: meshd, Meshctl: meshctl, Tag: "test", Arch: "amd64", Epoch: time.Unix(1700000000, 0).UTC()}
	dir := filepath.Join(t.TempDir(), "image")
	digest, err := Write(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	cfg, headers, files := readLayout(t, dir)
	if cfg.Config.User != "65532:65532" || cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("config: user %q os %q arch %q; want 65532:65532, linux, amd64", cfg.Config.User, cfg.OS, cfg.Architecture)
	}
	if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/usr/local/bin/meshd" {
		t.Errorf("entrypoint %v", cfg.Config.Entrypoint)
	}
	want, _ := os.ReadFile(meshd)
	if !bytes.Equal(files["usr/local/bin/meshd"], want) || headers["usr/local/bin/meshd"].Mode != 0o755 {
		t.Error("the layer's meshd is not the binary, mode 0755")
	}
	if _, ok := files["usr/local/bin/meshctl"]; !ok {
		t.Error("no meshctl in the layer")
	}
	if !strings.Contains(string(files["etc/passwd"]), "nonroot:x:65532:65532:") {
		t.Errorf("passwd names no nonroot user:\n%s", files["etc/passwd"])
	}
	if h := headers["var/lib/meshtrust/"]; h == nil || h.Uid != User || h.Mode != 0o700 {
		t.Errorf("the data directory: %+v; want 0700, owned by %d", h, User)
	}
	for name, h := range headers {
		if !h.ModTime.Equal(o.Epoch) || h.Uname != "" {
			t.Errorf("%s: time %v, user name %q; want the epoch and no name", name, h.ModTime, h.Uname)
		}
	}

	// The same inputs give the same bytes.
	again := filepath.Join(t.TempDir(), "image")
	if d2, err := Write(again, o); err != nil || d2 != digest {
		t.Errorf("a second build: digest %s, %v; want %s", d2, err, digest)
	}
	if _, err := Write(dir, o); err == nil {
		t.Error("Write over an existing layout succeeded")
	}
}

func TestNotExecutableRefused(t *testing.T) {
	f := filepath.Join(t.TempDir(), "meshd")
	os.WriteFile(f, []byte("x"), 0o644)
	if _, err := Write(filepath.Join(t.TempDir(), "image"), Options{Meshd: f, Meshctl: f, Tag: "t", Arch: "amd64"}); err == nil {
		t.Fatal("a file that is not executable went into the image")
	}
}
