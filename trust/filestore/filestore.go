// Package filestore is the "filestore" trust backend: CA certificates kept
// as PEM files in a directory (MCP_MESH_TRUST_DIR), reloaded whenever the
// directory changes.
//
// The layout:
//
//	<dir>/*.pem                 CAs that are the mesh's own (entity "")
//	<dir>/entities/<name>.pem   the CAs of partner entity <name>
//
// A partner's entity is the name of the file it was registered under, never
// a name its CA writes into its own certificate. Each file may hold several
// CA certificates (a bundle). A certificate that is not a CA and an entity
// file whose name is not a valid id are skipped with a warning; the other
// files still load.
//
// A file that cannot be read or parsed keeps the CAs of its last version
// that could, until a good version replaces them: a file written in place
// and read half-written must not evict the agents of its entity. Each bad
// version is warned about once. A file that never parsed is skipped; a
// file that is deleted is removed: only deletion removes a file's CAs, an
// emptied or unreadable file keeps them. Anything that is not a regular
// file or a link to one (a FIFO, a socket, a device) is refused without
// being read from, so a reload never blocks. Files are still best replaced
// atomically (write a temporary file, then rename it into place), as
// kubelet and cert-manager do.
package filestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// Name is the backend's name in MCP_MESH_TRUST_BACKEND.
const Name = "filestore"

// EntitiesDir is the subdirectory holding partner entity CAs.
const EntitiesDir = "entities"

// maxFileSize bounds a trust file; a CA bundle is a few kilobytes.
const maxFileSize = 1 << 20

// An Option configures a Backend.
type Option func(*Backend)

// WithLogger sets the logger that receives load warnings; the default is
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(b *Backend) { b.log = l } }

// withDebounce sets how long the Backend waits for a burst of file events to
// settle before it reloads; the default is 50ms. Tests stretch it to
// reload only when they say.
func withDebounce(d time.Duration) Option { return func(b *Backend) { b.debounce = d } }

// Backend is the filestore backend. It implements trust.Backend and
// trust.Notifier, so a trust.Chain over it drops its cached verdicts
// whenever the set of CAs changes.
type Backend struct {
	// AnchorsView serves Verify, OnChange, Entities and Certificates
	// from anchors, which only loads change.
	trust.AnchorsView
	dir      string
	anchors  *trust.Anchors
	log      *slog.Logger
	debounce time.Duration
	watcher  *fsnotify.Watcher

	// mu serializes loads and guards loaded and files.
	mu     sync.Mutex
	loaded map[string][]*x509.Certificate
	files  map[string]version // by path

	cancel   context.CancelFunc // ends watch, at Close or when New's ctx ends
	done     chan struct{}
	closeErr error // of the watcher, set before done closes
}

// New loads the CAs in dir and keeps watching it until ctx is done or Close
// is called; after either, the CAs loaded last stay in force. A missing or
// unreadable dir is an error; problems with single files are logged and
// skipped.
func New(ctx context.Context, dir string, opts ...Option) (*Backend, error) {
	anchors := trust.NewAnchors(Name)
	b := &Backend{
		AnchorsView: anchors.View(),
		dir:         filepath.Clean(dir),
		anchors:     anchors,
		log:         slog.Default(),
		debounce:    50 * time.Millisecond,
		done:        make(chan struct{}),
	}
	for _, o := range opts {
		o(b)
	}
	b.log = b.log.With("backend", Name, "dir", b.dir)
	if err := checkDir(b.dir); err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("filestore: watch %s: %w", b.dir, err)
	}
	// Watch before the first load, so no change slips between the two.
	if err := w.Add(b.dir); err != nil {
		w.Close()
		return nil, fmt.Errorf("filestore: watch %s: %w", b.dir, err)
	}
	b.watcher = w
	if err := b.Reload(); err != nil {
		w.Close()
		return nil, err
	}
	ctx, b.cancel = context.WithCancel(ctx)
	go b.watch(ctx)
	return b, nil
}

// Name returns "filestore".
func (b *Backend) Name() string { return Name }

// Reload reads the whole directory again, as on SIGHUP. It fails only when
// the directory itself cannot be read, and then keeps the CAs it had.
func (b *Backend) Reload() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := checkDir(b.dir); err != nil {
		return err
	}
	b.watchEntities()
	set, files, err := b.read()
	if err != nil {
		return err
	}
	b.files = files
	if trust.SameSets(set, b.loaded) {
		return nil
	}
	b.loaded = set
	b.anchors.Replace(set)
	b.log.Info("trust anchors loaded", "mesh_cas", len(set[""]), "entities", len(b.anchors.Entities()))
	return nil
}

