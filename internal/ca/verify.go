package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// Status is the state of an issued certificate.
type Status string

// Certificate states, from best to worst.
const (
	StatusValid       Status = "valid"
	StatusExpiring    Status = "expiring" // past its renewal point
	StatusNotYetValid Status = "not-yet-valid"
	StatusExpired     Status = "expired"
	StatusRevoked     Status = "revoked"
	StatusUntrusted   Status = "untrusted"
)

// Verdict is the result of checking one certificate.
type Verdict struct {
	Status   Status            `json:"status"`
	Subject  string            `json:"subject"`
	Serial   string            `json:"serial"`
	Identity string            `json:"identity,omitempty"`
	NotAfter time.Time         `json:"not_after"`
	Problem  string            `json:"problem,omitempty"`
	Revoked  *store.Revocation `json:"revoked,omitempty"`
}

// OK reports whether the certificate may be used.
func (v Verdict) OK() bool { return v.Status == StatusValid || v.Status == StatusExpiring }

// Verify checks a certificate (optionally followed by its chain) against
// the CA: chain to the root through a live intermediate, validity window,
// revocation, and that its names form a mesh identity.
func (c *CA) Verify(ctx context.Context, certs []*x509.Certificate) (Verdict, error) {
	if len(certs) == 0 {
		return Verdict{}, errors.New("no certificate to verify")
	}
	leaf := certs[0]
	v := Verdict{Subject: leaf.Subject.CommonName, Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter.UTC()}
	now := c.cfg.Now()

	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	// Checked at a time inside the leaf's window so that an expired leaf is
	// reported as expired rather than as untrusted.
	inter := append(c.Intermediates(), certs[1:]...)
	if _, err := trust.VerifyInWindow(leaf, roots, inter, now); err != nil {
		v.Status, v.Problem = StatusUntrusted, fmt.Sprintf("does not chain to this CA's root: %v", err)
		return v, nil
	}
	if id, err := identity.FromCertificate(leaf, c.TrustDomain()); err != nil {
		v.Status, v.Problem = StatusUntrusted, err.Error()
		return v, nil
	} else {
		v.Identity = id.CommonName()
	}
	revs, err := c.revocationsBySerial(ctx)
	if err != nil {
		return v, err
	}
	v.Status = c.status(now, leaf.NotBefore, leaf.NotAfter, c.cfg.RenewAfter, revs[v.Serial])
	if r, ok := revs[v.Serial]; ok {
		v.Revoked = &r
		v.Problem = fmt.Sprintf("revoked at %s (%s)", r.RevokedAt.Format(time.RFC3339), Reason(r.Reason))
	}
	switch v.Status {
	case StatusExpired:
		v.Problem = "expired at " + leaf.NotAfter.UTC().Format(time.RFC3339)
	case StatusNotYetValid:
		v.Problem = "not valid before " + leaf.NotBefore.UTC().Format(time.RFC3339)
	}
	return v, nil
}

// status classifies a certificate; it is "expiring" once older than
// renewAfter.
func (c *CA) status(now, notBefore, notAfter time.Time, renewAfter time.Duration, rev store.Revocation) Status {
	switch {
	case rev.Serial != "":
		return StatusRevoked
	case now.After(notAfter):
		return StatusExpired
	case now.Before(notBefore):
		return StatusNotYetValid
	case now.After(notBefore.Add(backdate).Add(renewAfter)):
		return StatusExpiring
	}
	return StatusValid
}

func (c *CA) revocationsBySerial(ctx context.Context) (map[string]store.Revocation, error) {
	revs, err := c.store.Revocations(ctx, 0)
	if err != nil {
		return nil, err
	}
	m := make(map[string]store.Revocation, len(revs))
	for _, r := range revs {
		m[r.Serial] = r
	}
	return m, nil
}

// Listed is one issued certificate and its state.
type Listed struct {
	store.Cert
	// RenewAt is when its holder is due to renew it: past it, a valid
	// certificate is StatusExpiring.
	RenewAt   time.Time  `json:"-"`
	Status    Status     `json:"status"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

// List returns every certificate the CA issued, oldest first, with its
// state.
func (c *CA) List(ctx context.Context) ([]Listed, error) {
	certs, err := c.store.Certs(ctx)
	if err != nil {
		return nil, err
	}
	revs, err := c.revocationsBySerial(ctx)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	out := make([]Listed, 0, len(certs))
	for _, rec := range certs {
		renewAfter := c.cfg.RenewAfter
		if rec.Kind == "intermediate" {
			renewAfter = c.cfg.IntermediateTTL / 2 // intermediates rotate mid-life
		}
		renewAt := rec.NotBefore.Add(backdate).Add(renewAfter)
		if rec.Kind != "intermediate" {
			renewAt = c.RenewAt(rec.IssuerKeyID, rec.Serial, rec.NotBefore, rec.NotAfter) // sooner for a tainted issuer's
		}
		l := Listed{Cert: rec, RenewAt: renewAt, Status: c.status(now, rec.NotBefore, rec.NotAfter, renewAfter, revs[rec.Serial])}
		if r, ok := revs[rec.Serial]; ok {
			at := r.RevokedAt
			l.RevokedAt, l.Reason = &at, Reason(r.Reason).String()
		}
		out = append(out, l)
	}
	return out, nil
}

// DueForRenewal returns the certificates the store records that are past
// their renewal point (StatusExpiring) and were not renewed: the newest
// unrevoked, unexpired certificate of each identity (node, agent, client;
// intermediates rotate instead), when that one is due. An identity whose
// renewal happened holds a newer valid certificate and is not listed.
// It reads every recorded certificate: call it on a timer, not per
// request (meshd refreshes meshd_certificates_due_renewal with it).
func (c *CA) DueForRenewal(ctx context.Context) ([]Listed, error) {
	all, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	newest := Current(all)
	var out []Listed
	for _, l := range all {
		if n, ok := newest[l.CommonName]; ok && n.Serial == l.Serial && n.Status == StatusExpiring {
			out = append(out, l)
		}
	}
	return out, nil
}

// Current returns the certificate of each identity that counts among
// listed: its newest unrevoked, unexpired one (intermediates rotate
// instead and are left out), by common name. An older one of the same
// identity was renewed already.
func Current(listed []Listed) map[string]Listed {
	// The identity compared is the certificate's common name as the CA
	// recorded it (store.Cert.CommonName): only the CA's own records are
	// read, so the CA vouches for it.
	newest := map[string]Listed{}
	for _, l := range listed {
		if l.Kind == "intermediate" || (l.Status != StatusValid && l.Status != StatusExpiring) {
			continue
		}
		if cur, ok := newest[l.CommonName]; !ok || l.NotAfter.After(cur.NotAfter) {
			newest[l.CommonName] = l
		}
	}
	return newest
}
