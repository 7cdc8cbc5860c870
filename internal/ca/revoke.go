package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// Reason is an RFC 5280 CRLReason.
type Reason int

// ParseReason parses an RFC 5280 reason name, in any case; "" is
// unspecified. removeFromCRL is refused: it undoes a certificateHold in a
// delta CRL and is no reason to revoke.
func ParseReason(s string) (Reason, error) {
	if s == "" {
		return 0, nil
	}
	if code, ok := trust.ParseCRLReason(s); ok && code != removeFromCRL {
		return Reason(code), nil
	}
	return 0, fmt.Errorf("unknown revocation reason %q (want one of %s)", s, strings.Join(Reasons(), ", "))
}

// Reasons returns the names ParseReason accepts, sorted.
func Reasons() []string {
	var names []string
	for code := range 11 { // RFC 5280 defines codes 0 to 10, but 7
		name := trust.CRLReasonName(code)
		if _, defined := trust.ParseCRLReason(name); defined && code != removeFromCRL {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// removeFromCRL is RFC 5280's CRLReason 8.
const removeFromCRL = 8

// String returns the RFC 5280 name of r.
func (r Reason) String() string { return trust.CRLReasonName(int(r)) }

// Revoke revokes target durably, then rebuilds the CRL.
//
// A serial revokes that certificate; with keyCompromise its key is also
// never certified again, and every other unexpired certificate of the key
// (same-key renewals) is revoked with it, for keyCompromise, in the same
// transaction, so the CRL rebuilt next lists them all. A name (ct111.mesh, opus@ct111, alice@external)
// revokes the identity: every unexpired certificate of it (of a node's
// agents too) in one transaction, and every later issuance for it, until
// Reinstate lifts it. A name whose certificates have all expired is revoked all the
// same as long as the CA ever issued to it (anything else is taken for a
// typo). An unknown serial, an intermediate or a revoked target changes
// nothing.
func (c *CA) Revoke(ctx context.Context, target string, reason Reason) ([]store.Revocation, error) {
	now := c.cfg.Now()
	var (
		done []store.Revocation
		err  error
	)
	if id, perr := identity.Parse(target); perr == nil {
		name := id.CommonName()
		// A name the CA never issued to is most likely a typo, which would
		// otherwise revoke nothing and look like success.
		var ever []store.Cert
		if ever, err = c.store.CertsByName(ctx, name); err == nil && len(ever) == 0 {
			err = fmt.Errorf("%w: no certificate was ever issued to %q (see `meshctl ca list`)", ErrUnknownCert, name)
		}
		if err != nil {
			audit(ctx, c.cfg, c.store, "cert.revoke", target, err)
			return nil, err
		}
		_, done, err = c.store.RevokeIdentity(ctx, store.IdentityRevocation{Name: name, Reason: int(reason), RevokedAt: now.UTC()},
			store.AuditEntry{Time: now, Action: "identity.revoke", Identity: name, Outcome: store.OutcomeOK, Detail: store.Attributed(ctx, "reason "+reason.String())})
		if errors.Is(err, store.ErrExists) {
			err = fmt.Errorf("%w: identity %s (lift it with `meshctl ca reinstate %s`)", ErrAlreadyRevoked, name, name)
		}
	} else {
		var rec store.Cert
		if rec, err = c.resolveSerial(ctx, target); err == nil {
			var (
				r       store.Revocation
				sameKey []store.Revocation
			)
			r, sameKey, err = c.store.Revoke(ctx, store.Revocation{Serial: rec.Serial, CommonName: rec.CommonName, IssuerKeyID: rec.IssuerKeyID, Reason: int(reason), RevokedAt: now.UTC()},
				store.AuditEntry{Time: now, Action: "cert.revoke", Identity: rec.CommonName, Outcome: store.OutcomeOK,
					Detail: store.Attributed(ctx, fmt.Sprintf("serial %s reason %s", rec.Serial, reason))})
			if errors.Is(err, store.ErrExists) {
				err = fmt.Errorf("%w: serial %s", ErrAlreadyRevoked, rec.Serial)
			}
			done = append([]store.Revocation{r}, sameKey...)
		}
	}
	if err != nil {
		audit(ctx, c.cfg, c.store, "cert.revoke", target, err)
		return nil, err
	}
	if _, err := c.RebuildCRL(ctx); err != nil {
		return done, fmt.Errorf("revoked, but rebuilding the CRL failed (run `meshctl ca crl`): %w", err)
	}
	return done, nil
}

// Reinstate lifts the revocation of the identity name: certificates can
// be issued to it (for a node, to its agents) again. The certificates
// revoked with it stay revoked.
func (c *CA) Reinstate(ctx context.Context, name string) error {
	id, err := identity.Parse(name)
	if err != nil {
		err = fmt.Errorf("%w: %q is not an identity (ct111.mesh, opus@ct111, alice@external): %v", ErrUnknownCert, name, err)
		audit(ctx, c.cfg, c.store, "identity.reinstate", name, err)
		return err
	}
	name = id.CommonName()
	now := c.cfg.Now()
	err = c.store.ReinstateIdentity(ctx, name, now, store.AuditEntry{Time: now, Action: "identity.reinstate", Identity: name, Outcome: store.OutcomeOK, Detail: store.Attributed(ctx, "")})
	if errors.Is(err, store.ErrNotFound) {
		err = fmt.Errorf("%w: identity %s (see `meshctl ca list`)", ErrNotRevoked, name)
		audit(ctx, c.cfg, c.store, "identity.reinstate", name, err)
	}
	return err
}

// resolveSerial finds the certificate a serial names.
func (c *CA) resolveSerial(ctx context.Context, target string) (store.Cert, error) {
	serial, ok := trust.NormalizeSerial(target)
	if !ok {
		return store.Cert{}, fmt.Errorf("%w: %q is neither an identity (ct111.mesh, opus@ct111, alice@external) nor a hex serial", ErrUnknownCert, target)
	}
	rec, err := c.store.Cert(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return store.Cert{}, fmt.Errorf("%w: serial %s (see `meshctl ca list`)", ErrUnknownCert, serial)
	}
	if err != nil {
		return store.Cert{}, err
	}
	if rec.Kind == "intermediate" {
		return store.Cert{}, fmt.Errorf("%w: %s is an intermediate; retire it with `meshctl ca rotate-intermediate`", ErrPolicy, serial)
	}
	return rec, nil
}

// RebuildCRL signs a fresh CRL for every live intermediate, with the next
// CRL number, and atomically replaces crl.pem with them. Concurrent
// rebuilds, in this process or another, are serialised so a newer CRL is
// never overwritten by an older one.
func (c *CA) RebuildCRL(ctx context.Context) ([]*x509.RevocationList, error) {
	lock, err := lockFile(c.cfg.lockPath())
	if err != nil {
		return nil, err
	}
	defer lock.unlock()

	revs, err := c.store.Revocations(ctx, 0)
	if err != nil {
		return nil, err
	}
	byIssuer := make(map[string][]x509.RevocationListEntry)
	for _, r := range revs {
		serial, _ := new(big.Int).SetString(r.Serial, 16)
		byIssuer[r.IssuerKeyID] = append(byIssuer[r.IssuerKeyID], x509.RevocationListEntry{
			SerialNumber: serial, RevocationTime: r.RevokedAt, ReasonCode: r.Reason,
		})
	}
	c.mu.RLock()
	issuers := make([]*issuer, 0, len(c.issuers))
	for _, is := range c.issuers {
		issuers = append(issuers, is)
	}
	active := c.active
	c.mu.RUnlock()
	// The active intermediate's CRL comes first, then the others newest
	// first. NotBefore has one-second resolution, so a rotation within the
	// second ties; the key id breaks the tie and keeps the file's order
	// independent of map iteration.
	sort.Slice(issuers, func(i, j int) bool {
		a, b := issuers[i], issuers[j]
		if (a == active) != (b == active) {
			return a == active
		}
		if !a.cert.NotBefore.Equal(b.cert.NotBefore) {
			return a.cert.NotBefore.After(b.cert.NotBefore)
		}
		return a.id < b.id
	})

	now := c.cfg.Now()
	var (
		out []*x509.RevocationList
		buf bytes.Buffer
	)
	for _, is := range issuers {
		if now.After(is.cert.NotAfter) {
			continue
		}
		n, err := c.store.NextCRLNumber(ctx, is.id)
		if err != nil {
			return nil, err
		}
		der, err := x509.CreateRevocationList(c.cfg.Rand, &x509.RevocationList{
			Number:                    big.NewInt(n),
			ThisUpdate:                now.Add(-backdate),
			NextUpdate:                now.Add(c.cfg.CRLValidity),
			RevokedCertificateEntries: byIssuer[is.id],
		}, is.cert, is.key)
		if err != nil {
			return nil, fmt.Errorf("sign CRL: %w", err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, err
		}
		out = append(out, crl)
		pem.Encode(&buf, &pem.Block{Type: "X509 CRL", Bytes: der})
	}
	// The root's CRL of revoked intermediates rides along, so that a
	// verifier checking every CRL of the chain finds it in one file.
	rootCRL, err := rootCRLPEM(c.cfg)
	if err != nil {
		return nil, err
	}
	buf.Write(rootCRL)
	if err := pemfile.WriteAtomic(c.cfg.CRLPath(), buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	var newest int64
	for _, r := range revs {
		newest = max(newest, r.Seq)
	}
	c.noteCRL(now.Add(-backdate), newest)
	audit(ctx, c.cfg, c.store, "crl.rebuild", "", nil, fmt.Sprintf("%d CRLs, %d revoked serials", len(out), len(revs)))
	return out, nil
}