// Close stops watching the directory. The CAs loaded last stay in force.
func (b *Backend) Close() error {
	b.cancel()
	<-b.done
	return b.closeErr
}

// watch reloads after each burst of events settles.
func (b *Backend) watch(ctx context.Context) {
	defer close(b.done)
	defer func() { b.closeErr = b.watcher.Close() }()
	timer := time.NewTimer(time.Hour)
	timer.Stop() // armed by the first event
	defer timer.Stop()
	// A burst that never settles still reloads after maxWait.
	maxWait := 10 * b.debounce
	var first time.Time // start of the pending burst; zero when none
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-b.watcher.Events:
			if !ok {
				return
			}
			b.log.Debug("trust dir event", "event", ev.String())
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			wait := b.debounce
			if left := maxWait - now.Sub(first); left < wait {
				wait = max(left, 0)
			}
			timer.Reset(wait)
		case err, ok := <-b.watcher.Errors:
			if !ok {
				return
			}
			// An overflow loses events: reload to catch up.
			b.log.Warn("trust dir watch error; reloading", "err", err)
			if first.IsZero() {
				first = time.Now()
			}
			timer.Reset(b.debounce)
		case <-timer.C:
			first = time.Time{}
			if err := b.Reload(); err != nil {
				b.log.Error("trust dir reload failed; keeping the CAs loaded before", "err", err)
			}
		}
	}
}

// watchEntities watches dir/entities when it exists: it may appear after
// the Backend started, or be replaced by a new directory (a Kubernetes volume
// swaps a symlink), which drops the old watch. Adding a watch that exists
// is harmless.
func (b *Backend) watchEntities() {
	p := filepath.Join(b.dir, EntitiesDir)
	fi, err := os.Stat(p)
	if err != nil || !fi.IsDir() {
		return
	}
	if err := b.watcher.Add(p); err != nil && !errors.Is(err, fsnotify.ErrClosed) {
		b.log.Warn("cannot watch entities directory; changes to it need a reload", "path", p, "err", err)
	}
}

// version is what a Backend keeps of one trust file.
type version struct {
	// certs are the CAs of the file's last version that parsed; nil when
	// none has.
	certs []*x509.Certificate
	// bad names the file's newest version that did not parse, already
	// warned about; "" when the newest version parsed.
	bad string
}

// read reads the whole set: "" for the mesh's CAs, then one name per
// entity file; and what it keeps of each file for the next read.
func (b *Backend) read() (map[string][]*x509.Certificate, map[string]version, error) {
	set := map[string][]*x509.Certificate{}
	seen := map[string]string{} // certificate fingerprint -> the file that holds it
	next := map[string]version{}

	files, err := pemFiles(b.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("filestore: read trust dir: %w", err)
	}
	for _, f := range files {
		if certs := b.load(f, "", seen, next); len(certs) > 0 {
			set[""] = append(set[""], certs...)
		}
	}

	edir := filepath.Join(b.dir, EntitiesDir)
	files, err = pemFiles(edir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return set, next, nil
	case err != nil:
		// Keep the mesh's own CAs; the entities are lost until the next
		// readable change.
		b.log.Warn("cannot read entities directory; no partner entity is trusted", "path", edir, "err", err)
		return set, next, nil
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".pem")
		if err := identity.ValidateID(name); err != nil {
			b.log.Warn("skipping entity file: its name is not a valid entity id; rename it to <id>.pem",
				"file", f, "reason", err.Error())
			continue
		}
		if certs := b.load(f, name, seen, next); len(certs) > 0 {
			set[name] = certs
		}
	}
	return set, next, nil
}

// load reads the CA certificates of one file, logging what it skips, and
// records what it read in next. A file that does not parse gives the CAs
// of its last version that did. A CA already loaded from another file is
// skipped: one CA must speak for one entity.
func (b *Backend) load(path, entity string, seen map[string]string, next map[string]version) []*x509.Certificate {
	data, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // deleted since the directory was listed
	}
	var certs []*x509.Certificate
	var problems []string
	var bad string // names this version of the file when it cannot be used
	if err != nil {
		bad = "unreadable: " + err.Error()
	} else if certs, problems, err = Parse(data); err != nil {
		sum := sha256.Sum256(data)
		bad = hex.EncodeToString(sum[:])
	}
	if err != nil {
		last := b.files[path]
		if bad != last.bad {
			if last.certs != nil {
				b.log.Warn("cannot use trust file; keeping its last good version until it is fixed",
					"file", path, "reason", err.Error())
			} else {
				b.log.Warn("skipping trust file", "file", path, "reason", err.Error())
			}
		}
		next[path] = version{certs: last.certs, bad: bad}
		certs = last.certs
	} else {
		next[path] = version{certs: certs}
		for _, p := range problems {
			b.log.Warn("skipping part of trust file", "file", path, "reason", p)
		}
	}
	out := make([]*x509.Certificate, 0, len(certs))
	for _, c := range certs {
		fp := trust.Fingerprint(c)
		if other, dup := seen[fp]; dup {
			b.log.Warn("skipping CA certificate already loaded from another file; a CA may belong to one entity only",
				"file", path, "other_file", other, "subject", c.Subject.String())
			continue
		}
		seen[fp] = path
		out = append(out, c)
	}
	if len(out) == 0 && len(problems) > 0 {
		b.log.Warn("trust file holds no usable CA certificate", "file", path, "entity", entity)
	}
	return out
}

