package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strings"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Forced re-keying, as SPIRE's `localauthority x509 taint|revoke`: after
// an intermediate is compromised, prepare and activate a new one, taint
// the old one (every leaf it signed is told to renew now, RenewAt), and
// once none of its leaves is live revoke it (nothing trusts it any more).

// findIntermediate returns the intermediate the operator named. The name
// compared is the intermediate's subject key id, lowercase hex, as
// `meshctl ca status` prints it; the store's state is the only source of
// intermediates.
func findIntermediate(s store.CAState, id string) (store.CAIntermediate, error) {
	in, ok := s.Intermediate(strings.ToLower(strings.TrimSpace(id)))
	if !ok {
		return in, fmt.Errorf("%w: %q is not the key id of one of the CA's intermediates (see `meshctl ca status`)", ErrUnknownIntermediate, id)
	}
	return in, nil
}

// TaintIntermediate marks the intermediate id tainted: from then on every
// process with the CA open (after its reload on the ca.rotated event)
// tells the holders of its leaves to renew now (RenewAt, TaintedIssuers).
// Only a retired intermediate may be tainted; activate a new one first,
// so that the renewals have a signer that is not tainted.
func TaintIntermediate(ctx context.Context, cfg Config, st store.Store, id string) (*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	const action = "ca.rotate-intermediate.taint"
	s, err := loadState(ctx, cfg, st)
	if err != nil {
		return nil, err
	}
	in, err := findIntermediate(s, id)
	if err == nil {
		err = taintable(in)
	}
	if err != nil {
		audit(ctx, cfg, st, action, id, err)
		return nil, err
	}
	cert, err := x509.ParseCertificate(in.CertDER)
	if err != nil {
		return nil, fmt.Errorf("intermediate %s in the store: %w", in.KeyID, err)
	}
	now := cfg.Now()
	s = withIntermediate(s, in.KeyID, func(in *store.CAIntermediate) { in.TaintedAt = now })
	if _, err := saveState(ctx, cfg, st, s, action, cert, "tainted "+in.KeyID); err != nil {
		return nil, err
	}
	return cert, nil
}

func taintable(in store.CAIntermediate) error {
	switch {
	case !in.RevokedAt.IsZero():
		return fmt.Errorf("%w: intermediate %s is revoked already", ErrIntermediateSlot, in.KeyID)
	case !in.TaintedAt.IsZero():
		return fmt.Errorf("%w: intermediate %s was tainted at %s already", ErrIntermediateSlot, in.KeyID, in.TaintedAt.UTC().Format("2006-01-02T15:04:05Z"))
	case in.Slot == SlotActive:
		return fmt.Errorf("%w: intermediate %s is the active one; prepare and activate a new one first (`meshctl ca rotate-intermediate prepare`, then `activate`), then taint it", ErrIntermediateSlot, in.KeyID)
	case in.Slot == SlotPrepared:
		return fmt.Errorf("%w: intermediate %s is prepared and has signed nothing; nothing is to re-key", ErrIntermediateSlot, in.KeyID)
	}
	return nil
}

// withIntermediate returns s with fn applied to the intermediate id, the
// rest of s shared with it untouched.
func withIntermediate(s store.CAState, id string, fn func(*store.CAIntermediate)) store.CAState {
	s.Intermediates = slices.Clone(s.Intermediates)
	for i := range s.Intermediates {
		if s.Intermediates[i].KeyID == id {
			fn(&s.Intermediates[i])
		}
	}
	return s
}

// Revoked is what RevokeIntermediate did.
type Revoked struct {
	Cert *x509.Certificate
	// LiveCerts is how many of its leaves were still in use (0 unless
	// forced); see IntermediateStatus.
	LiveCerts int
	// RootCRL is the root-signed CRL that lists it, nil when the root key
	// was not at hand: then verifiers that check CRLs (OpenSSL with
	// -crl_check_all) learn of it only once it runs again where the root
	// key is.
	RootCRL *x509.RevocationList
}

