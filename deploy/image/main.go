// Command image assembles meshtrust's container image as an OCI image
// layout (a directory `skopeo`, `crane`, `podman load` or a registry push
// tool takes), with no Docker daemon and no base image to pull: one layer
// holding meshd and meshctl (static, CGO_ENABLED=0 builds), a passwd and
// group naming the non-root user 65532 ("nonroot", as distroless names
// it), /tmp, and an empty /var/lib/meshtrust for the data volume. The
// config runs meshd as 65532:65532, so the image works with a read-only
// root filesystem and runAsNonRoot.
//
// Every byte is fixed by its inputs: file times are SOURCE_DATE_EPOCH (0
// when unset), tar headers carry no user names, gzip no name or time, and
// JSON is written in one order, so the same binaries give the same image
// digest.
//
//	go run ./deploy/image -meshd bin/meshd -meshctl bin/meshctl -out image -tag 0.1.0
//
// scripts/image.sh builds the binaries and runs it.
//
// With -cgo it assembles the variant whose binaries are cgo builds
// (CGO_ENABLED=1), which is what PKCS#11 needs: a vendor's module is
// loaded with dlopen. The layer then also carries the dynamic loader and
// every shared library `ldd` lists for the two binaries, each at the path
// ldd names, so a module mounted into the container (with its own
// libraries) can be loaded:
//
//	go run ./deploy/image -cgo -meshd bin/meshd -meshctl bin/meshctl -out image-pkcs11 -tag 0.1.0-pkcs11
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
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// User is the image's non-root user and group id.
const User = 65532

// Media types of the OCI image spec.
const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Platform is a descriptor's platform.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Index is an OCI image index (index.json of a layout).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// Config is an OCI image configuration.
type Config struct {
	Created      string    `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       RunConfig `json:"config"`
	RootFS       RootFS    `json:"rootfs"`
	History      []History `json:"history"`
}

// RunConfig is how a container of the image runs.
type RunConfig struct {
	User         string              `json:"User"`
	Env          []string            `json:"Env"`
	Entrypoint   []string            `json:"Entrypoint"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts"`
	Volumes      map[string]struct{} `json:"Volumes"`
	Labels       map[string]string   `json:"Labels"`
}

// RootFS lists the layers' uncompressed digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// History is one step of how the image was made.
type History struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// Options are what an image is made of.
type Options struct {
	// Meshd and Meshctl are the paths of the static binaries.
	Meshd, Meshctl string
	// Tag names the image in the layout's index.
	Tag string
	// Arch is the binaries' GOARCH.
	Arch string
	// Epoch is every file's time and the image's creation time.
	Epoch time.Time
	// Libs are the absolute paths of the shared libraries and the
	// dynamic loader the binaries need (cgo builds; see SharedLibs),
	// each carried at its own path with the content it resolves to. Nil
	// for static binaries.
	Libs []string
}

