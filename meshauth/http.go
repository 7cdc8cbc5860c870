package meshauth

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// Handler returns h behind the middleware: the caller is verified, the
// HTTP method and path are authorized, and h runs with the Caller in the
// request context (FromContext). A path that is not canonical (a dot
// segment, "//", a percent-encoded unreserved character or separator) is
// refused with 400 and ReasonNotCanonical, so h acts on exactly the path
// that was authorized. A refusal is a JSON meshapi.ErrorResponse with a
// reason.
func (a *Auth) Handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The path a rule compares is r.URL.Path, percent-decoded, and
		// only once it is canonical: what the handler, a file server or a
		// router behind reads from r.URL is then that same name. No trust
		// source vouches for a path (the caller chose it); who may use it
		// is the caller's verified identity, decided by the Authorizer.
		op := Operation{Kind: KindHTTP, Method: r.Method, Path: r.URL.Path}
		c, gen, rf := a.identifyHTTP(r)
		if rf == nil {
			rf = notCanonicalPath(r)
		}
		if rf == nil {
			_, rf = a.decide(c, &op)
		} else {
			a.refused(&op, rf)
		}
		if rf != nil {
			a.writeRefusal(w, rf)
			return
		}
		h.ServeHTTP(w, r.WithContext(withVerified(r.Context(), verifiedOf(c, gen, r.TLS))))
	})
}

// Identify verifies the caller of r without authorizing anything, as
// Verify does, and returns r with the Caller in its context (for
// FromContext and Recheck): a copy of the request, which Verify spares a
// handler that takes the Verified itself.
func (a *Auth) Identify(r *http.Request) (*Caller, *http.Request, error) {
	v, err := a.Verify(r)
	if err != nil {
		return nil, r, err
	}
	return v.Caller, r.WithContext(withVerified(r.Context(), v)), nil
}

// Verify verifies the caller of r without authorizing anything, for a
// service that decides per route itself (meshd's agent port): the
// certificate (once per connection per trust generation, when the server
// runs ConnContext), the session its bearer token names, or the legacy or
// anonymous caller. It neither copies r nor allocates for a connection's
// caller verified before: the hot path of a service that hands the
// Verified to its handlers, which call RecheckVerified with it where
// Recheck would read the context. An error is why there is no caller:
// Reason says it for a machine, errors.Is(err, trust.ErrNoCertificate)
// when none was presented.
func (a *Auth) Verify(r *http.Request) (Verified, error) {
	c, gen, rf := a.identifyHTTP(r)
	if rf != nil {
		return Verified{}, rf
	}
	return verifiedOf(c, gen, r.TLS), nil
}

// notCanonicalPath refuses a request whose path is not canonical. A
// request-target that is not a path ("*" of OPTIONS) matches no rule and
// is left to the policy.
func notCanonicalPath(r *http.Request) *refusal {
	if !strings.HasPrefix(r.URL.Path, "/") {
		return nil
	}
	if err := canonicalPath(r.URL.Path, r.URL.EscapedPath()); err != nil {
		return &refusal{code: http.StatusBadRequest, reason: ReasonNotCanonical, detail: fmt.Sprintf("path %q: %v", r.URL.EscapedPath(), err), cause: err}
	}
	return nil
}

// identifyHTTP identifies the caller of r.
func (a *Auth) identifyHTTP(r *http.Request) (*Caller, uint64, *refusal) {
	return a.identify(r.Context(), connFrom(r.Context()), r.TLS, bearer(r.Header.Get("Authorization")))
}

// verifiedOf is the Verified of caller c, verified at trust generation
// gen over the connection state (nil without TLS).
func verifiedOf(c *Caller, gen uint64, state *tls.ConnectionState) Verified {
	v := Verified{Caller: c, gen: gen}
	if state != nil {
		v.chain = state.PeerCertificates
	}
	return v
}

// bearer returns the credential of an "Authorization: Bearer" header.
func bearer(h string) string {
	const p = "Bearer "
	if len(h) > len(p) && strings.EqualFold(h[:len(p)], p) {
		return strings.TrimSpace(h[len(p):])
	}
	return ""
}

// writeRefusal answers a refused plain HTTP request.
func (a *Auth) writeRefusal(w http.ResponseWriter, rf *refusal) {
	if rf.code == http.StatusUnauthorized && strings.HasPrefix(rf.reason, "token_") {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	writeJSON(w, rf.code, meshapi.ErrorResponse{Error: rf.detail, Reason: rf.reason, Timestamp: a.cfg.Now().UTC().Format(time.RFC3339Nano)})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
