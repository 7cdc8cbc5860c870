package ca

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// RenewAt is when the holder of a leaf issued by the intermediate
// issuerKeyID, valid from notBefore to notAfter, should renew it: the
// server-suggested renewal point sent as renew_after in every issuance
// answer. It is the CA's RenewAfter into the leaf's life (2/3 of it by
// default), never past notAfter. For a leaf of a tainted intermediate it
// is sooner: the taint plus a share of TaintWindow drawn from the serial,
// so that the fleet does not renew in one instant, never before the
// taint and never later than the normal point.
func (c *CA) RenewAt(issuerKeyID, serial string, notBefore, notAfter time.Time) time.Time {
	at := notBefore.Add(backdate).Add(c.cfg.RenewAfter)
	if at.After(notAfter) {
		at = notAfter
	}
	c.mu.RLock()
	taintedAt, tainted := c.tainted[issuerKeyID]
	c.mu.RUnlock()
	if !tainted {
		return at
	}
	if soon := taintedAt.Add(taintJitter(serial, c.cfg.TaintWindow)); soon.Before(at) {
		return soon
	}
	return at
}

// taintJitter is serial's place in [0, window): a hash of the serial, so
// that every replica tells the holder of a certificate the same time.
func taintJitter(serial string, window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	sum := sha256.Sum256([]byte(serial))
	return time.Duration(binary.BigEndian.Uint64(sum[:8]) % uint64(window))
}

// TaintedIssuers returns the intermediates an operator marked tainted
// (`meshctl ca rotate-intermediate taint`), by key id, with when: every
// leaf they signed is to be renewed now, on the schedule RenewAt gives.
func (c *CA) TaintedIssuers() map[string]time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]time.Time, len(c.tainted))
	for id, at := range c.tainted {
		out[id] = at
	}
	return out
}
