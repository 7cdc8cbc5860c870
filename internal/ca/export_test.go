package ca

import (
	"crypto"
	"crypto/x509"
)

// CreateLeaf is createLeaf, for the tests of package ca_test.
var CreateLeaf = createLeaf

// LeafTemplate is the template Sign (csr non-nil) or Reissue (csr nil,
// key pub) would sign for req under the active intermediate: the policy's
// template with its subject key id and a fresh serial.
func (c *CA) LeafTemplate(csr *x509.CertificateRequest, pub crypto.PublicKey, req Request) (*x509.Certificate, error) {
	s, err := c.checked(csr, pub, req, c.signer(), c.cfg.Now(), false)
	if err != nil {
		return nil, err
	}
	if s.tmpl.SubjectKeyId, err = subjectKeyID(pub); err != nil {
		return nil, err
	}
	s.tmpl.SerialNumber, err = newSerial(c.cfg.Rand, c.cfg.Now())
	return s.tmpl, err
}
