package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// CA is an open certificate authority: the active intermediate signs,
// every live intermediate can sign its own CRL, and the store records what
// is issued and revoked. It never reads the root key. A CA is safe for
// concurrent use.
type CA struct {
	cfg   Config
	td    spiffeid.TrustDomain
	store store.Store
	root  *x509.Certificate

	mu       sync.RWMutex
	active   *issuer
	prepared *issuer            // nil when the prepared slot is empty
	issuers  map[string]*issuer // every live intermediate whose key is here, by key id
	// trusted is every intermediate that is not revoked, key or no key.
	trusted  []*x509.Certificate
	chainPEM []byte
	// tainted holds the intermediates marked tainted, by key id, with
	// when (guarded by mu); see TaintedIssuers.
	tainted map[string]time.Time

	// What this process last wrote to crl.pem (guarded by crlMu): its
	// this-update, and the newest revocation Seq it lists. Lock order: mu
	// and crlMu are never held together; neither is held across a read
	// or write of crl.pem or the store.
	crlMu     sync.Mutex
	crlThis   time.Time
	crlRevSeq int64
	// crlServed is what crl.pem held when this process last read it for
	// the refresher (guarded by crlMu), whoever wrote it.
	crlServed servedCRL
}

// issuer is one intermediate and its key.
type issuer struct {
	id   string
	cert *x509.Certificate
	key  crypto.Signer
}

// Open opens the CA in cfg.Dir with st as its store. The trust domain is
// the one recorded when the first intermediate was issued.
func Open(ctx context.Context, cfg Config, st store.Store) (*CA, error) {
	cfg = cfg.withDefaults()
	c := &CA{cfg: cfg, store: st}
	if err := c.Reload(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload rereads the intermediates from the store, picking up a rotation
// done by another process (a replica, meshctl), and brings the CA
// directory's derived files up to date with them.
func (c *CA) Reload(ctx context.Context) error {
	s, err := loadState(ctx, c.cfg, c.store)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(s.TrustDomain)
	if err != nil {
		return fmt.Errorf("the store's CA state: trust domain: %w", err)
	}
	roots, err := localRoots(c.cfg)
	if err != nil {
		return err
	}
	if s, err = backfillRoots(ctx, c.cfg, c.store, s); err != nil {
		return err
	}
	root := roots[0]
	activeKeyID := activeID(s)
	if activeKeyID == "" {
		return fmt.Errorf("%w: the store's CA state has no active intermediate", ErrNotInitialized)
	}
	issuers := make(map[string]*issuer)
	var trusted []*x509.Certificate
	tainted := make(map[string]time.Time)
	for _, id := range liveIDs(s) {
		in, _ := s.Intermediate(id)
		cert, err := x509.ParseCertificate(in.CertDER)
		if err != nil {
			return fmt.Errorf("intermediate %s in the store: %w", id, err)
		}
		// The store alone vouches for no intermediate: one is trusted only
		// if this CA directory's root (intermediate/root.crt), or a root it
		// replaced in a rollover (intermediate/roots/), signed it,
		// and only under its own subject key id, the lowercase hex string
		// leaves record as their IssuerKeyID.
		if keyID(cert) != id {
			return fmt.Errorf("intermediate %s in the store: its certificate's key id is %s", id, keyID(cert))
		}
		if err := signedByLocalRoot(cert, roots); err != nil {
			return fmt.Errorf("intermediate %s in the store is not signed by the root %s (is the store another CA's?): %w", id, c.cfg.rootCopyPath(), err)
		}
		trusted = append(trusted, cert)
		if !in.TaintedAt.IsZero() {
			tainted[id] = in.TaintedAt
		}
		// A key on a token is found through its reference file, which
		// the state carries for a replica that has not seen it yet.
		if err := materialise(c.cfg, in); err != nil {
			return err
		}
		_, key, err := loadIntermediate(c.cfg, id)
		if err != nil {
			if id == activeKeyID {
				return keyHint(c.cfg, in, err)
			}
			continue // an intermediate whose key is not here signs no CRL from this process
		}
		issuers[id] = &issuer{id: id, cert: cert, key: key}
	}
	active := issuers[activeKeyID]
	// int.key is the copy of the active key operators see first; a mode
	// that lets others read it exposes the key as surely as on the original.
	if _, err := pemfile.ReadKey(c.cfg.activeKeyPath()); errors.Is(err, ErrKeyPermissions) {
		return err
	}
	// Bring the derived files up to date: after a change made by another
	// process, or a crash that interrupted their rewrite.
	if err := publish(c.cfg, s); err != nil {
		return err
	}
	chain, err := os.ReadFile(c.cfg.ChainPath())
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.td, c.root, c.active, c.issuers, c.trusted, c.chainPEM = td, root, active, issuers, trusted, chain
	c.tainted = tainted
	c.prepared = nil
	if id := s.InSlot(SlotPrepared); id != "" {
		c.prepared = issuers[id]
	}
	c.mu.Unlock()
	return nil
}

// Config returns the CA's configuration with defaults filled in.
func (c *CA) Config() Config { return c.cfg }

// TrustDomain returns the SPIFFE trust domain of every identity the CA
// issues.
func (c *CA) TrustDomain() spiffeid.TrustDomain {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.td
}

// Root returns the root certificate.
func (c *CA) Root() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.root
}

// Intermediates returns every live intermediate certificate: every one
// the CA's state lists that is not revoked, active first.
func (c *CA) Intermediates() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.trusted)
}

// ChainPEM returns the active intermediate followed by the root.
func (c *CA) ChainPEM() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.chainPEM
}

func (c *CA) signer() *issuer {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.active
}

// certRecord builds the store record of an issued certificate.
func certRecord(cert *x509.Certificate, kind, issuerKeyID string, now time.Time) store.Cert {
	return store.Cert{
		Serial:      cert.SerialNumber.Text(16),
		CommonName:  cert.Subject.CommonName,
		Kind:        kind,
		SANs:        SANs(cert),
		NotBefore:   cert.NotBefore.UTC(),
		NotAfter:    cert.NotAfter.UTC(),
		Fingerprint: trust.Fingerprint(cert),
		IssuerKeyID: issuerKeyID,
		PEM:         pemfile.EncodeCerts(cert),
		IssuedAt:    now.UTC(),
		KeyHash:     trust.KeyHash(cert.RawSubjectPublicKeyInfo),
	}
}

// SANs lists a certificate's subject alternative names as "DNS:x", "IP:x",
// "URI:x" and "email:x".
func SANs(cert *x509.Certificate) []string {
	var out []string
	for _, d := range cert.DNSNames {
		out = append(out, "DNS:"+d)
	}
	for _, ip := range cert.IPAddresses {
		out = append(out, "IP:"+ip.String())
	}
	for _, u := range cert.URIs {
		out = append(out, "URI:"+u.String())
	}
	for _, e := range cert.EmailAddresses {
		out = append(out, "email:"+e)
	}
	return out
}
