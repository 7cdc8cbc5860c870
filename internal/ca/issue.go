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

// Sign signs a certificate request under req's profile. The key stays with
// its owner; the CSR proves possession of it and may only ask for what the
// profile would grant anyway. The certificate is durably recorded before
// Sign returns it.
func (c *CA) Sign(ctx context.Context, csr *x509.CertificateRequest, req Request) (*Issued, error) {
	if csr == nil {
		return nil, fmt.Errorf("%w: no request", ErrBadCSR)
	}
	return c.issue(ctx, csr, csr.PublicKey, req, false)
}

// SignProven is Sign for a CSR whose requester the caller has already
// seen prove possession of its key, so the CSR's signature is not checked
// (again); every other rule of the policy applies as in Sign. The caller
// must have seen one of: the key is that of the client certificate that
// authenticated the request's TLS connection (the handshake's
// CertificateVerify is a signature by that key over the handshake; the
// CSR's RawSubjectPublicKeyInfo must be byte for byte the certificate's),
// or the caller checked csr's own signature (csr.CheckSignature, or Check)
// and it verified.
func (c *CA) SignProven(ctx context.Context, csr *x509.CertificateRequest, req Request) (*Issued, error) {
	if csr == nil {
		return nil, fmt.Errorf("%w: no request", ErrBadCSR)
	}
	return c.issue(ctx, csr, csr.PublicKey, req, true)
}

// Reissue issues a certificate for req.Identity and the public key pub,
// with no CSR: for a renewal that keeps the key of the certificate that
// authenticated it, as step-ca's renew does. The caller must have seen the
// requester prove possession of pub (see SignProven). req.Identity is
// required, since there is no CSR to take it from.
func (c *CA) Reissue(ctx context.Context, pub crypto.PublicKey, req Request) (*Issued, error) {
	if req.Identity.IsZero() {
		return nil, policyErr("no identity to issue for")
	}
	return c.issue(ctx, nil, pub, req, true)
}

// IssueWithKey issues a certificate for req.Identity whose key the CA
// generates, and writes both into the CA directory (see IssuedCertPath:
// issued/<node-id>.crt for a node, issued/<cn>.crt otherwise, and .key).
// When a key for that name is already there it is reused,
// so issuing again renews the certificate under the same key.
func (c *CA) IssueWithKey(ctx context.Context, req Request) (*Issued, error) {
	if req.Identity.IsZero() {
		return nil, policyErr("no identity to issue for")
	}
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
	if fileExists(issuedDir) {
		if err := pemfile.MkdirPrivate(issuedDir); err != nil {
			return nil, err
		}
	}
	keyPath := c.cfg.IssuedKeyPath(cn)
	key, err := pemfile.ReadKey(keyPath)
	switch {
	case errors.Is(err, ErrKeyMissing):
		if key, err = GenerateKey(c.cfg.KeyType, c.cfg.Rand); err != nil {
			return nil, err
		}
		// The new key is written only once the certificate is issued, so a
		// refused request leaves nothing behind.
	case err != nil:
		return nil, err
	}
	is, err := c.issue(ctx, nil, key.Public(), req, true)
	if err != nil {
		return nil, err
	}
	if err := pemfile.MkdirPrivate(issuedDir); err != nil {
		return nil, err
	}
	if !fileExists(keyPath) {
		if err := pemfile.WriteKey(keyPath, key); err != nil {
			return nil, err
		}
	}
	if err := pemfile.WriteAtomic(c.cfg.IssuedCertPath(cn), append(append([]byte{}, is.PEM...), is.ChainPEM...), 0o644); err != nil {
		return nil, err
	}
	return is, nil
}

