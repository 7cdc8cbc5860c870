// Package credentials holds the caller's own X.509 credentials — its
// certificate, key and the anchors it verifies peers against — as a live
// Source that changes in place when they rotate.
//
// A Source has one implementation per way of getting credentials: files
// on disk (package credentials/file, the MCP_MESH_TLS_CERT/KEY/CA
// variables, cert-manager mounts), this mesh's CA (credentials/enroll's
// Renewer), Vault and SPIRE. Everything that uses credentials is built on
// the interface, not on an implementation:
//
//   - ServerConfig and ClientConfig return a tls.Config that reads the
//     current certificate and roots at every handshake, so a rotation or
//     a new bundle applies to the next connection without a restart;
//   - Materialize writes the credentials to tmpfs for a process that can
//     only read files, and rewrites them on every change;
//   - Wait and Watch follow a Source without missing a change;
//   - AddRoots adds the CAs an operator names (MCP_MESH_TLS_CA) to any
//     Source's anchors, without letting them vouch for a SPIFFE ID of a
//     trust domain the Source has a bundle for.
//
// A Source implementation usually keeps a Holder, which does the
// bookkeeping of Current, Changed and Close for it.
package credentials

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/retry"
)

// Source is a live source of the caller's own X.509 credentials.
//
// Implementations follow these rules, which Holder keeps for them:
//
//   - Current returns the same *Credentials until they change, then a new
//     value; a value once returned is never modified, so callers may
//     keep it and compare pointers, and must not modify it either.
//   - Changed returns a channel that is closed when the credentials
//     returned by Current are replaced (a rotation, a new bundle) and at
//     Close. Every caller gets the same channel until then; after it is
//     closed, Changed returns a new one.
//   - Close releases what the source holds (watches, connections,
//     goroutines); after it Current returns an error wrapping ErrClosed.
//     Close is idempotent.
//
// All methods are safe for concurrent use.
type Source interface {
	// Current returns the current credentials. It never blocks on I/O, so
	// it may be called on every TLS handshake. It returns an error when
	// the source has no usable credentials: not yet (a first fetch still
	// under way; Wait for them), or no longer (ErrClosed).
	Current() (*Credentials, error)
	// Changed returns a channel that is closed at the next change of what
	// Current returns, or when the source is closed. Call it before
	// Current and wait on it after, then call both again: that order
	// never misses a change (Watch does it for you).
	Changed() <-chan struct{}
	// Close stops the source. Credentials already handed out stay valid
	// objects, but nothing updates them any more.
	Close() error
}

// Credentials are one generation of a Source's credentials. The zero
// value is not usable; a Holder refuses it.
type Credentials struct {
	// Certificate is what the caller presents: the leaf first, then its
	// intermediates, with PrivateKey set and Leaf parsed.
	Certificate tls.Certificate
	// Roots are the anchors peers are verified against: every
	// certificate a peer's chain may end at. Empty means the source has
	// none, and ServerConfig and ClientConfig then refuse every peer. A
	// SPIFFE source puts here the authorities of its own trust domain only,
	// so that consumers that know nothing of SPIFFE (Materialize, a plain
	// tls.Config) still work without trusting another trust domain's CAs
	// for every name; SPIFFE-aware consumers use Bundles.
	//
	// Roots are certificates rather than an x509.CertPool because a pool
	// cannot be listed, and Materialize must write them out; the tls.Config
	// helpers build a pool once per generation.
	Roots []*x509.Certificate
	// Bundles are the SPIFFE trust bundles by trust domain, for
	// SPIFFE-aware verification: a peer whose leaf has a SPIFFE ID is
	// verified against the bundle of its ID's trust domain only. nil for
	// sources that know nothing of SPIFFE.
	Bundles map[spiffeid.TrustDomain][]*x509.Certificate
	// OperatorRoots are CA certificates the operator added to the
	// provider's own anchors (MCP_MESH_TLS_CA with the spire, vault and
	// enroll providers; see AddRoots), so that a peer or a meshd with a
	// certificate of another CA (the mesh CA's, say) can be reached. They
	// vouch like Roots for a leaf without a SPIFFE ID, and for a leaf
	// whose SPIFFE ID's trust domain has no bundle in Bundles; never for
	// an ID of a trust domain that has one, which only that bundle
	// vouches for. Materialize writes them with Roots.
	OperatorRoots []*x509.Certificate
}

// check reports what makes c unusable.
func (c *Credentials) check() error {
	if c == nil {
		return errors.New("credentials: nil credentials")
	}
	leaf := c.Certificate.Leaf
	switch {
	case len(c.Certificate.Certificate) == 0 || leaf == nil:
		return errors.New("credentials: no parsed leaf certificate")
	case c.Certificate.PrivateKey == nil:
		return fmt.Errorf("credentials: no private key for %q", leaf.Subject.CommonName)
	}
	signer, ok := c.Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("credentials: private key of type %T cannot sign", c.Certificate.PrivateKey)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return fmt.Errorf("credentials: the private key is not the key of certificate %q (serial %x)", leaf.Subject.CommonName, leaf.SerialNumber)
	}
	return nil
}

