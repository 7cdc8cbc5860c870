package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Init creates the self-signed root in cfg.RootDir: key 0600 in a 0700
// directory. It refuses to touch a directory that already holds a root
// certificate or key.
func Init(ctx context.Context, cfg Config, st store.Store) (*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	for _, p := range []string{cfg.rootCertPath(), cfg.rootKeyPath(), cfg.rootKeyBase() + ".pkcs11"} {
		if pemfile.Exists(p) {
			err := fmt.Errorf("%w: %s is present; a root is created once, ever (move it away first if you really mean to start a new CA)", ErrExists, p)
			audit(ctx, cfg, st, "ca.init", "", err)
			return nil, err
		}
	}
	if err := pemfile.MkdirPrivate(cfg.RootDir); err != nil {
		audit(ctx, cfg, st, "ca.init", "", err)
		return nil, err
	}
	key, err := newCAKey(cfg)
	if err != nil {
		return nil, err
	}
	now := cfg.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "meshtrust root CA", Organization: []string{cfg.TrustDomain}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(cfg.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	cert, err := signCA(cfg, tmpl, nil, key.Public(), key)
	if err != nil {
		return nil, err
	}
	// The key lands first: a crash in between leaves a key without a
	// certificate, which Init refuses to overwrite rather than lose.
	if err := saveCAKey(cfg, cfg.rootKeyBase(), key); err != nil {
		return nil, err
	}
	if err := pemfile.WriteAtomic(cfg.rootCertPath(), pemfile.EncodeCerts(cert), 0o644); err != nil {
		return nil, err
	}
	audit(ctx, cfg, st, "ca.init", cert.Subject.CommonName, nil, "root "+keyID(cert)+" "+string(cfg.KeyType))
	return cert, nil
}

// IssueIntermediate creates the first intermediate, signed by the root. It
// is the only operation besides PrepareIntermediate that needs the root
// key; afterwards the root directory can go offline.
func IssueIntermediate(ctx context.Context, cfg Config, st store.Store) (*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	s, err := loadState(ctx, cfg, st)
	switch {
	case err == nil:
		err := fmt.Errorf("%w: %s already has an active intermediate; use `meshctl ca rotate-intermediate prepare` to replace it", ErrExists, cfg.Dir)
		audit(ctx, cfg, st, "ca.issue-intermediate", "", err)
		return nil, err
	case !errors.Is(err, ErrNotInitialized):
		return nil, err
	}
	if _, err := cfg.trustDomain(); err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", cfg.TrustDomain, err)
	}
	cert, ref, err := newIntermediate(ctx, cfg, st)
	if err != nil {
		audit(ctx, cfg, st, "ca.issue-intermediate", "", err)
		return nil, err
	}
	s = store.CAState{TrustDomain: cfg.TrustDomain, Intermediates: []store.CAIntermediate{
		{KeyID: keyID(cert), CertDER: cert.Raw, Slot: SlotActive, KeyRef: ref},
	}}
	if _, err := saveState(ctx, cfg, st, s, "ca.issue-intermediate", cert, "active "+keyID(cert)); err != nil {
		return nil, err
	}
	return cert, publishCRL(ctx, cfg, st)
}

// PrepareIntermediate creates a new intermediate in the prepared slot. The
// active one keeps signing; the published bundle holds both, so verifiers
// learn the new one before any leaf depends on it.
func PrepareIntermediate(ctx context.Context, cfg Config, st store.Store) (*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	s, err := loadState(ctx, cfg, st)
	if err != nil {
		return nil, err
	}
	if id := s.InSlot(SlotPrepared); id != "" {
		err := fmt.Errorf("%w: intermediate %s is already prepared; activate it with `meshctl ca rotate-intermediate activate`", ErrExists, id)
		audit(ctx, cfg, st, "ca.rotate-intermediate.prepare", "", err)
		return nil, err
	}
	cfg.TrustDomain = s.TrustDomain
	cert, ref, err := newIntermediate(ctx, cfg, st)
	if err != nil {
		audit(ctx, cfg, st, "ca.rotate-intermediate.prepare", "", err)
		return nil, err
	}
	s.Intermediates = append(slices.Clone(s.Intermediates), store.CAIntermediate{KeyID: keyID(cert), CertDER: cert.Raw, Slot: SlotPrepared, KeyRef: ref})
	cfg.step("publishing the bundle with both intermediates")
	if _, err := saveState(ctx, cfg, st, s, "ca.rotate-intermediate.prepare", cert, "prepared "+keyID(cert)); err != nil {
		return nil, err
	}
	return cert, publishCRL(ctx, cfg, st)
}

