package meshd

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The files of a kubernetes.io/tls Secret as the kubelet mounts it, in
// the shape cert-manager's CA issuer writes: the intermediate's
// certificate (its chain may follow), its key, and the CA that signed it,
// the mesh's root.
const (
	secretCertFile = "tls.crt"
	secretKeyFile  = "tls.key"
	secretRootFile = "ca.crt"
)

// Defaults of Config.CASecretResync and the watcher's debounce.
const (
	DefaultCASecretResync = time.Minute
	caSecretDebounce      = 100 * time.Millisecond
)

// ReasonCASecretUnusable is the reason /health gives while the CA Secret's
// current contents cannot be adopted and meshd signs with the
// intermediate it had.
const ReasonCASecretUnusable = "ca_secret_unusable"

// ErrCASecret reports a CA Secret whose contents cannot be the mesh's
// intermediate: unreadable, not parsing, the key not the certificate's,
// not a CA, outside its validity, or not chaining to its ca.crt or to the
// mesh's root.
var ErrCASecret = errors.New("unusable CA Secret")

// caSecret is one version of the Secret's contents, checked.
type caSecret struct {
	cert *x509.Certificate // the intermediate
	key  crypto.Signer
	root *x509.Certificate
}

// secretVersion is the digest of the three files' bytes, which tells one
// version of the Secret from another.
type secretVersion [sha256.Size]byte

// readSecretFiles reads the Secret's three files from one version of it:
// the kubelet swaps a ..data link to a new directory when the Secret
// changes, and reading through one resolution of it keeps a certificate
// from being paired with the next version's key. A plain directory (no
// ..data) is read as it is.
func readSecretFiles(dir string) (certPEM, keyPEM, rootPEM []byte, v secretVersion, err error) {
	base := dir
	if d, lerr := filepath.EvalSymlinks(filepath.Join(dir, "..data")); lerr == nil {
		base = d
	}
	// The key may be readable by the pod's group: the kubelet adds the
	// group's read bit to a Secret volume's files for fsGroup. Others
	// must have no access, nor the group write.
	kp := filepath.Join(base, secretKeyFile)
	fi, err := os.Stat(kp)
	if err != nil {
		return nil, nil, nil, v, fmt.Errorf("%w: %s: %w", ErrCASecret, filepath.Join(dir, secretKeyFile), err)
	}
	if perm := fi.Mode().Perm(); perm&0o027 != 0 {
		return nil, nil, nil, v, fmt.Errorf("%w: %s has mode %04o: others may read or the group write the intermediate's key; mount the Secret with defaultMode 0400", ErrCASecret, filepath.Join(dir, secretKeyFile), perm)
	}
	files := make([][]byte, 3)
	h := sha256.New()
	for i, name := range []string{secretCertFile, secretKeyFile, secretRootFile} {
		if files[i], err = os.ReadFile(filepath.Join(base, name)); err != nil {
			return nil, nil, nil, v, fmt.Errorf("%w: %s: %w", ErrCASecret, filepath.Join(dir, name), err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(files[i]))
		h.Write(files[i])
	}
	copy(v[:], h.Sum(nil))
	return files[0], files[1], files[2], v, nil
}

// parseCASecret checks one version of the Secret's contents at now: the
// first certificate of tls.crt is a CA certificate valid at now, tls.key
// is its key, and it chains to ca.crt, a self-signed CA certificate. That
// it is the mesh's root is the adopter's check (ca.AdoptIntermediate) and
// the watcher's.
func parseCASecret(dir string, certPEM, keyPEM, rootPEM []byte, now time.Time) (*caSecret, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrCASecret, dir, fmt.Sprintf(format, args...))
	}
	chain, err := pemfile.ParseCerts(certPEM)
	if err != nil {
		return nil, bad("%s: %v", secretCertFile, err)
	}
	roots, err := pemfile.ParseCerts(rootPEM)
	if err != nil {
		return nil, bad("%s: %v", secretRootFile, err)
	}
	if len(roots) != 1 {
		return nil, bad("%s holds %d certificates; want the mesh's root alone", secretRootFile, len(roots))
	}
	key, err := pemfile.ParseKey(keyPEM)
	if err != nil {
		return nil, bad("%s: %v", secretKeyFile, err)
	}
	s := &caSecret{cert: chain[0], key: key, root: roots[0]}
	if !s.root.IsCA || s.root.CheckSignatureFrom(s.root) != nil {
		return nil, bad("%s is not a self-signed CA certificate (subject %q); want the mesh's root", secretRootFile, s.root.Subject)
	}
	if !s.cert.IsCA || s.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, bad("%s (subject %q) is not a CA certificate that may sign certificates", secretCertFile, s.cert.Subject)
	}
	if bytes.Equal(s.cert.Raw, s.root.Raw) {
		return nil, bad("%s is the root itself; want an intermediate the root signed", secretCertFile)
	}
	if now.Before(s.cert.NotBefore) || now.After(s.cert.NotAfter) {
		return nil, bad("%s (subject %q) is valid from %s to %s, not now", secretCertFile, s.cert.Subject, s.cert.NotBefore.UTC().Format(time.RFC3339), s.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(s.cert.PublicKey) {
		return nil, bad("%s is not the key of %s (subject %q)", secretKeyFile, secretCertFile, s.cert.Subject)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.root)
	if _, err := s.cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, bad("%s (subject %q) does not chain to %s (subject %q): %v", secretCertFile, s.cert.Subject, secretRootFile, s.root.Subject, err)
	}
	return s, nil
}

