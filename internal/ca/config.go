// Package ca is the mesh certificate authority: an offline root, an online
// intermediate with a prepared and an active slot, CSR signing under
// per-profile policy, revocation and CRL building.
//
// The root directory holds only the root certificate and key, so it can be
// moved offline once the intermediate exists. Everything else lives in the
// CA directory:
//
//	<root-dir>/ca.crt, ca.key              self-signed root
//	<ca-dir>/intermediate/int.crt, int.key active intermediate
//	<ca-dir>/intermediate/chain.pem        active intermediate + root
//	<ca-dir>/intermediate/bundle.pem       root + every live intermediate
//	<ca-dir>/intermediate/root.crt         copy of the root certificate
//	<ca-dir>/intermediate/roots/<id>.crt   roots a root rollover replaced
//	<ca-dir>/intermediate/keys/<id>.*      every intermediate ever issued
//	<ca-dir>/intermediate/state.json       which one is active / prepared
//	<ca-dir>/crl.pem                       one CRL per live intermediate
//	<ca-dir>/issued/<node-id>.crt, .key    a node's certificate (older CAs: <node-id>.mesh.crt)
//	<ca-dir>/issued/<cn>.crt, .key         agents' and users' (opus@ct111, alice@external)
//	<ca-dir>/meshtrust.db                  the store (certs, revocations, audit)
package ca

