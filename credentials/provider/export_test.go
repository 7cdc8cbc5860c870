package provider

import "time"

// SetFirstSVIDTimeout shortens the wait for a first SVID for a test, and
// restores it when the test ends.
func SetFirstSVIDTimeout(t interface{ Cleanup(func()) }, d time.Duration) {
	old := firstSVIDTimeout
	firstSVIDTimeout = d
	t.Cleanup(func() { firstSVIDTimeout = old })
}
