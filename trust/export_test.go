package trust

// Len returns the number of revoked certificates and entities.
func (s *RevocationSet) Len() (certs, entities int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, rs := range s.serials {
		certs += len(rs)
	}
	return certs, len(s.entities)
}