// AdoptCASecret makes the intermediate of the Secret mounted at dir the
// CA's active one, in st and in cfg.Dir (meshd --ca-from-secret, at
// start): a bad Secret is an error that names the file and what is wrong,
// and changes nothing.
func AdoptCASecret(ctx context.Context, cfg ca.Config, st store.Store, dir string) error {
	certPEM, keyPEM, rootPEM, _, err := readSecretFiles(dir)
	if err != nil {
		return err
	}
	now := time.Now()
	if cfg.Now != nil {
		now = cfg.Now()
	}
	s, err := parseCASecret(dir, certPEM, keyPEM, rootPEM, now)
	if err != nil {
		return err
	}
	return adoptCASecret(ctx, cfg, st, s)
}

// adoptCASecret makes s the CA's active intermediate through
// ca.AdoptIntermediate, which records the state in st and the key in
// cfg.Dir. The key is handed over in a private file of its own: the
// Secret's may be readable by the pod's group (fsGroup), which a CA key
// file never is.
func adoptCASecret(ctx context.Context, cfg ca.Config, st store.Store, s *caSecret) error {
	if err := pemfile.MkdirPrivate(cfg.Dir); err != nil {
		return err
	}
	stage, err := os.MkdirTemp(cfg.Dir, ".adopt-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	base := filepath.Join(stage, "tls")
	if err := pemfile.WriteKey(base+".key", s.key); err != nil {
		return err
	}
	if _, err := ca.AdoptIntermediate(ctx, cfg, st, s.root, s.cert, base); err != nil {
		return fmt.Errorf("%w: %w", ErrCASecret, err)
	}
	return nil
}

// caSecretWatcher follows the CA Secret mounted in a directory: on a
// change (fsnotify on the directory, where the kubelet swaps its ..data
// link) and every resync as a backstop, it reads the files and adopts a
// new version. A version it cannot use leaves the current intermediate
// signing, and meshd degraded until a good one comes.
type caSecretWatcher struct {
	dir              string
	resync, debounce time.Duration
	now              func() time.Time
	log              *slog.Logger
	// root is the mesh's root; a Secret's ca.crt must be it.
	root func() *x509.Certificate
	// adopt makes s the active intermediate, here and in the store.
	adopt func(ctx context.Context, s *caSecret) error

	// Owned by run's goroutine alone: the version adopted last, and the
	// last version its checks refused (not read again until it changes).
	current, refused secretVersion

	// Read from any goroutine (/health, scrapes); written by run.
	degraded   atomic.Pointer[meshapi.Degradation]
	rejections atomic.Int64
}

// degradation is the watcher's entry of /health's degraded list.
func (w *caSecretWatcher) degradation() []meshapi.Degradation {
	if d := w.degraded.Load(); d != nil {
		return []meshapi.Degradation{*d}
	}
	return nil
}

// run follows the directory until ctx ends. The watch is set up before
// the first check, so a change made meanwhile is not missed.
func (w *caSecretWatcher) run(ctx context.Context) {
	fw, err := fsnotify.NewWatcher()
	if err == nil {
		if err = fw.Add(w.dir); err != nil {
			fw.Close()
		}
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if err != nil {
		w.log.Warn("cannot watch the CA Secret's directory; meshd reads it every resync only", "dir", w.dir, "resync", w.resync, "err", err)
	} else {
		defer fw.Close()
		events, errs = fw.Events, fw.Errors
	}
	tick := time.NewTicker(w.resync)
	defer tick.Stop()
	w.check(ctx)
	var due <-chan time.Time // non-nil while a read is scheduled
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
			if due == nil {
				due = time.After(w.debounce)
			}
		case err := <-errs:
			// An overflow loses events: read the files again to be sure.
			w.log.Warn("watching the CA Secret's directory", "dir", w.dir, "err", err)
			if due == nil {
				due = time.After(w.debounce)
			}
		case <-due:
			due = nil
			w.check(ctx)
		case <-tick.C:
			w.check(ctx)
		}
	}
}

