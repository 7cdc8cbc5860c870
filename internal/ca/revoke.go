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
)

// Reason is an RFC 5280 CRLReason.
type Reason int

// The reasons `ca revoke --reason` accepts, by their RFC 5280 names.
var reasons = map[string]Reason{
	"unspecified":          0,
	"keyCompromise":        1,
	"cACompromise":         2,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"certificateHold":      6,
	"privilegeWithdrawn":   9,
	"aACompromise":         10,
}

// ParseReason parses an RFC 5280 reason name; "" is unspecified.
func ParseReason(s string) (Reason, error) {
	if s == "" {
		return 0, nil
	}
	for name, r := range reasons {
		if strings.EqualFold(name, s) {
			return r, nil
		}
	}
	names := make([]string, 0, len(reasons))
	for n := range reasons {
		names = append(names, n)
	}
	sort.Strings(names)
	return 0, fmt.Errorf("unknown revocation reason %q (want one of %s)", s, strings.Join(names, ", "))
}

// String returns the RFC 5280 name of r.
func (r Reason) String() string {
	for name, v := range reasons {
		if v == r {
			return name
		}
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Revoke revokes the certificate with the given serial, or every unexpired
// certificate issued to the given common name, durably, then rebuilds the
// CRL. An unknown target changes nothing.
func (c *CA) Revoke(ctx context.Context, target string, reason Reason) ([]store.Revocation, error) {
	certs, err := c.resolve(ctx, target)
	if err != nil {
		audit(ctx, c.cfg, c.store, "cert.revoke", target, err)
		return nil, err
	}
	now := c.cfg.Now()
	var done []store.Revocation
	for _, rec := range certs {
		r := store.Revocation{Serial: rec.Serial, CommonName: rec.CommonName, IssuerKeyID: rec.IssuerKeyID, Reason: int(reason), RevokedAt: now.UTC()}
		r, err := c.store.Revoke(ctx, r, store.AuditEntry{
			Time: now, Action: "cert.revoke", Identity: rec.CommonName, Outcome: store.OutcomeOK,
			Detail: fmt.Sprintf("serial %s reason %s", rec.Serial, reason),
		})
		if errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("revoke %s: %w", rec.Serial, err)
		}
		done = append(done, r)
	}
	if len(done) == 0 {
		err := fmt.Errorf("%w: %s", ErrAlreadyRevoked, target)
		audit(ctx, c.cfg, c.store, "cert.revoke", target, err)
		return nil, err
	}
	if _, err := c.RebuildCRL(ctx); err != nil {
		return done, fmt.Errorf("revoked, but rebuilding the CRL failed (run `meshctl ca crl`): %w", err)
	}
	return done, nil
}

// resolve finds the certificates a revoke target names: a serial, or a
// common name's unexpired certificates.
func (c *CA) resolve(ctx context.Context, target string) ([]store.Cert, error) {
	if _, err := identity.Parse(target); err == nil {
		all, err := c.store.CertsByName(ctx, target)
		if err != nil {
			return nil, err
		}
		now := c.cfg.Now()
		var live []store.Cert
		for _, rec := range all {
			if now.Before(rec.NotAfter) {
				live = append(live, rec)
			}
		}
		if len(live) == 0 {
			return nil, fmt.Errorf("%w: no unexpired certificate was issued to %q (see `meshctl ca list`)", ErrUnknownCert, target)
		}
		return live, nil
	}
	serial, ok := NormalizeSerial(target)
	if !ok {
		return nil, fmt.Errorf("%w: %q is neither an identity (ct111.mesh, opus@ct111, alice@external) nor a hex serial", ErrUnknownCert, target)
	}
	rec, err := c.store.Cert(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: serial %s (see `meshctl ca list`)", ErrUnknownCert, serial)
	}
	if err != nil {
		return nil, err
	}
	if rec.Kind == "intermediate" {
		return nil, fmt.Errorf("%w: %s is an intermediate; retire it with `meshctl ca rotate-intermediate`", ErrPolicy, serial)
	}
	return []store.Cert{rec}, nil
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
	c.mu.RUnlock()
	sort.Slice(issuers, func(i, j int) bool { return issuers[i].cert.NotBefore.After(issuers[j].cert.NotBefore) })

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
	if err := pemfile.WriteAtomic(c.cfg.CRLPath(), buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	audit(ctx, c.cfg, c.store, "crl.rebuild", "", nil, fmt.Sprintf("%d CRLs, %d revoked serials", len(out), len(revs)))
	return out, nil
}
