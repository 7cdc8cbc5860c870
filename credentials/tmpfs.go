package credentials

import (
	"bytes"
	"context"
	"crypto"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The names of the files Materialize writes in its directory.
const (
	certFileName = "cert.pem" // the leaf, then its intermediates
	keyFileName  = "key.pem"  // the private key, PKCS #8
	caFileName   = "ca.pem"   // the roots; empty when the source has none
)

// The environment variables Files.Env sets: the seed's, which MCP Mesh
// agents read.
const (
	EnvCert = "MCP_MESH_TLS_CERT"
	EnvKey  = "MCP_MESH_TLS_KEY"
	EnvCA   = "MCP_MESH_TLS_CA"
)

// Files are a Source's credentials written out for a process that can
// only read files, kept current by Materialize until Close.
type Files struct {
	// Dir is the private directory (0700) that holds the files.
	Dir string
	// CertFile, KeyFile and CAFile are the paths of the certificate
	// chain (cert.pem), the private key (key.pem, PKCS #8) and the roots
	// (ca.pem: Roots, then OperatorRoots; empty when the source has
	// none), each 0600. A process reading ca.pem knows nothing of SPIFFE
	// and lets every CA in it vouch for every name: that is why a SPIFFE
	// source's Roots hold its own trust domain's authorities only, and
	// the operator's added CAs are the operator's explicit choice.
	CertFile, KeyFile, CAFile string

	stop    context.CancelFunc
	done    chan struct{} // closed when the directory is gone
	mu      sync.Mutex
	err     error         // from removing the directory
	wrote   chan struct{} // closed at the next rewrite, then replaced
	log     *slog.Logger
	last    *Credentials // the credentials last written
	written [3][]byte    // the contents last written, to skip no-op rewrites
}

// MaterializeOption changes how Materialize writes.
type MaterializeOption func(*materializeConfig)

type materializeConfig struct {
	base string
	log  *slog.Logger
}

// MaterializeIn writes the directory under base instead of /dev/shm: for
// a host whose tmpfs is mounted elsewhere (a container's own tmpfs
// volume, /run/user/<uid>). A base on a disk rather than tmpfs puts the
// private key on that disk.
func MaterializeIn(base string) MaterializeOption {
	return func(c *materializeConfig) { c.base = base }
}

// MaterializeLogger receives rewrites and their failures; the default
// discards them. Neither a key nor a certificate's contents are logged.
func MaterializeLogger(l *slog.Logger) MaterializeOption {
	return func(c *materializeConfig) { c.log = l }
}

// Materialize writes src's credentials for agentID into a new private
// directory and rewrites them on every change of src, until ctx ends or
// Close is called; then it removes the directory.
//
// The directory is <base>/meshtrust-<agent>-<pid>-<random>, created 0700,
// where base is /dev/shm (tmpfs, so the key never reaches a disk) when
// it can be written, else os.TempDir(). The random part keeps the name
// from being guessed: another user of a shared /dev/shm cannot create it
// first to catch the key. Each file is 0600 and replaced atomically, the
// key before the certificate, so a reader sees whole files; a reader that
// loads the two while a new key is being written may find a certificate
// that is not its key's yet, and should read again at its next change
// (the file source does).
//
// Only paths are meant to be handed on (Env): never put a key or a PEM
// in an environment variable, which every child inherits and /proc shows.
//
// Materialize fails if src has no credentials (Wait first for a source
// that fetches them) or the first write fails. A later write that fails
// is logged and tried again at the next change. To remove the files when
// the process is told to stop, derive ctx from the signals:
//
//	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
//	defer stop()
//	files, err := credentials.Materialize(ctx, src, "opus")
//	...
//	<-ctx.Done()
//	files.Close() // waits until the directory is gone
func Materialize(ctx context.Context, src Source, agentID string, opts ...MaterializeOption) (*Files, error) {
	cfg := materializeConfig{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	if err := identity.ValidateID(agentID); err != nil {
		return nil, fmt.Errorf("credentials: materialize: agent id: %w", err)
	}
	c, err := src.Current()
	if err != nil {
		return nil, fmt.Errorf("credentials: materialize %s: %w", agentID, err)
	}
	dir, err := privateDir(cfg.base, agentID, cfg.log)
	if err != nil {
		return nil, fmt.Errorf("credentials: materialize %s: %w", agentID, err)
	}
	f := &Files{
		Dir:      dir,
		CertFile: filepath.Join(dir, certFileName),
		KeyFile:  filepath.Join(dir, keyFileName),
		CAFile:   filepath.Join(dir, caFileName),
		done:     make(chan struct{}),
		wrote:    make(chan struct{}),
		log:      cfg.log.With("dir", dir),
	}
	if err := f.write(c); err != nil {
		return nil, errors.Join(fmt.Errorf("credentials: materialize %s: %w", agentID, err), os.RemoveAll(dir))
	}
	ctx, f.stop = context.WithCancel(ctx)
	go f.follow(ctx, src)
	return f, nil
}

// privateDir creates the directory under base, or under /dev/shm then
// os.TempDir() when base is "". MkdirTemp creates it 0700 and fails
// rather than reuse a directory that is already there.
func privateDir(base, agentID string, log *slog.Logger) (string, error) {
	pattern := fmt.Sprintf("meshtrust-%s-%d-*", agentID, os.Getpid())
	if base != "" {
		return os.MkdirTemp(base, pattern)
	}
	dir, err := os.MkdirTemp("/dev/shm", pattern)
	if err == nil {
		return dir, nil
	}
	log.Warn("cannot write to /dev/shm; the private key goes to the temporary directory, which may be on a disk", "err", err, "tmp", os.TempDir())
	return os.MkdirTemp(os.TempDir(), pattern)
}

// follow rewrites the files on every change until ctx ends, then removes
// them.
func (f *Files) follow(ctx context.Context, src Source) {
	defer close(f.done)
	err := Watch(ctx, src, func(c *Credentials) error {
		if c == f.last {
			return nil
		}
		if err := f.write(c); err != nil {
			f.log.Error("rewriting the credential files failed; the old ones stay until the next change", "err", err)
		}
		return nil
	})
	if errors.Is(err, ErrClosed) {
		f.log.Info("the credential source was closed; removing its files")
	}
	f.mu.Lock()
	f.err = os.RemoveAll(f.Dir)
	f.mu.Unlock()
}

// write writes what changed of c, the key before the certificate.
func (f *Files) write(c *Credentials) error {
	f.last = c
	key, ok := c.Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("private key of type %T cannot be written", c.Certificate.PrivateKey)
	}
	keyPEM, err := pemfile.MarshalKey(key)
	if err != nil {
		return err
	}
	var certPEM []byte
	for _, der := range c.Certificate.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	files := [3]struct {
		path string
		data []byte
	}{{f.KeyFile, keyPEM}, {f.CertFile, certPEM}, {f.CAFile, pemfile.EncodeCerts(append(slices.Clone(c.Roots), c.OperatorRoots...)...)}}
	var changed []string
	for i, w := range files {
		if f.written[i] != nil && bytes.Equal(f.written[i], w.data) {
			continue
		}
		if err := pemfile.WriteAtomic(w.path, w.data, 0o600); err != nil {
			return err
		}
		f.written[i] = w.data
		changed = append(changed, filepath.Base(w.path))
	}
	if len(changed) == 0 {
		return nil
	}
	f.mu.Lock()
	close(f.wrote)
	f.wrote = make(chan struct{})
	f.mu.Unlock()
	f.log.Info("wrote credential files", "files", changed, "subject", c.Certificate.Leaf.Subject.CommonName, "serial", fmt.Sprintf("%x", c.Certificate.Leaf.SerialNumber), "not_after", c.Certificate.Leaf.NotAfter)
	return nil
}

// Env returns the seed's variables naming the files, for a child
// process's environment (exec.Cmd.Env). They hold paths only.
func (f *Files) Env() []string {
	return []string{EnvCert + "=" + f.CertFile, EnvKey + "=" + f.KeyFile, EnvCA + "=" + f.CAFile}
}

// Rewritten returns a channel that is closed the next time the files
// are rewritten after a change of the source: the moment to tell the
// process that reads them to load them again (with a SIGHUP, say).
func (f *Files) Rewritten() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wrote
}

// Close stops following the source, removes the directory and waits
// until it is gone. It is idempotent.
func (f *Files) Close() error {
	f.stop()
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return fmt.Errorf("credentials: remove %s: %w", f.Dir, f.err)
	}
	return nil
}
