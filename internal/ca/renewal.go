package ca

import "time"

// RenewAt is when the holder of a leaf issued by the intermediate
// issuerKeyID, valid from notBefore to notAfter, should renew it: the
// server-suggested renewal point sent as renew_after in every issuance
// answer. It is the CA's RenewAfter into the leaf's life (2/3 of it by
// default), never past notAfter. serial lets the schedule spread holders
// apart when it moves for many at once.
func (c *CA) RenewAt(issuerKeyID, serial string, notBefore, notAfter time.Time) time.Time {
	at := notBefore.Add(backdate).Add(c.cfg.RenewAfter)
	if at.After(notAfter) {
		at = notAfter
	}
	return at
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