import (
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Errors callers branch on.
var (
	// ErrExists reports an attempt to create what already exists (a root).
	ErrExists = errors.New("ca: already exists")
	// ErrNotInitialized reports a missing root or intermediate.
	ErrNotInitialized = errors.New("ca: not initialized")
	// ErrKeyMissing reports a key file that is not there; it is
	// pemfile.ErrMissing, so either name matches.
	ErrKeyMissing = pemfile.ErrMissing
	// ErrKeyPermissions reports a key file or directory others can access;
	// it is pemfile.ErrPermissions.
	ErrKeyPermissions = pemfile.ErrPermissions
	// ErrPolicy reports a request the signing policy refuses.
	ErrPolicy = errors.New("ca: refused by policy")
	// ErrBadCSR reports a certificate request that does not parse or whose
	// signature does not verify.
	ErrBadCSR = errors.New("ca: bad certificate request")
	// ErrUnknownCert reports a serial or name the CA never issued.
	ErrUnknownCert = errors.New("ca: no such certificate")
	// ErrAlreadyRevoked reports a revocation of a revoked certificate or
	// identity.
	ErrAlreadyRevoked = errors.New("ca: already revoked")
	// ErrRevoked reports a certificate refused because its identity (or
	// its node) is revoked, its key was revoked for keyCompromise, or the
	// certificate of the holder asking for it was revoked.
	ErrRevoked = errors.New("ca: revoked")
	// ErrNotRevoked reports a reinstatement of an identity that is not
	// revoked.
	ErrNotRevoked = errors.New("ca: not revoked")
	// ErrNoPrepared reports an activation with no prepared intermediate.
	ErrNoPrepared = errors.New("ca: no prepared intermediate")
	// ErrUnknownIntermediate reports a key id that names none of the
	// CA's intermediates.
	ErrUnknownIntermediate = errors.New("ca: no such intermediate")
	// ErrIntermediateSlot reports a taint or revocation of an
	// intermediate in a state that does not allow it: the active one
	// (activate a new one first), a prepared one, one not tainted before
	// its revocation.
	ErrIntermediateSlot = errors.New("ca: not allowed in the intermediate's state")
	// ErrLiveLeaves reports a revocation of an intermediate that still
	// has unexpired, unrevoked leaves.
	ErrLiveLeaves = errors.New("ca: the intermediate still has live certificates")
)

// Default lifetimes.
const (
	DefaultLeafTTL         = 90 * 24 * time.Hour
	DefaultRenewAfter      = 60 * 24 * time.Hour
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateTTL = 5 * 365 * 24 * time.Hour
	DefaultCRLValidity     = 7 * 24 * time.Hour
	DefaultTaintWindow     = 5 * time.Minute
	// backdate absorbs clock skew between the CA and the peers that verify
	// what it issues.
	backdate = time.Minute
)

// Config configures the CA. The zero value of every field but RootDir and
// Dir selects its default.
type Config struct {
	// RootDir holds the root certificate and key.
	RootDir string
	// Dir holds the intermediates, issued certificates, CRL and store.
	Dir string
	// TrustDomain is the SPIFFE trust domain written into every leaf's
	// SPIFFE ID; default "mesh.local". It is recorded when the first
	// intermediate is issued, and an open CA uses the recorded one.
	TrustDomain string
	// KeyType is the type of keys the CA generates; default ECDSA P-256.
	KeyType KeyType
	// LeafTTL is the lifetime of node, agent and client certificates.
	LeafTTL time.Duration
	// RenewAfter is the age at which a leaf is due for renewal; it is
	// reported as "expiring" from then on.
	RenewAfter      time.Duration
	RootTTL         time.Duration
	IntermediateTTL time.Duration
	// CRLValidity is the distance between a CRL's this-update and
	// next-update.
	CRLValidity time.Duration
	// TaintWindow spreads the renewals an intermediate's taint asks
	// for: a leaf of a tainted intermediate is due at the taint plus a
	// share of TaintWindow drawn from its serial (RenewAt); default
	// DefaultTaintWindow.
	TaintWindow time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// After is how the CA's long-running parts (the CRL refresher) wait:
	// a channel that receives once d has passed on Now's clock; default
	// time.After.
	After func(d time.Duration) <-chan time.Time
	// Rand is the source of keys and serials; default crypto/rand.
	Rand io.Reader
	// Progress, when not nil, is told each step of an intermediate's
	// issuance, preparation or activation as it begins ("generating the
	// intermediate's key"), for a person watching; nil tells no one.
	Progress func(step string)
	// PKCS11, when configured, is the token the CA generates its keys on
	// and loads the keys its references name from (see PKCS11).
	PKCS11 PKCS11
}

func (c Config) withDefaults() Config {
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.KeyType == "" {
		c.KeyType = KeyECDSAP256
	}
	if c.LeafTTL == 0 {
		c.LeafTTL = DefaultLeafTTL
	}
	if c.TaintWindow <= 0 {
		c.TaintWindow = DefaultTaintWindow
	}
	if c.RenewAfter == 0 {
		c.RenewAfter = c.LeafTTL * 2 / 3
	}
	if c.RootTTL == 0 {
		c.RootTTL = DefaultRootTTL
	}
	if c.IntermediateTTL == 0 {
		c.IntermediateTTL = DefaultIntermediateTTL
	}
	if c.CRLValidity == 0 {
		c.CRLValidity = DefaultCRLValidity
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.After == nil {
		c.After = time.After
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	return c
}

func (c Config) trustDomain() (spiffeid.TrustDomain, error) {
	return spiffeid.TrustDomainFromString(c.TrustDomain)
}

// Paths of the files the CA keeps.
func (c Config) rootCertPath() string { return filepath.Join(c.RootDir, "ca.crt") }
func (c Config) rootKeyPath() string  { return filepath.Join(c.RootDir, "ca.key") }
func (c Config) intDir() string       { return filepath.Join(c.Dir, "intermediate") }
func (c Config) intKeysDir() string   { return filepath.Join(c.intDir(), "keys") }
func (c Config) statePath() string    { return filepath.Join(c.intDir(), "state.json") }
func (c Config) rootCopyPath() string { return filepath.Join(c.intDir(), "root.crt") }

// oldRootsDir keeps the roots a new root replaced in rootCopyPath (a root
// rollover), <key id>.crt each: their intermediates stay trusted.
func (c Config) oldRootsDir() string { return filepath.Join(c.intDir(), "roots") }

// RootCRLPath is the root-signed CRL of the revoked intermediates, which
// crl.pem carries too; it exists once one was revoked where the root key
// was at hand.
func (c Config) RootCRLPath() string    { return filepath.Join(c.intDir(), "root-crl.pem") }
func (c Config) activeCertPath() string { return filepath.Join(c.intDir(), "int.crt") }
func (c Config) activeKeyPath() string  { return filepath.Join(c.intDir(), "int.key") }

// Base paths of the CA's own keys (see saveCAKey).
func (c Config) rootKeyBase() string        { return filepath.Join(c.RootDir, "ca") }
func (c Config) activeKeyBase() string      { return filepath.Join(c.intDir(), "int") }
func (c Config) lockPath() string           { return filepath.Join(c.Dir, ".lock") }
func (c Config) issuedPath(n string) string { return filepath.Join(c.Dir, "issued", n) }

// ChainPath is the active intermediate followed by the root, the chain a
// leaf presents after itself.
func (c Config) ChainPath() string { return filepath.Join(c.intDir(), "chain.pem") }

// BundlePath is the root and every live intermediate: what verifiers trust.
func (c Config) BundlePath() string { return filepath.Join(c.intDir(), "bundle.pem") }

// CRLPath is the PEM file of CRLs, one per live intermediate.
func (c Config) CRLPath() string { return filepath.Join(c.Dir, "crl.pem") }

// StorePath is the embedded store's database file.
func (c Config) StorePath() string { return filepath.Join(c.Dir, "meshtrust.db") }

// IssuedCertPath is where a generated certificate for common name cn goes:
// issued/<cn>.crt, and for a node, as the seed lays it out,
// issued/<node-id>.crt (see issuedBase).
func (c Config) IssuedCertPath(cn string) string { return c.issuedPath(c.issuedBase(cn) + ".crt") }

// IssuedKeyPath is where a generated key for common name cn goes, beside
// its certificate.
func (c Config) IssuedKeyPath(cn string) string { return c.issuedPath(c.issuedBase(cn) + ".key") }

// issuedBase is the file name, without extension, of cn's issued
// certificate and key. A node's files are named for its node id, except in
// a CA directory an older meshtrust made: there they were named for the
// common name (ct111.mesh.crt), and they keep that name (renewals included)
// as long as neither new-style file exists, so what is configured to read
// them keeps working. The certificate and key always share one name.
func (c Config) issuedBase(cn string) string {
	id, err := identity.Parse(cn)
	if err != nil || id.Kind != identity.KindNode {
		return cn
	}
	exists := func(name string) bool { return pemfile.Exists(c.issuedPath(name)) }
	if !exists(id.Node+".crt") && !exists(id.Node+".key") && (exists(cn+".crt") || exists(cn+".key")) {
		return cn
	}
	return id.Node
}

// RootCertPath is the root certificate in the root directory.
func (c Config) RootCertPath() string { return c.rootCertPath() }

// step tells c.Progress that step begins.
func (c Config) step(step string) {
	if c.Progress != nil {
		c.Progress(step)
	}
}
