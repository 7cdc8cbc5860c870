package vault

import "errors"

// Test knobs: the schedule's clock, the jitter and the backoff's cap.
var (
	WithClock      = withClock
	WithRand       = withRand
	WithMaxBackoff = withMaxBackoff
)

// Err returns why the last attempt to issue a certificate or to renew
// the token failed, or nil once they succeed again. The current
// certificate stays in use meanwhile; tests read it to see a failure
// and the recovery after it.
func (s *Source) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return errors.Join(s.issueErr, s.tokenErr)
}
