package spire

// Addr returns the Workload API address the source follows.
func (s *Source) Addr() string { return s.addr }
