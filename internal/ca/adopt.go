package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// adoptAttempts bounds AdoptIntermediate's retries when other processes
// change the state between its read and its write.
const adoptAttempts = 8

// AdoptIntermediate makes cert, an intermediate made outside meshtrust
// (cert-manager's CA issuer, a Kubernetes Secret mounted as tls.crt,
// tls.key and ca.crt), the active one, retiring the one before it. root
// is the CA's root (ca.crt); its key is never needed. The key is the one
// recorded under keyBase (keyBase+".key", or a PKCS#11 reference), and is
// copied into the CA directory's keys. cert must be a CA certificate for
// path length 0 that root signed, valid now, with a subject key id, and
// the key must be its own. A CA directory that has a root already must
// have this one.
//
// It is idempotent, and several replicas may call it at once with the
// same Secret: the first to write the state wins, the others find cert
// active and return it. It refuses an intermediate the CA revoked or
// tainted.
func AdoptIntermediate(ctx context.Context, cfg Config, st store.Store, root, cert *x509.Certificate, keyBase string) (*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	refuse := func(err error) (*x509.Certificate, error) {
		audit(ctx, cfg, st, "ca.adopt-intermediate", cert.Subject.CommonName, err)
		return nil, err
	}
	if err := checkAdoptable(cfg, root, cert); err != nil {
		return refuse(err)
	}
	key, err := loadCAKey(cfg, keyBase)
	if err != nil {
		return refuse(fmt.Errorf("the intermediate's key: %w", err))
	}
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return refuse(fmt.Errorf("the key under %s is not the key of the intermediate %q", keyBase, cert.Subject))
	}
	id := keyID(cert)
	for _, dir := range []string{cfg.Dir, cfg.intDir(), cfg.intKeysDir()} {
		if err := pemfile.MkdirPrivate(dir); err != nil {
			return nil, err
		}
	}
	if base := filepath.Join(cfg.intKeysDir(), id); base != keyBase && !caKeyExists(cfg, base) {
		if err := saveCAKey(cfg, base, key); err != nil {
			return nil, err
		}
	}
	if err := writeIfChanged(filepath.Join(cfg.intKeysDir(), id+".crt"), pemfile.EncodeCerts(cert), 0o644); err != nil {
		return nil, err
	}
	if err := writeIfChanged(cfg.rootCopyPath(), pemfile.EncodeCerts(root), 0o644); err != nil {
		return nil, err
	}
	ref, err := readKeyRef(cfg, id)
	if err != nil {
		return nil, err
	}
	rec := certRecord(cert, "intermediate", keyID(root), cfg.Now())
	err = st.RecordCert(ctx, rec, store.AuditEntry{Time: cfg.Now(), Action: "cert.issue", Identity: cert.Subject.CommonName, Outcome: store.OutcomeOK, Detail: "adopted intermediate serial " + rec.Serial})
	if err != nil && !errors.Is(err, store.ErrExists) {
		return nil, fmt.Errorf("record intermediate: %w", err)
	}
	for range adoptAttempts {
		s, err := loadState(ctx, cfg, st)
		switch {
		case errors.Is(err, ErrNotInitialized):
			td, err := cfg.trustDomain()
			if err != nil {
				return nil, fmt.Errorf("trust domain %q: %w", cfg.TrustDomain, err)
			}
			s = store.CAState{TrustDomain: td.Name()}
		case err != nil:
			return nil, err
		}
		in, known := s.Intermediate(id)
		switch {
		case known && !in.RevokedAt.IsZero():
			return refuse(fmt.Errorf("%w: intermediate %s was revoked at %s; put a new one in the Secret", ErrRevoked, id, in.RevokedAt.UTC().Format("2006-01-02T15:04:05Z")))
		case known && !in.TaintedAt.IsZero():
			return refuse(fmt.Errorf("intermediate %s was tainted at %s; put a new one in the Secret", id, in.TaintedAt.UTC().Format("2006-01-02T15:04:05Z")))
		case known && in.Slot == SlotActive:
			if err := publish(cfg, s); err != nil {
				return nil, err
			}
			return cert, nil // adopted already, by this process or another
		case !known:
			s.Intermediates = append(slices.Clone(s.Intermediates), store.CAIntermediate{KeyID: id, CertDER: cert.Raw, Slot: SlotActive, KeyRef: ref})
		}
		old := activeID(s)
		s = setActive(s, id)
		detail := "active " + id
		if old != "" && old != id {
			detail += ", retired " + old
		}
		_, err = saveState(ctx, cfg, st, s, "ca.adopt-intermediate", cert, detail)
		if errors.Is(err, store.ErrConflict) {
			continue // another replica changed the state: read it again
		}
		if err != nil {
			return nil, err
		}
		return cert, publishCRL(ctx, cfg, st)
	}
	return nil, fmt.Errorf("adopt intermediate %s: the CA's state kept changing under %d attempts", id, adoptAttempts)
}

// checkAdoptable checks that cert is an intermediate of root that the CA
// can sign with.
func checkAdoptable(cfg Config, root, cert *x509.Certificate) error {
	if root == nil || cert == nil {
		return errors.New("adopt intermediate: a root and an intermediate certificate are needed")
	}
	// The root vouches for the intermediate: the one in the CA directory
	// if there is one (a CA has one root, ever), else the Secret's ca.crt.
	if cur, err := pemfile.ReadCert(cfg.rootCopyPath()); err == nil && !bytes.Equal(cur.Raw, root.Raw) {
		return fmt.Errorf("the root %q is not this CA's root %s (%q)", root.Subject, cfg.rootCopyPath(), cur.Subject)
	}
	if !root.IsCA || !bytes.Equal(root.RawIssuer, root.RawSubject) {
		return fmt.Errorf("%q is not a self-signed root CA certificate", root.Subject)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%q is not a CA certificate that may sign certificates", cert.Subject)
	}
	if err := cert.CheckSignatureFrom(root); err != nil {
		return fmt.Errorf("the intermediate %q is not signed by the root %q: %w", cert.Subject, root.Subject, err)
	}
	if len(cert.SubjectKeyId) == 0 {
		return fmt.Errorf("the intermediate %q has no subject key id, by which the CA names it and its leaves name their issuer", cert.Subject)
	}
	now := cfg.Now()
	if now.Before(cert.NotBefore) || !now.Before(cert.NotAfter) {
		return fmt.Errorf("the intermediate %q is valid from %s to %s, not now", cert.Subject, cert.NotBefore.UTC().Format("2006-01-02T15:04:05Z"), cert.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
	return nil
}