func main() {
	var o Options
	out := flag.String("out", "", "directory to write the OCI image layout to (must not exist)")
	flag.StringVar(&o.Meshd, "meshd", "", "the static meshd binary")
	flag.StringVar(&o.Meshctl, "meshctl", "", "the static meshctl binary")
	flag.StringVar(&o.Tag, "tag", "dev", "the image's tag in the layout")
	flag.StringVar(&o.Arch, "arch", "amd64", "the binaries' architecture (GOARCH)")
	cgo := flag.Bool("cgo", false, "the binaries are cgo builds (PKCS#11): carry the dynamic loader and the shared libraries ldd lists for them")
	flag.Parse()
	epoch, err := sourceDateEpoch()
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(2)
	}
	o.Epoch = epoch
	if *out == "" || o.Meshd == "" || o.Meshctl == "" {
		fmt.Fprintln(os.Stderr, "image: -out, -meshd and -meshctl are required")
		os.Exit(2)
	}
	if *cgo {
		if o.Libs, err = SharedLibs(o.Meshd, o.Meshctl); err != nil {
			fmt.Fprintln(os.Stderr, "image:", err)
			os.Exit(1)
		}
	}
	digest, err := Write(*out, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote OCI image layout %s: meshtrust/meshd:%s, manifest %s\n", *out, o.Tag, digest)
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH (reproducible-builds.org), 0
// when unset.
func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", v)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Write writes the image layout to dir, which must not exist, and returns
// the manifest's digest.
func Write(dir string, o Options) (string, error) {
	if _, err := os.Stat(dir); err == nil {
		return "", fmt.Errorf("%s exists; remove it or choose another -out", dir)
	}
	layer, diffID, err := buildLayer(o)
	if err != nil {
		return "", err
	}
	created := o.Epoch.Format(time.RFC3339)
	made := "deploy/image: meshd and meshctl (static), passwd, group, /tmp, /var/lib/meshtrust"
	if len(o.Libs) > 0 {
		made = "deploy/image: meshd and meshctl (cgo, for PKCS#11) with their dynamic loader and shared libraries, passwd, group, /tmp, /var/lib/meshtrust"
	}
	cfg := Config{
		Created: created, Architecture: o.Arch, OS: "linux",
		Config: RunConfig{
			User:         fmt.Sprintf("%d:%d", User, User),
			Env:          []string{"PATH=/usr/local/bin"},
			Entrypoint:   []string{"/usr/local/bin/meshd"},
			WorkingDir:   "/",
			ExposedPorts: map[string]struct{}{"8000/tcp": {}},
			Volumes:      map[string]struct{}{"/var/lib/meshtrust": {}},
			Labels: map[string]string{
				"org.opencontainers.image.title":       "meshtrust",
				"org.opencontainers.image.description": "meshd and meshctl: the identity and trust plane of an agent mesh",
				"org.opencontainers.image.version":     o.Tag,
			},
		},
		RootFS:  RootFS{Type: "layers", DiffIDs: []string{diffID}},
		History: []History{{Created: created, CreatedBy: made}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	man := Manifest{SchemaVersion: 2, MediaType: mediaManifest,
		Config: descriptor(mediaConfig, cfgJSON),
		Layers: []Descriptor{descriptor(mediaLayer, layer)}}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return "", err
	}
	mdesc := descriptor(mediaManifest, manJSON)
	mdesc.Annotations = map[string]string{"org.opencontainers.image.ref.name": o.Tag}
	mdesc.Platform = &Platform{Architecture: o.Arch, OS: "linux"}
	idx, err := json.Marshal(Index{SchemaVersion: 2, MediaType: "application/vnd.oci.image.index.v1+json", Manifests: []Descriptor{mdesc}})
	if err != nil {
		return "", err
	}

	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", err
	}
	for _, b := range [][]byte{layer, cfgJSON, manJSON} {
		if err := os.WriteFile(filepath.Join(blobs, sum(b)), b, 0o644); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
		return "", err
	}
	return mdesc.Digest, nil
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func descriptor(media string, b []byte) Descriptor {
	return Descriptor{MediaType: media, Digest: "sha256:" + sum(b), Size: int64(len(b))}
}

// entry is one file of the layer.
type entry struct {
	name string
	mode int64
	uid  int
	dir  bool
	data []byte
}

// buildLayer returns the gzipped layer and the digest of its tar.
func buildLayer(o Options) (gz []byte, diffID string, err error) {
	meshd, err := readBinary(o.Meshd)
	if err != nil {
		return nil, "", err
	}
	meshctl, err := readBinary(o.Meshctl)
	if err != nil {
		return nil, "", err
	}
	// A dynamic binary without its libraries would not start, and a
	// static one needs none: the two must agree.
	for _, bin := range []string{o.Meshd, o.Meshctl} {
		dynamic, err := isDynamic(bin)
		if err != nil {
			return nil, "", err
		}
		if dynamic != (len(o.Libs) > 0) {
			if dynamic {
				return nil, "", fmt.Errorf("%s is dynamically linked (a cgo build): assemble it with -cgo, which carries its shared libraries", bin)
			}
			return nil, "", fmt.Errorf("%s is static: shared libraries were given for it (-cgo) but it loads none; build it with CGO_ENABLED=1", bin)
		}
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", User, User)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", User)
	entries := []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, uid: User, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
		{name: "usr/local/bin/meshctl", mode: 0o755, data: meshctl},
		{name: "usr/local/bin/meshd", mode: 0o755, data: meshd},
		{name: "var/", mode: 0o755, dir: true},
		{name: "var/lib/", mode: 0o755, dir: true},
		{name: "var/lib/meshtrust/", mode: 0o700, uid: User, dir: true},
	}
	if entries, err = addLibs(entries, o.Libs); err != nil {
		return nil, "", err
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: o.Epoch, Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gzBuf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gzBuf, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gzBuf.Bytes(), "sha256:" + sum(tarBuf.Bytes()), nil
}

// readBinary reads an executable the image is to hold.
func readBinary(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return nil, &fs.PathError{Op: "image", Path: path, Err: errors.New("not an executable file")}
	}
	return os.ReadFile(path)
}

// isDynamic reports whether the ELF executable at path names a dynamic
// loader (PT_INTERP): a cgo build does, a CGO_ENABLED=0 one does not.
func isDynamic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// SharedLibs runs ldd on each binary and returns the absolute paths of
// the shared libraries and the dynamic loader it lists, sorted and
// without repeats (the vDSO, which the kernel provides, is left out).
func SharedLibs(bins ...string) ([]string, error) {
	seen := map[string]bool{}
	for _, bin := range bins {
		out, err := exec.Command("ldd", bin).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", bin, err)
		}
		for line := range strings.Lines(string(out)) {
			// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
			// "/lib64/ld-linux-x86-64.so.2 (0x…)"; "linux-vdso.so.1 (0x…)"
			// has no path.
			f := strings.Fields(line)
			if i := slices.Index(f, "=>"); i >= 0 {
				f = f[i+1:]
			}
			if len(f) == 0 || !filepath.IsAbs(f[0]) {
				if strings.Contains(line, "not found") {
					return nil, fmt.Errorf("ldd %s: %s", bin, strings.TrimSpace(line))
				}
				continue
			}
			seen[filepath.Clean(f[0])] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("ldd lists no shared library for %s: are they static builds?", strings.Join(bins, ", "))
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// addLibs returns entries with each of libs (absolute paths) as a file
// of its content (through symlinks) at its own path, and the directories
// above it, sorted by name.
func addLibs(entries []entry, libs []string) ([]entry, error) {
	have := map[string]bool{}
	for _, e := range entries {
		have[e.name] = true
	}
	for _, lib := range libs {
		if !filepath.IsAbs(lib) {
			return nil, fmt.Errorf("shared library %q: an absolute path", lib)
		}
		data, err := os.ReadFile(lib)
		if err != nil {
			return nil, fmt.Errorf("shared library: %w", err)
		}
		name := strings.TrimPrefix(filepath.Clean(lib), "/")
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if !have[d+"/"] {
				have[d+"/"] = true
				entries = append(entries, entry{name: d + "/", mode: 0o755, dir: true})
			}
		}
		if !have[name] {
			have[name] = true
			entries = append(entries, entry{name: name, mode: 0o755, data: data})
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return entries, nil
}
