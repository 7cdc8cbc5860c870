package enroll

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Errors callers branch on. An answer of meshd outside 2xx is an *Error
// that wraps one of them and carries meshd's own message.
var (
	// ErrBadRequest reports a request meshd found malformed: a bad node
	// or agent id, a CSR it cannot use (400).
	ErrBadRequest = errors.New("enroll: bad request")
	// ErrUnauthorized reports a missing, wrong, used or expired bootstrap
	// credential (401).
	ErrUnauthorized = errors.New("enroll: unauthorized")
	// ErrForbidden reports a credential or certificate that may not do
	// what was asked: a join token for another node, an agent outside the
	// node's namespace, a certificate that no longer verifies (403).
	ErrForbidden = errors.New("enroll: forbidden")
	// ErrConflict reports a node id that already holds a live certificate
	// (409).
	ErrConflict = errors.New("enroll: conflict")
	// ErrRateLimited reports too many attempts; Error.RetryAfter says when
	// to try again (429).
	ErrRateLimited = errors.New("enroll: rate limited")
	// ErrUnavailable reports a meshd that could not be reached or failed
	// (a network error, 5xx): worth retrying later.
	ErrUnavailable = errors.New("enroll: meshd unavailable")
	// ErrUntrustedServer reports a meshd whose certificate does not chain
	// to the configured roots or to the pinned root fingerprint, or that
	// answered with certificates that do not fit the request.
	ErrUntrustedServer = errors.New("enroll: meshd not trusted")
	// ErrNoTrust reports a Client given neither Roots nor RootFingerprint.
	ErrNoTrust = errors.New("enroll: no trust anchor for meshd")
)

// Error is meshd's refusal of a request.
type Error struct {
	// Route is the path that was called, such as "/enroll".
	Route string
	// Status is the HTTP status meshd answered.
	Status int
	// Message is meshd's {"error": ...}, or a summary of its answer.
	Message string
	// RetryAfter is how long to wait before trying again, from a 429's
	// Retry-After header; zero when meshd did not say.
	RetryAfter time.Duration

	err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "meshd refused %s (%d %s): %s", e.Route, e.Status, http.StatusText(e.Status), e.Message)
	// meshd's own message may say what to do already; say it once.
	if h := e.hint(); h != "" && !strings.Contains(strings.ToLower(e.Message), e.hintKeyword()) {
		b.WriteString("; ")
		b.WriteString(h)
	}
	return b.String()
}

// Unwrap returns the sentinel error the refusal wraps.
func (e *Error) Unwrap() error { return e.err }

// hint says what to do next, for the refusals where the answer is known.
func (e *Error) hint() string {
	switch {
	case e.err == ErrRateLimited && e.RetryAfter > 0:
		return "retry in " + e.RetryAfter.String()
	case e.err == ErrRateLimited:
		return "retry later"
	case e.Route == "/enroll" && e.err == ErrUnauthorized:
		return "check the bootstrap secret, or ask an operator for a new join token (`meshctl token create --node <node-id>`)"
	case e.Route == "/enroll" && e.err == ErrConflict:
		return "this node id already holds a live certificate; revoke it first (`meshctl ca revoke <node-id>.mesh`) or enroll with a join token for it"
	case e.Route == "/enroll" && e.err == ErrForbidden:
		return "the join token was issued for another node id"
	case e.Route == "/renew" && e.err == ErrForbidden:
		return "a revoked or expired certificate cannot renew; enroll the node again"
	}
	return ""
}

// hintKeyword is a word that, found in meshd's message, shows it already
// gives the hint.
func (e *Error) hintKeyword() string {
	switch e.err {
	case ErrConflict:
		return "revoke"
	case ErrForbidden:
		if e.Route == "/enroll" {
			return "another node"
		}
	}
	return "\x00" // never in a message
}

// sentinelFor maps an HTTP status to the sentinel error callers branch on.
func sentinelFor(status int) error {
	switch {
	case status == http.StatusBadRequest:
		return ErrBadRequest
	case status == http.StatusUnauthorized:
		return ErrUnauthorized
	case status == http.StatusForbidden:
		return ErrForbidden
	case status == http.StatusConflict:
		return ErrConflict
	case status == http.StatusTooManyRequests:
		return ErrRateLimited
	case status >= 500:
		return ErrUnavailable
	}
	return ErrBadRequest
}

// retryAfter reads a Retry-After header: delay-seconds, or an HTTP date
// taken relative to the answer's own Date header so that the local clock
// does not matter.
func retryAfter(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	date, err := http.ParseTime(h.Get("Date"))
	if err != nil {
		return 0
	}
	if d := at.Sub(date); d > 0 {
		return d
	}
	return 0
}