// ActivateIntermediate makes the prepared intermediate the signing one and
// retires the old one, whose certificates stay valid until they expire.
// It does not need the root key.
func ActivateIntermediate(ctx context.Context, cfg Config, st store.Store) (*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	s, err := loadState(ctx, cfg, st)
	if err != nil {
		return nil, err
	}
	prepared := s.InSlot(SlotPrepared)
	if prepared == "" {
		err := fmt.Errorf("%w: run `meshctl ca rotate-intermediate prepare` first", ErrNoPrepared)
		audit(ctx, cfg, st, "ca.rotate-intermediate.activate", "", err)
		return nil, err
	}
	in, _ := s.Intermediate(prepared)
	if err := materialise(cfg, in); err != nil {
		return nil, err
	}
	cert, _, err := loadIntermediate(cfg, prepared)
	if err != nil {
		return nil, keyHint(cfg, in, err)
	}
	cfg.step("making the prepared intermediate the signing one")
	old := activeID(s)
	s = setActive(s, prepared)
	if _, err := saveState(ctx, cfg, st, s, "ca.rotate-intermediate.activate", cert, "active "+prepared+", retired "+old); err != nil {
		return nil, err
	}
	return cert, publishCRL(ctx, cfg, st)
}

// setActive returns s with id active and the active one before it
// retired; the prepared slot is emptied only if id was in it.
func setActive(s store.CAState, id string) store.CAState {
	s.Intermediates = slices.Clone(s.Intermediates)
	for i, in := range s.Intermediates {
		switch {
		case in.KeyID == id:
			s.Intermediates[i].Slot = SlotActive
		case in.Slot == SlotActive:
			s.Intermediates[i].Slot = SlotRetired
		}
	}
	return s
}

// keyHint explains a key of intermediate in that this CA directory
// cannot load: a file key lives only in the CA directory that made it.
func keyHint(cfg Config, in store.CAIntermediate, err error) error {
	if len(in.KeyRef) == 0 && !caKeyExists(cfg, filepath.Join(cfg.intKeysDir(), in.KeyID)) {
		return fmt.Errorf("%w; the key of intermediate %s is a file that only the CA directory which made it holds: copy that CA directory's intermediate/keys/%s.key here (0600), or keep the CA keys on a PKCS#11 token that every replica reaches", err, in.KeyID, in.KeyID)
	}
	return err
}

// publishCRL rebuilds crl.pem after the set of live intermediates changed:
// a verifier that checks revocation refuses a leaf whose issuer has no CRL,
// so every intermediate that may sign needs one before its first leaf.
func publishCRL(ctx context.Context, cfg Config, st store.Store) error {
	cfg.step("re-signing the CRL of every live intermediate")
	c, err := Open(ctx, cfg, st)
	if err == nil {
		_, err = c.RebuildCRL(ctx)
	}
	if err != nil {
		return fmt.Errorf("the intermediate is in place, but rebuilding the CRL failed (run `meshctl ca crl`): %w", err)
	}
	return nil
}

// newIntermediate creates, records and stores a new intermediate signed by
// the root; it does not change which one is active.
func newIntermediate(ctx context.Context, cfg Config, st store.Store) (cert *x509.Certificate, keyRef []byte, err error) {
	root, err := pemfile.ReadCert(cfg.rootCertPath())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: no root certificate at %s (run `meshctl ca init`, or bring the offline root back)", ErrNotInitialized, cfg.rootCertPath())
		}
		return nil, nil, err
	}
	rootKey, err := loadCAKey(cfg, cfg.rootKeyBase())
	if err != nil {
		return nil, nil, fmt.Errorf("the root key is needed to sign an intermediate: %w", err)
	}
	if !publicKeyEqual(root.PublicKey, rootKey.Public()) {
		return nil, nil, fmt.Errorf("the root key %s.* does not match %s", cfg.rootKeyBase(), cfg.rootCertPath())
	}
	if err := pemfile.MkdirPrivate(cfg.Dir); err != nil {
		return nil, nil, err
	}
	if err := pemfile.MkdirPrivate(cfg.intKeysDir()); err != nil {
		return nil, nil, err
	}
	cfg.step("generating the intermediate's key")
	key, err := newCAKey(cfg)
	if err != nil {
		return nil, nil, err
	}
	now := cfg.Now()
	notAfter := now.Add(cfg.IntermediateTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "meshtrust intermediate CA " + now.UTC().Format("2006-01-02T150405Z"), Organization: []string{cfg.TrustDomain}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	cfg.step("signing the intermediate with the root key")
	cert, err = signCA(cfg, tmpl, root, key.Public(), rootKey)
	if err != nil {
		return nil, nil, err
	}
	cfg.step("writing the intermediate and recording it in the store")
	id := keyID(cert)
	if err := saveCAKey(cfg, filepath.Join(cfg.intKeysDir(), id), key); err != nil {
		return nil, nil, err
	}
	if keyRef, err = readKeyRef(cfg, id); err != nil {
		return nil, nil, err
	}
	if err := pemfile.WriteAtomic(filepath.Join(cfg.intKeysDir(), id+".crt"), pemfile.EncodeCerts(cert), 0o644); err != nil {
		return nil, nil, err
	}
	if err := archiveRootCopy(cfg, root); err != nil {
		return nil, nil, err
	}
	if err := pemfile.WriteAtomic(cfg.rootCopyPath(), pemfile.EncodeCerts(root), 0o644); err != nil {
		return nil, nil, err
	}
	rec := certRecord(cert, "intermediate", keyID(root), now)
	if err := st.RecordCert(ctx, rec, store.AuditEntry{Time: now, Action: "cert.issue", Identity: cert.Subject.CommonName, Outcome: store.OutcomeOK, Detail: "intermediate serial " + rec.Serial}); err != nil {
		return nil, nil, fmt.Errorf("record intermediate: %w", err)
	}
	return cert, keyRef, nil
}

