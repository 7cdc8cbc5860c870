package meshauth

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestCanonicalPath(t *testing.T) {
	tests := []struct {
		raw string
		ok  bool
	}{
		{"/files/a/b.md", true},
		{"/files/", true},
		{"/", true},
		{"/files/a%20b", true},     // a space is reserved-free but not unreserved: encoded is its one form
		{"/files/%E2%82%AC", true}, // UTF-8 is written encoded
		{"/files/../admin/keys", false},
		{"/files/./x", false},
		{"/files/..", false},
		{"/files/%2e%2e/admin/keys", false},
		{"/files/%2E%2E/admin/keys", false},
		{"/files/.%2e/admin", false},
		{"/files/..%2Fadmin", false},
		{"/files/x%2fy", false},
		{"/files/x%5Cy", false},
		{"/files/%61", false},
		{"/files//x", false},
		{"/files/x\\..\\y", false},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.raw)
		if err != nil {
			t.Fatalf("%q: %v", tt.raw, err)
		}
		err = canonicalPath(u.Path, u.EscapedPath())
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrNotCanonical)) {
			t.Errorf("canonicalPath(%q) = %v, want ok=%v", tt.raw, err, tt.ok)
		}
	}
}

func TestCanonicalURI(t *testing.T) {
	tests := []struct {
		uri string
		ok  bool
	}{
		{"file:///docs/a/b.md", true},
		{"file:///docs/{path}", true}, // a resource template
		{"https://api.example/v1/x?q=a%2Fb", true},
		{"urn:isbn:0451450523", true},
		{"file:///docs/../etc/shadow", false},
		{"file:///docs/%2e%2e/etc/shadow", false},
		{"file:///docs/%2E%2E%2Fetc/shadow", false},
		{"file:///docs/x/..", false},
		{"file:docs/../etc/shadow", false},
		{"FILE:///docs/x", false},
		{"https://API.example/x", false},
		{"https://api.example/x?q=%61", false},
		{"file:///docs//x", false},
		{"../etc/shadow", false},
		{"file:///docs/%zz", false},
	}
	for _, tt := range tests {
		err := canonicalURI(tt.uri)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrNotCanonical)) {
			t.Errorf("canonicalURI(%q) = %v, want ok=%v", tt.uri, err, tt.ok)
		}
	}
}

// FuzzCanonicalURI checks that a URI accepted as canonical has a path
// that path.Clean leaves as it is (a trailing slash aside), decoded or
// as sent, so that no reader resolves it to another.
func FuzzCanonicalURI(f *testing.F) {
	for _, s := range []string{"file:///docs/a/b.md", "file:///docs/../etc/shadow", "file:///docs/%2e%2e/etc/shadow",
		"file:///docs/.%2E/x", "file:docs/../x", "/files/..%2Fadmin", "/files//x", "file:///docs/{+path}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if canonicalURI(s) != nil {
			return
		}
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("accepted %q, which does not parse: %v", s, err)
		}
		for _, p := range []string{u.Path, u.EscapedPath(), u.Opaque} {
			if p == "" || !strings.HasPrefix(p, "/") {
				continue
			}
			if c := path.Clean(p); c != strings.TrimSuffix(p, "/") && c != p {
				t.Fatalf("accepted %q, whose path %q resolves to %q", s, p, c)
			}
			if d, err := url.PathUnescape(p); err == nil && path.Clean(d) != strings.TrimSuffix(d, "/") && path.Clean(d) != d {
				t.Fatalf("accepted %q, whose path %q decodes to %q", s, p, d)
			}
		}
	})
}

// TestParseOperationRefusesNonCanonical: policy check models what the
// middleware serves, so a name the middleware refuses as not canonical is
// refused by the model too, never answered "allowed".
func TestParseOperationRefusesNonCanonical(t *testing.T) {
	for _, op := range []string{
		"GET /files/../admin/keys",
		"GET /files/%2e%2e/admin/keys",
		"GET /files/a%2Fb",
		"GET /files//x",
		"mcp resources/read file:///docs/../etc/shadow",
		"mcp resources/read file:///docs/%2e%2e/etc/shadow",
		"mcp resources/subscribe file:///docs/./x",
	} {
		if _, err := ParseOperation(op); !errors.Is(err, ErrNotCanonical) {
			t.Errorf("ParseOperation(%q) = %v, want ErrNotCanonical", op, err)
		}
	}
	for _, op := range []string{"GET /files/a%20b", "mcp resources/read file:///docs/a.md", "mcp tools/call ../x"} {
		if _, err := ParseOperation(op); err != nil {
			t.Errorf("ParseOperation(%q): %v", op, err)
		}
	}
	if op, _ := ParseOperation("GET /files/a%20b"); op.Path != "/files/a b" {
		t.Errorf("path %q, want the decoded path a request's URL.Path holds", op.Path)
	}
}