// Parse parses a trust file: one or more PEM CERTIFICATE blocks, each a CA
// certificate. Text around the blocks is ignored, as OpenSSL writes it.
// It returns the CA certificates and, for each block it skipped, why: a
// certificate that is not a CA, or a block that is not a certificate. It
// fails when the file holds no PEM block, when a block is cut short or
// damaged, or when a certificate block does not parse: a damaged file is
// skipped whole, never loaded in part.
func Parse(data []byte) (certs []*x509.Certificate, skipped []string, err error) {
	n := 0
	for {
		start := blockStart(data, 0)
		if start < 0 {
			break
		}
		n++
		data = data[start:]
		b, rest := pem.Decode(data)
		// pem.Decode passes over a block it cannot read and returns the
		// next one, if any: a file read half-written ends in such a block.
		if b == nil || blockStart(data[:len(data)-len(rest)], 1) >= 0 {
			return nil, nil, fmt.Errorf("block %d is incomplete or damaged (a file read while it was written in place?)", n)
		}
		data = rest
		if b.Type != "CERTIFICATE" {
			// Never the block's content: it may be a private key.
			skipped = append(skipped, fmt.Sprintf("block %d is a %s, not a CERTIFICATE; a trust file should hold certificates only", n, safeType(b.Type)))
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %d does not parse: %w", n, err)
		}
		if !c.BasicConstraintsValid || !c.IsCA {
			skipped = append(skipped, fmt.Sprintf("certificate %d (%q) is not a CA certificate (no basicConstraints CA:TRUE); a trust file holds CAs, not leaves", n, c.Subject.CommonName))
			continue
		}
		certs = append(certs, c)
	}
	if n == 0 {
		return nil, nil, errors.New("no PEM data: want one or more CERTIFICATE blocks")
	}
	return certs, skipped, nil
}

var pemBegin = []byte("-----BEGIN ")

// blockStart returns where the first PEM BEGIN line of data at or after
// from starts, or -1. Like encoding/pem, it counts only a BEGIN at the
// start of a line.
func blockStart(data []byte, from int) int {
	for i := from; i < len(data); i++ {
		j := bytes.Index(data[i:], pemBegin)
		if j < 0 {
			return -1
		}
		i += j
		if i == 0 || data[i-1] == '\n' {
			return i
		}
	}
	return -1
}

// safeType bounds a PEM block type for a log line.
func safeType(t string) string {
	if len(t) > 40 {
		t = t[:40] + "…"
	}
	return fmt.Sprintf("%q", t)
}

// pemFiles lists the *.pem files of dir, sorted, skipping hidden files
// (editors' and atomic writers' temporaries) and directories.
func pemFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".pem") {
			continue
		}
		out = append(out, filepath.Join(dir, name))
	}
	slices.Sort(out)
	return out, nil
}

// readFile reads a trust file, following symlinks (a Kubernetes volume
// links each file into a timestamped directory). Anything but a regular
// file (a FIFO named *.pem, a socket, a device) is refused without being
// read from: Reload holds the Backend's lock, and a read that blocks there
// would keep every later change, a deletion included, from taking effect.
func readFile(path string) ([]byte, error) {
	data, err := pemfile.ReadRegular(path, maxFileSize)
	if errors.Is(err, pemfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w; a trust file holds a few CA certificates", err)
	}
	return data, err
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("filestore: trust directory %s does not exist (set MCP_MESH_TRUST_DIR to a directory of CA .pem files)", dir)
	}
	if err != nil {
		return fmt.Errorf("filestore: trust directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("filestore: trust directory %s is not a directory (set MCP_MESH_TRUST_DIR to a directory of CA .pem files)", dir)
	}
	return nil
}