// publish brings the files derived from s up to date, rewriting only
// those that differ: state.json and the intermediates' certificates, the
// active intermediate's cert, key and chain, and the bundle of root plus
// live intermediates.
func publish(cfg Config, s store.CAState) error {
	roots, err := localRoots(cfg)
	if err != nil {
		return err
	}
	root := roots[0]
	if err := writeDerivedState(cfg, s, roots); err != nil {
		return err
	}
	active, activeKey, err := loadIntermediate(cfg, activeID(s))
	if err != nil {
		return err
	}
	// The key lands before the certificate: an int.crt that is not the
	// active one's is what makes the next open repair both.
	if cur, err := pemfile.ReadCert(cfg.activeCertPath()); err != nil || !bytes.Equal(cur.Raw, active.Raw) {
		if err := saveCAKey(cfg, cfg.activeKeyBase(), activeKey); err != nil {
			return err
		}
		if err := pemfile.WriteAtomic(cfg.activeCertPath(), pemfile.EncodeCerts(active), 0o644); err != nil {
			return err
		}
	}
	if err := writeIfChanged(cfg.ChainPath(), pemfile.EncodeCerts(active, root), 0o644); err != nil {
		return err
	}
	var bundle bytes.Buffer
	bundle.Write(pemfile.EncodeCerts(root))
	now := cfg.Now()
	for _, id := range liveIDs(s) {
		in, _ := s.Intermediate(id)
		c, err := x509.ParseCertificate(in.CertDER)
		if err != nil {
			return fmt.Errorf("intermediate %s in the store: %w", id, err)
		}
		if now.After(c.NotAfter) {
			continue
		}
		bundle.Write(pemfile.EncodeCerts(c))
	}
	return writeIfChanged(cfg.BundlePath(), bundle.Bytes(), 0o644)
}

// writeIfChanged writes data to path atomically unless path holds it.
func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, data) {
		return nil
	}
	return pemfile.WriteAtomic(path, data, mode)
}

func loadIntermediate(cfg Config, id string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := pemfile.ReadCert(filepath.Join(cfg.intKeysDir(), id+".crt"))
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate %s: %w", id, err)
	}
	key, err := loadCAKey(cfg, filepath.Join(cfg.intKeysDir(), id))
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate %s: %w", id, err)
	}
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("intermediate %s: key does not match certificate", id)
	}
	return cert, key, nil
}

// signCA signs a CA certificate template; parent nil means self-signed.
func signCA(cfg Config, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial(cfg.Rand, cfg.Now())
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl.SubjectKeyId = ski
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(cfg.Rand, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign CA certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// newSerial returns a positive 128-bit serial number: the 48-bit Unix
// millisecond of now, then 80 random bits. The random bits are what makes
// a serial unguessable (the CA/Browser Forum asks for at least 64); the
// time in front makes serials grow, so that recording a certificate
// appends to the store's index of serials rather than dirtying a random
// page of it.
func newSerial(rand interface{ Read([]byte) (int, error) }, now time.Time) (*big.Int, error) {
	var b [16]byte
	ms := uint64(max(now.UnixMilli(), 0))
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	for {
		if _, err := rand.Read(b[6:]); err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID is the RFC 5280 method 1 key id: SHA-1 of the public key bits.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return spkiKeyID(spki)
}

// spkiKeyID is subjectKeyID of a DER SubjectPublicKeyInfo, read as it is
// rather than marshalled again from a parsed key.
func spkiKeyID(spki []byte) ([]byte, error) {
	s := cryptobyte.String(spki)
	var info cryptobyte.String
	var bits []byte
	if !s.ReadASN1(&info, cbasn1.SEQUENCE) || !info.SkipASN1(cbasn1.SEQUENCE) || !info.ReadASN1BitStringAsBytes(&bits) {
		return nil, errors.New("subject key id: malformed SubjectPublicKeyInfo")
	}
	sum := sha1.Sum(bits)
	return sum[:], nil
}

// keyID names a CA certificate by its subject key id, in hex.
func keyID(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }

// audit appends an audit entry; an audit failure of a refusal is not
// itself reported, since the refusal is what the caller must see.
func audit(ctx context.Context, cfg Config, st store.Store, action, ident string, opErr error, detail ...string) {
	if st == nil {
		return
	}
	e := store.AuditEntry{Time: cfg.Now(), Action: action, Identity: ident, Outcome: store.OutcomeOK}
	if len(detail) > 0 {
		e.Detail = detail[0]
	}
	if opErr != nil {
		e.Outcome = store.OutcomeRefused
		e.Detail = opErr.Error()
	}
	_ = st.Append(ctx, e)
}
