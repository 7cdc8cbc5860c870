package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// Issued is a certificate the CA signed and recorded.
type Issued struct {
	Cert *x509.Certificate
	// PEM is Cert in PEM form.
	PEM []byte
	// ChainPEM is the issuing intermediate followed by the root.
	ChainPEM []byte
	// Record is what the store holds for Cert.
	Record store.Cert
}

// ParseCSR parses a PEM or DER certificate request.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q, want CERTIFICATE REQUEST", ErrBadCSR, block.Type)
		}
		data = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	return csr, nil
}

// Sign signs req under its profile with the active intermediate and
// durably records the certificate before returning it. opts give exactly
// one key source (FromCSR, ForPublicKey or WithGeneratedKey) and how the
// issuance was authorised and is audited; a provisioner's authorisation
// returns them. The profile, never the CSR, decides what the certificate
// holds: a CSR proves possession of its key and may only ask for what the
// profile would grant anyway. A refusal by the policy or the store is
// audited.
func (c *CA) Sign(ctx context.Context, req Request, opts ...SignOption) (*Issued, error) {
	if req.invalid != nil {
		return nil, c.refuse(ctx, Request{}, req.invalid)
	}
	o := optionsOf(opts)
	pub, err := o.key(req)
	if err != nil {
		return nil, err
	}
	if o.generate {
		return c.signGenerated(ctx, req, &o)
	}
	return c.issue(ctx, req, pub, &o)
}

// signGenerated is Sign with WithGeneratedKey.
func (c *CA) signGenerated(ctx context.Context, req Request, o *signOptions) (*Issued, error) {
	cn := req.Identity.CommonName()
	// Two first issues of one name, in this process or another, would each
	// generate a key and could leave one's certificate beside the other's
	// key: the lock makes read key, sign, write key one step.
	lock, err := lockDir(c.cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer lock.unlock()
	// A directory others can write is refused before anything is signed; a
	// missing one is created only once there is something to put in it, so
	// a refused request leaves nothing behind.
	issuedDir := c.cfg.issuedPath("")
	if pemfile.Exists(issuedDir) {
		if err := pemfile.MkdirPrivate(issuedDir); err != nil {
			return nil, err
		}
	}
	// The new key is written only once the certificate is issued, so a
	// refused request leaves nothing behind.
	keyPath := c.cfg.IssuedKeyPath(cn)
	key, err := c.issuedKey(keyPath)
	if err != nil {
		return nil, err
	}
	is, err := c.issue(ctx, req, key.Public(), o)
	if err != nil {
		return nil, err
	}
	if err := pemfile.MkdirPrivate(issuedDir); err != nil {
		return nil, err
	}
	if !pemfile.Exists(keyPath) {
		if err := pemfile.WriteKey(keyPath, key); err != nil {
			return nil, err
		}
	}
	if err := pemfile.WriteAtomic(c.cfg.IssuedCertPath(cn), append(append([]byte{}, is.PEM...), is.ChainPEM...), 0o644); err != nil {
		return nil, err
	}
	return is, nil
}

// issuedKey reads the CA-held key at keyPath, or generates one (not
// written) when there is none.
func (c *CA) issuedKey(keyPath string) (crypto.Signer, error) {
	key, err := pemfile.ReadKey(keyPath)
	if errors.Is(err, ErrKeyMissing) {
		return GenerateKey(c.cfg.KeyType, c.cfg.Rand)
	}
	return key, err
}

// spkiOf is the key as its holder presented it in the CSR, marshalled
// from pub only when there is no CSR.
func spkiOf(csr *x509.CertificateRequest, pub crypto.PublicKey) ([]byte, error) {
	if csr != nil {
		return csr.RawSubjectPublicKeyInfo, nil
	}
	return x509.MarshalPKIXPublicKey(pub)
}

// issue runs the policy, signs with the active intermediate and records the
// result. o.csr is nil when there is none (the CA generated the key, or the
// caller re-issues for a proven key); o.proven skips its signature check.
func (c *CA) issue(ctx context.Context, req Request, pub crypto.PublicKey, o *signOptions) (*Issued, error) {
	signer := c.signer()
	now := c.cfg.Now()
	s, err := c.checked(o.csr, pub, req, signer, now, o.proven)
	if err != nil {
		return nil, c.refuse(ctx, s.req, err)
	}
	spki, err := spkiOf(o.csr, pub)
	if err != nil {
		return nil, err
	}
	if s.tmpl.SubjectKeyId, err = spkiKeyID(spki); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		serial, err := newSerial(c.cfg.Rand, now)
		if err != nil {
			return nil, err
		}
		s.tmpl.SerialNumber = serial
		// Every certificate is encoded by x509.CreateCertificate, which
		// also checks the signature against the signer's public key.
		der, err := x509.CreateCertificate(c.cfg.Rand, s.tmpl, signer.cert, pub, signer.key)
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		rec := certRecord(cert, s.req.Profile.Kind().String(), signer.id, now)
		rec.AuthorizedBy, rec.Exclusive = o.authorizedBy, o.exclusive
		entry := store.AuditEntry{
			Time: now, Action: "cert.issue", Identity: rec.CommonName, Outcome: store.OutcomeOK,
			Detail: fmt.Sprintf("%s serial %s until %s", s.req.Profile, rec.Serial, rec.NotAfter.Format("2006-01-02")),
		}
		switch {
		case o.renews != "":
			entry.Action = "cert.renew"
			entry.Detail = fmt.Sprintf("serial %s -> %s, %s until %s", o.renews, rec.Serial, s.req.Profile, rec.NotAfter.Format("2006-01-02"))
		case o.enrolls != "":
			entry.Action = "node.enroll"
			entry.Detail = fmt.Sprintf("serial %s via %s, %s until %s", rec.Serial, o.enrolls, s.req.Profile, rec.NotAfter.Format("2006-01-02"))
		}
		err = c.store.RecordCert(ctx, rec, entry)
		if errors.Is(err, store.ErrExists) && attempt < 3 {
			continue // a 128-bit serial collided: draw another
		}
		if revokedErr(err) {
			return nil, c.refuse(ctx, s.req, fmt.Errorf("%w: %w", ErrRevoked, err))
		}
		if err != nil {
			return nil, fmt.Errorf("record certificate: %w", err)
		}
		return &Issued{Cert: cert, PEM: rec.PEM, ChainPEM: c.ChainPEM(), Record: rec}, nil
	}
}

