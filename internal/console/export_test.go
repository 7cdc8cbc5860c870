package console

// Counts reports the login tokens, sessions and live streams held.
func (c *Console) Counts() (logins, sessions, streams int) { return c.store.counts() }