// check reads the Secret and adopts a version it has not adopted yet.
func (w *caSecretWatcher) check(ctx context.Context) {
	certPEM, keyPEM, rootPEM, v, err := readSecretFiles(w.dir)
	if err != nil {
		w.fail(err) // retried at every change and resync
		return
	}
	switch v {
	case w.current:
		w.degraded.Store(nil)
		return
	case w.refused:
		return // reported once; waits for the next version
	}
	s, err := parseCASecret(w.dir, certPEM, keyPEM, rootPEM, w.now())
	if err == nil {
		if root := w.root(); root != nil && !bytes.Equal(root.Raw, s.root.Raw) {
			err = fmt.Errorf("%w %s: %s (subject %q) is not the mesh's root (subject %q)", ErrCASecret, w.dir, secretRootFile, s.root.Subject, root.Subject)
		}
	}
	if err != nil {
		w.refused = v
		w.rejections.Add(1)
		w.fail(err)
		return
	}
	if err := w.adopt(ctx, s); err != nil {
		// Perhaps the store is away: tried again at the next resync.
		w.rejections.Add(1)
		w.fail(err)
		return
	}
	w.current, w.refused = v, secretVersion{}
	w.degraded.Store(nil)
	w.log.Info("adopted the intermediate of the CA Secret", "dir", w.dir, "subject", s.cert.Subject.CommonName, "not_after", s.cert.NotAfter)
}

func (w *caSecretWatcher) fail(err error) {
	if w.degraded.Load() == nil {
		w.degraded.Store(&meshapi.Degradation{Component: "CA secret " + w.dir, Reason: ReasonCASecretUnusable, Since: w.now()})
	}
	w.log.Error("the CA Secret's contents cannot be used; meshd keeps signing with its current intermediate", "dir", w.dir, "err", err)
}

// newCASecretWatcher returns the watcher of cfg.CASecretDir, adopting into
// authority and reloading this meshd's CA at once: another replica that
// adopted the same version first wrote the only ca.rotated event, which
// this one may have applied before its own copy of the Secret (and so of
// the key) arrived.
func (m *Meshd) newCASecretWatcher(authority *ca.CA) *caSecretWatcher {
	return &caSecretWatcher{
		dir: m.cfg.CASecretDir, resync: cmp.Or(m.cfg.CASecretResync, DefaultCASecretResync), debounce: caSecretDebounce,
		now: m.cfg.Now, log: m.log, root: authority.Root,
		adopt: func(ctx context.Context, s *caSecret) error {
			if err := adoptCASecret(ctx, authority.Config(), m.st, s); err != nil {
				return err
			}
			return m.reloadCA(ctx)
		},
	}
}
