package meshauth

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrNotCanonical is wrapped by the error that refuses a path or URI not
// written in its one canonical form.
//
// Names are refused rather than rewritten: a rule is matched against the
// very string the handler behind then acts on, and no rewriting of ours
// can know how that handler (a file server, a proxy, another router)
// would have resolved "..", "%2e%2e" or "%2F". A client that means
// /files/x sends /files/x; only an attack or a confused client sends
// anything else, and either is better told so than served.
var ErrNotCanonical = errors.New("not in canonical form")

// ReasonNotCanonical is the reason of a request refused because a path or
// URI it names is not canonical.
const ReasonNotCanonical = "not_canonical"

// canonicalPath reports why an HTTP path is not canonical: decoded is
// the path as percent-decoded (url.URL.Path), escaped as sent
// (url.URL.EscapedPath). Canonical means: no "." or ".." segment, no
// empty segment but a trailing one (no "//"), no backslash, and no
// percent-encoded unreserved character or separator ("%2e", "%2F",
// "%5C", "%41"), so that the decoded path a rule matched is the path
// every reader of the request resolves.
func canonicalPath(decoded, escaped string) error {
	if err := canonicalEscapes(escaped, true); err != nil {
		return err
	}
	if strings.IndexByte(decoded, '\\') >= 0 {
		return fmt.Errorf("%w: a backslash is a separator to some servers; use /", ErrNotCanonical)
	}
	segs := strings.Split(decoded, "/")
	for i, s := range segs {
		switch {
		case s == "." || s == "..":
			return fmt.Errorf("%w: dot segment %q; send the path it resolves to", ErrNotCanonical, s)
		case s == "" && i > 0 && i < len(segs)-1:
			return fmt.Errorf("%w: empty segment (//); send the path with single slashes", ErrNotCanonical)
		}
	}
	return nil
}

// canonicalEscapes refuses a percent-encoded unreserved character (RFC
// 3986 §2.3: it means the character itself, so two spellings would name
// one thing) and, when path is set, an encoded separator ('/', '\').
func canonicalEscapes(s string, path bool) error {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return fmt.Errorf("%w: %q is not a percent-encoded byte", ErrNotCanonical, s[i:min(i+3, len(s))])
		}
		b := unhex(s[i+1])<<4 | unhex(s[i+2])
		switch {
		case isUnreserved(b):
			return fmt.Errorf("%w: %q encodes %q, which is written as itself", ErrNotCanonical, s[i:i+3], b)
		case path && (b == '/' || b == '\\'):
			return fmt.Errorf("%w: %q is an encoded separator inside a path segment", ErrNotCanonical, s[i:i+3])
		}
		i += 2
	}
	return nil
}

// canonicalURI reports why a URI (a resource's, or a resource template's:
// "{var}" is a character like any other here) is not canonical: it must
// parse, its scheme and host be lowercase, its path be canonical as
// canonicalPath says, and no part of it percent-encode an unreserved
// character.
func canonicalURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotCanonical, err)
	}
	if !strings.HasPrefix(s, u.Scheme) { // url.Parse lowercases the scheme
		return fmt.Errorf("%w: the scheme is written in lowercase", ErrNotCanonical)
	}
	if u.Host != strings.ToLower(u.Host) {
		return fmt.Errorf("%w: the host is written in lowercase", ErrNotCanonical)
	}
	if err := canonicalEscapes(s, false); err != nil {
		return err
	}
	if u.Opaque != "" { // "scheme:a/b", no authority: still a path to its reader
		dec, err := url.PathUnescape(u.Opaque)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrNotCanonical, err)
		}
		return canonicalPath(dec, u.Opaque)
	}
	return canonicalPath(u.Path, u.EscapedPath())
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