// Check is the dry run of Sign: it runs the same policy on req and opts,
// and refuses a revoked identity or a blocked key, without signing,
// recording, auditing or writing anything; for a caller that must spend
// something (a join token) only on a request Sign would accept. What only
// the transaction recording a certificate can decide (another live
// certificate of an Exclusive identity, an authorizer revoked meanwhile)
// Sign alone refuses.
func (c *CA) Check(ctx context.Context, req Request, opts ...SignOption) error {
	if req.invalid != nil {
		return req.invalid
	}
	o := optionsOf(opts)
	pub, err := o.key(req)
	if err != nil {
		return err
	}
	if o.generate {
		key, err := c.issuedKey(c.cfg.IssuedKeyPath(req.Identity.CommonName()))
		if err != nil {
			return err
		}
		pub = key.Public()
	}
	s, err := c.checked(o.csr, pub, req, c.signer(), c.cfg.Now(), o.proven)
	if err != nil {
		return err
	}
	spki, err := spkiOf(o.csr, pub)
	if err != nil {
		return err
	}
	return c.checkRevoked(ctx, s.req.Identity, spki)
}

// checkRevoked refuses, ahead of signing, an identity that is revoked (or
// whose node is) or a key that is blocked. It is a courtesy to callers that
// spend something before signing: the store's RecordCert is what enforces
// both, in the transaction that would record the certificate.
func (c *CA) checkRevoked(ctx context.Context, id identity.Identity, spki []byte) error {
	if id.IsZero() {
		return nil
	}
	name, keyBlocked, err := c.store.IssuanceBlock(ctx, id.CommonName(), trust.KeyHash(spki))
	switch {
	case err != nil:
		return err
	case name != "":
		return fmt.Errorf("%w: %s: identity %s is revoked (reinstate it with `meshctl ca reinstate %s`)", ErrRevoked, id.CommonName(), name, name)
	case keyBlocked:
		return fmt.Errorf("%w: the key was revoked for keyCompromise and is never certified again; generate a new key", ErrRevoked)
	}
	return nil
}

// revokedErr reports whether err is the store's refusal of a certificate
// for a revoked identity, a blocked key or a revoked authorizer.
func revokedErr(err error) bool {
	return errors.Is(err, store.ErrIdentityRevoked) || errors.Is(err, store.ErrKeyBlocked) || errors.Is(err, store.ErrAuthorizerRevoked)
}

// checked builds the certificate template for req and runs the policy on
// it; csr is nil when the CA generated the key itself.
func (c *CA) checked(csr *x509.CertificateRequest, pub crypto.PublicKey, req Request, signer *issuer, now time.Time, proven bool) (*signing, error) {
	s := &signing{
		proven:  proven,
		req:     req,
		csr:     csr,
		tmpl:    &x509.Certificate{PublicKey: pub},
		now:     now,
		max:     c.cfg.LeafTTL,
		td:      c.TrustDomain(),
		ceiling: signer.cert.NotAfter,
	}
	if !req.Identity.IsZero() && req.Identity.Kind != req.Profile.Kind() {
		return s, kindMismatch(req)
	}
	if req.Profile.Kind() == 0 {
		return s, policyErr("unknown profile %q (want node, agent or client)", req.Profile)
	}
	if csr == nil {
		if err := checkKey(pub); err != nil {
			return s, err
		}
	}
	return s, applyPolicy(s, leafPolicy)
}

// refuse audits a refused request and returns err.
func (c *CA) refuse(ctx context.Context, req Request, err error) error {
	name := ""
	if !req.Identity.IsZero() {
		name = req.Identity.CommonName()
	}
	audit(ctx, c.cfg, c.store, "cert.issue", name, err)
	return err
}