// ErrClosed is returned, wrapped, by a Source's Current after Close.
var ErrClosed = errors.New("credentials: source closed")

// errNotReady is what a Holder's Current says before its first Set.
var errNotReady = errors.New("credentials: no credentials yet")

// NewTLSCertificate returns chain and key as a tls.Certificate: chain is
// the leaf first, then its intermediates (a root, if any, is presented
// too). It fails if chain is empty or key is not the leaf's key, so a
// source built on it never serves a pair that cannot complete a
// handshake.
func NewTLSCertificate(chain []*x509.Certificate, key crypto.Signer) (tls.Certificate, error) {
	if len(chain) == 0 {
		return tls.Certificate{}, errors.New("credentials: empty certificate chain")
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	cert := tls.Certificate{Certificate: der, PrivateKey: key, Leaf: chain[0]}
	if err := (&Credentials{Certificate: cert}).check(); err != nil {
		return tls.Certificate{}, err
	}
	return cert, nil
}

// Holder is a Source whose credentials its owner sets. A Source
// implementation keeps one and calls Set on every change; Holder keeps
// the rules of Source (same value until a change, one channel closed per
// change and at Close). The zero value is a Source with no credentials
// yet.
type Holder struct {
	mu  sync.Mutex // serialises Set and Close
	gen atomic.Pointer[generation]
}

// generation is one value of a Holder; it is replaced whole.
type generation struct {
	creds   *Credentials
	changed chan struct{} // closed when this generation is replaced
	closed  bool
}

func (h *Holder) load() *generation {
	if g := h.gen.Load(); g != nil {
		return g
	}
	g := &generation{changed: make(chan struct{})}
	if h.gen.CompareAndSwap(nil, g) {
		return g
	}
	return h.gen.Load()
}

// Set makes c the current credentials and closes the pending Changed
// channel. It refuses (and changes nothing) credentials whose key is not
// the leaf's, and any after Close.
func (h *Holder) Set(c *Credentials) error {
	if err := c.check(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.load()
	if old.closed {
		return ErrClosed
	}
	h.gen.Store(&generation{creds: c, changed: make(chan struct{})})
	close(old.changed)
	return nil
}

// View is the read side of a Holder: its Current and Changed, without
// Set and Close. A Source that keeps a Holder embeds the Holder's View, so
// that reading is the Holder's while setting and closing stay the
// Source's own.
type View struct{ h *Holder }

// View returns the read side of h.
func (h *Holder) View() View { return View{h} }

// Current returns the credentials of the Holder's last Set.
func (v View) Current() (*Credentials, error) { return v.h.Current() }

// Changed returns a channel that is closed at the Holder's next Set or at
// its Close.
func (v View) Changed() <-chan struct{} { return v.h.Changed() }

// Current returns the credentials of the last Set.
func (h *Holder) Current() (*Credentials, error) {
	g := h.load()
	switch {
	case g.closed:
		return nil, ErrClosed
	case g.creds == nil:
		return nil, errNotReady
	}
	return g.creds, nil
}

// Changed returns a channel that is closed at the next Set or at Close.
func (h *Holder) Changed() <-chan struct{} { return h.load().changed }

// Close makes Current fail with ErrClosed and wakes every waiter on
// Changed.
func (h *Holder) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.load()
	if old.closed {
		return nil
	}
	done := make(chan struct{})
	close(done)
	h.gen.Store(&generation{changed: done, closed: true})
	close(old.changed)
	return nil
}

// Wait returns src's credentials as soon as it has some: at once if
// Current succeeds, else after the changes that follow. A caller of a
// Source that may have none yet (a Holder its owner fills later, a
// Source of its own whose first fetch runs in the background) waits
// with it before it serves or materializes them. It fails when ctx
// ends (with the source's last error, so a user learns why it had none)
// or when src is closed.
func Wait(ctx context.Context, src Source) (*Credentials, error) {
	for {
		changed := src.Changed()
		c, err := src.Current()
		if err == nil {
			return c, nil
		}
		if errors.Is(err, ErrClosed) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for credentials: %w (last: %w)", ctx.Err(), err)
		case <-changed:
		}
	}
}

// Watch calls fn with src's current credentials, then again after every
// change, until ctx ends (it returns ctx.Err()), src is closed (an error
// wrapping ErrClosed) or fn fails (fn's error). Changes that follow each
// other while fn runs are seen once, as their last state. While src has
// no credentials, fn is not called.
func Watch(ctx context.Context, src Source, fn func(*Credentials) error) error {
	var last *Credentials
	for {
		changed := src.Changed()
		c, err := src.Current()
		switch {
		case errors.Is(err, ErrClosed):
			return err
		case err == nil && c != last:
			if err := fn(c); err != nil {
				return err
			}
			last = c
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// Clock tells the time and waits (Now, and After returning a channel that
// receives once d has passed). Sources that schedule work (renewal,
// debouncing) take one so that tests move time instead of sleeping; nil
// means the system clock. It is the one clock interface of the mesh's
// clients, shared with trust/watch.
type Clock = retry.Clock