// issue runs the policy, signs with the active intermediate and records the
// result. csr is nil when there is none (the CA generated the key, or the
// caller re-issues for a proven key); proven skips csr's signature check.
func (c *CA) issue(ctx context.Context, csr *x509.CertificateRequest, pub crypto.PublicKey, req Request, proven bool) (*Issued, error) {
	signer := c.signer()
	now := c.cfg.Now()
	s, err := c.checked(csr, pub, req, signer, now, proven)
	if err != nil {
		return nil, c.refuse(ctx, s.req, err)
	}
	// The key as its holder presented it in the CSR; marshalled from pub
	// only when there is no CSR.
	var spki []byte
	if csr != nil {
		spki = csr.RawSubjectPublicKeyInfo
	} else if spki, err = x509.MarshalPKIXPublicKey(pub); err != nil {
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
		rec.AuthorizedBy, rec.Exclusive = req.AuthorizedBy, req.Exclusive
		entry := store.AuditEntry{
			Time: now, Action: "cert.issue", Identity: rec.CommonName, Outcome: store.OutcomeOK,
			Detail: fmt.Sprintf("%s serial %s until %s", s.req.Profile, rec.Serial, rec.NotAfter.Format("2006-01-02")),
		}
		switch {
		case req.Renews != "":
			entry.Action = "cert.renew"
			entry.Detail = fmt.Sprintf("serial %s -> %s, %s until %s", req.Renews, rec.Serial, s.req.Profile, rec.NotAfter.Format("2006-01-02"))
		case req.Enrolls != "":
			entry.Action = "node.enroll"
			entry.Detail = fmt.Sprintf("serial %s via %s, %s until %s", rec.Serial, req.Enrolls, s.req.Profile, rec.NotAfter.Format("2006-01-02"))
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

// Check runs the signing policy on csr and req without signing or
// recording anything, for a caller that must spend something (a join
// token) only on a request Sign would accept.
func (c *CA) Check(csr *x509.CertificateRequest, req Request) error {
	return c.check(csr, req, false)
}

// CheckProven is Check for a CSR whose requester the caller has already
// seen prove possession of its key (see SignProven): the CSR's signature
// is not checked again.
func (c *CA) CheckProven(csr *x509.CertificateRequest, req Request) error {
	return c.check(csr, req, true)
}

func (c *CA) check(csr *x509.CertificateRequest, req Request, proven bool) error {
	if csr == nil {
		return fmt.Errorf("%w: no request", ErrBadCSR)
	}
	s, err := c.checked(csr, csr.PublicKey, req, c.signer(), c.cfg.Now(), proven)
	if err != nil {
		return err
	}
	return c.checkRevoked(context.Background(), s.req.Identity, csr)
}

// checkRevoked refuses, ahead of signing, an identity that is revoked (or
// whose node is) or a key that is blocked. It is a courtesy to callers that
// spend something before signing: the store's RecordCert is what enforces
// both, in the transaction that would record the certificate.
func (c *CA) checkRevoked(ctx context.Context, id identity.Identity, csr *x509.CertificateRequest) error {
	if id.IsZero() {
		return nil
	}
	name, keyBlocked, err := c.store.IssuanceBlock(ctx, id.CommonName(), store.KeyHash(csr.RawSubjectPublicKeyInfo))
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

// IssueNode issues node's server and client certificate with its standard
// DNS names plus extra SANs, generating (or reusing) its key.
func (c *CA) IssueNode(ctx context.Context, node string, extraSANs ...string) (*Issued, error) {
	id, err := identity.NewNode(node)
	if err != nil {
		return nil, c.refuse(ctx, Request{}, err)
	}
	return c.IssueWithKey(ctx, Request{Profile: ProfileNode, Identity: id, ExtraSANs: extraSANs})
}

// IssueAgent issues the client certificate of agent on node.
func (c *CA) IssueAgent(ctx context.Context, agent, node string) (*Issued, error) {
	id, err := identity.NewAgent(agent, node)
	if err != nil {
		return nil, c.refuse(ctx, Request{}, err)
	}
	return c.IssueWithKey(ctx, Request{Profile: ProfileAgent, Identity: id})
}

// IssueClient issues an external user's client certificate.
func (c *CA) IssueClient(ctx context.Context, user string) (*Issued, error) {
	id, err := identity.NewExternal(user)
	if err != nil {
		return nil, c.refuse(ctx, Request{}, err)
	}
	return c.IssueWithKey(ctx, Request{Profile: ProfileClient, Identity: id})
}
