package bundleendpoint

// SetMaxConns lowers the bound on open connections before Start, so a
// test can fill it.
func SetMaxConns(s *Server, n int) { s.maxConns = n }
