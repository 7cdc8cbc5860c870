package ca

import (
	"crypto/x509"
	"os"
)

// ActiveIntermediate returns the intermediate that signs.
func (c *CA) ActiveIntermediate() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.active.cert
}

// PreparedIntermediate returns the intermediate in the prepared slot
// (`meshctl ca rotate-intermediate prepare`), nil when there is none.
func (c *CA) PreparedIntermediate() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.prepared == nil {
		return nil
	}
	return c.prepared.cert
}

// BundlePEM returns the published bundle: the root and every live
// intermediate.
func (c *CA) BundlePEM() ([]byte, error) { return os.ReadFile(c.cfg.BundlePath()) }

// CRLPEM returns crl.pem: one CRL per live intermediate.
func (c *CA) CRLPEM() ([]byte, error) { return os.ReadFile(c.cfg.CRLPath()) }