// RevokeIntermediate revokes the tainted intermediate id: it leaves the
// bundle and every verifier of the CA's trust (the localca backend), and,
// when the root key is at hand, a root-signed CRL that lists it is
// written (RootCRLPath, and crl.pem with the intermediates' CRLs). It
// refuses, naming the count, while the intermediate still has live
// leaves, unless force. Run again on a revoked intermediate, it only
// publishes the root CRL.
func RevokeIntermediate(ctx context.Context, cfg Config, st store.Store, id string, force bool) (Revoked, error) {
	cfg = cfg.withDefaults()
	const action = "ca.rotate-intermediate.revoke"
	s, err := loadState(ctx, cfg, st)
	if err != nil {
		return Revoked{}, err
	}
	in, err := findIntermediate(s, id)
	if err == nil && in.TaintedAt.IsZero() {
		err = fmt.Errorf("%w: intermediate %s is not tainted; taint it first (`meshctl ca rotate-intermediate taint %s`) and let its leaves renew", ErrIntermediateSlot, in.KeyID, in.KeyID)
	}
	if err != nil {
		audit(ctx, cfg, st, action, id, err)
		return Revoked{}, err
	}
	cert, err := x509.ParseCertificate(in.CertDER)
	if err != nil {
		return Revoked{}, fmt.Errorf("intermediate %s in the store: %w", in.KeyID, err)
	}
	out := Revoked{Cert: cert}
	if in.RevokedAt.IsZero() {
		live, _, err := liveLeaves(ctx, st, cfg.Now())
		if err != nil {
			return out, err
		}
		out.LiveCerts = live[in.KeyID]
		if out.LiveCerts > 0 && !force {
			err := fmt.Errorf("%w: intermediate %s still signs %d live certificates; wait until they renewed (`meshctl ca status`), or revoke with --force and cut them off", ErrLiveLeaves, in.KeyID, out.LiveCerts)
			audit(ctx, cfg, st, action, cert.Subject.CommonName, err)
			return out, err
		}
		now := cfg.Now()
		s = withIntermediate(s, in.KeyID, func(in *store.CAIntermediate) { in.RevokedAt = now })
		detail := fmt.Sprintf("revoked %s with %d live certificates", in.KeyID, out.LiveCerts)
		if s, err = saveState(ctx, cfg, st, s, action, cert, detail); err != nil {
			return out, err
		}
	}
	if out.RootCRL, err = publishRootCRL(ctx, cfg, st, s); err != nil {
		return out, err
	}
	return out, publishCRL(ctx, cfg, st)
}

// publishRootCRL signs, with the root key, the CRL of every revoked
// intermediate of s and writes it to RootCRLPath; without the root key
// at hand it does nothing. Its next-update is the root's expiry: the
// root key is offline most of the time, and a revoked intermediate never
// comes back.
func publishRootCRL(ctx context.Context, cfg Config, st store.Store, s store.CAState) (*x509.RevocationList, error) {
	if !caKeyExists(cfg, cfg.rootKeyBase()) {
		return nil, nil
	}
	root, err := pemfile.ReadCert(cfg.rootCertPath())
	if err != nil {
		return nil, err
	}
	key, err := loadCAKey(cfg, cfg.rootKeyBase())
	if err != nil {
		return nil, fmt.Errorf("the root key, to sign the CRL of revoked intermediates: %w", err)
	}
	if !publicKeyEqual(root.PublicKey, key.Public()) {
		return nil, fmt.Errorf("%s does not match %s", cfg.rootKeyPath(), cfg.rootCertPath())
	}
	var entries []x509.RevocationListEntry
	for _, in := range s.Intermediates {
		if in.RevokedAt.IsZero() {
			continue
		}
		c, err := x509.ParseCertificate(in.CertDER)
		if err != nil {
			return nil, fmt.Errorf("intermediate %s in the store: %w", in.KeyID, err)
		}
		// keyCompromise: an intermediate is revoked after a taint, the
		// step for a key that may be in other hands.
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: in.RevokedAt, ReasonCode: store.ReasonKeyCompromise})
	}
	n, err := st.NextCRLNumber(ctx, keyID(root))
	if err != nil {
		return nil, err
	}
	now := cfg.Now()
	der, err := x509.CreateRevocationList(cfg.Rand, &x509.RevocationList{
		Number:                    big.NewInt(n),
		ThisUpdate:                now.Add(-backdate),
		NextUpdate:                root.NotAfter,
		RevokedCertificateEntries: entries,
	}, root, key)
	if err != nil {
		return nil, fmt.Errorf("sign the root's CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	if err := pemfile.WriteAtomic(cfg.RootCRLPath(), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return crl, nil
}

// rootCRLPEM returns the root CRL RootCRLPath holds, nil when there is
// none, for crl.pem to carry it beside the intermediates' CRLs.
func rootCRLPEM(cfg Config) ([]byte, error) {
	data, err := os.ReadFile(cfg.RootCRLPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	return data, nil
}
