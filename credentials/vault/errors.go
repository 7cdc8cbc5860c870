package vault

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/hashicorp/vault/api"
)

// Errors callers branch on. A failed call to Vault is an *Error that wraps
// one of them.
var (
	// ErrUnavailable reports a Vault that could not be reached or could
	// not answer: a network or TLS error, a timeout, a 5xx (a sealed
	// Vault is a 503). Worth retrying; the Source does.
	ErrUnavailable = errors.New("vault: Vault unavailable")
	// ErrTokenRejected reports a token Vault refused (401, 403): invalid,
	// expired or revoked, or without a policy for the path. Retrying
	// with the same token does not help unless an operator changes its
	// policies.
	ErrTokenRejected = errors.New("vault: token rejected")
	// ErrRefused reports a request Vault understood and refused (4xx): for
	// an issue path, the PKI role does not allow the name, the IP SAN or
	// the TTL, or the role does not exist.
	ErrRefused = errors.New("vault: request refused")
)

// Error is a failed call to Vault. It never holds the token or a
// certificate's PEM.
type Error struct {
	// Addr is Vault's address, and Path the API path called, such as
	// pki_int/issue/mesh-agent or auth/token/renew-self.
	Addr, Path string
	// Status is the HTTP status Vault answered, 0 when it did not answer.
	Status int
	// Messages are Vault's own errors, such as "common name x not allowed
	// by this role".
	Messages []string

	kind  error // one of the sentinels
	cause error // why Vault did not answer; nil when it did
}

// Error says what failed, where, and what to do about it.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.Status == 0:
		fmt.Fprintf(&b, "vault: cannot reach Vault at %s for %s: %v", e.Addr, e.Path, e.cause)
	case e.kind == ErrTokenRejected:
		fmt.Fprintf(&b, "vault: Vault at %s refused the token for %s (%s)", e.Addr, e.Path, e.answer())
	case e.kind == ErrRefused && isCertPath(e.Path):
		fmt.Fprintf(&b, "vault: the PKI role at %s on %s refused the request (%s)", e.Path, e.Addr, e.answer())
	case e.kind == ErrRefused:
		fmt.Fprintf(&b, "vault: Vault at %s refused %s (%s)", e.Addr, e.Path, e.answer())
	default:
		fmt.Fprintf(&b, "vault: Vault at %s failed %s (%s)", e.Addr, e.Path, e.answer())
	}
	if h := e.hint(); h != "" {
		b.WriteString("; ")
		b.WriteString(h)
	}
	return b.String()
}

// Unwrap returns the sentinel the error wraps, and the cause when Vault
// did not answer.
func (e *Error) Unwrap() []error {
	if e.cause != nil {
		return []error{e.kind, e.cause}
	}
	return []error{e.kind}
}

// answer is Vault's status and messages, as one line.
func (e *Error) answer() string {
	s := fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	if len(e.Messages) > 0 {
		s += ": " + strings.Join(e.Messages, "; ")
	}
	return s
}

func (e *Error) hint() string {
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	switch {
	case errors.As(e.cause, &unknownCA):
		return "set " + EnvCA + " to the CA bundle that signed Vault's certificate"
	case errors.As(e.cause, &badHost):
		return "Vault's certificate is not for this host: check " + EnvAddr
	case e.Status == 0:
		return "check that Vault runs there (" + EnvAddr + ")"
	case e.kind == ErrTokenRejected:
		return "the token is invalid, expired or revoked, or its policies do not allow " + e.Path + ": give a valid token in " + EnvToken
	case e.kind == ErrRefused && e.Status == http.StatusNotFound:
		return "check " + EnvPKIPath + " (it names the mount and the role, such as pki_int/issue/mesh-agent)"
	case e.kind == ErrRefused && isCertPath(e.Path) && e.says("not allowed"):
		return "ask for names the role allows (the agent name and " + EnvTrustDomain + ") or change the role's allowed_domains"
	case e.kind == ErrRefused && isCertPath(e.Path):
		return "the role's settings say what it issues: vault read " + rolePath(e.Path)
	case e.Status == http.StatusServiceUnavailable:
		return "Vault may be sealed or in standby: unseal it or point " + EnvAddr + " at the active node"
	}
	return ""
}

// says reports whether one of Vault's messages holds s.
func (e *Error) says(s string) bool {
	for _, m := range e.Messages {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// rolePath returns the role of an issue or sign path: pki/roles/r for
// pki/issue/r.
func rolePath(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	parts[len(parts)-2] = "roles"
	return strings.Join(parts, "/")
}

// isCertPath reports whether path is a PKI issue or sign path.
func isCertPath(path string) bool {
	_, err := pkiMode(path)
	return err == nil
}

// classify turns an error of the Vault client into an *Error.
func classify(addr, path string, err error) error {
	e := &Error{Addr: addr, Path: path}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		e.kind = ErrUnavailable
		// url.Error repeats the URL, which Error says already.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		e.cause = err
		return e
	}
	e.Status = re.StatusCode
	e.Messages = re.Errors
	if re.RawError {
		// An unparsable body might be anything (a proxy's page): not
		// repeated.
		e.Messages = nil
	}
	switch {
	case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden:
		e.kind = ErrTokenRejected
	case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
		e.kind = ErrUnavailable
	default:
		e.kind = ErrRefused
	}
	return e
}
