package registry

import "testing"

// TestVersionConstraints: a dependency's version constraint is MCP Mesh's
// (Masterminds semver): a tool without a version is 1.0.0, a constraint
// that does not parse matches only that string, a version that does not
// parse satisfies no constraint.
func TestVersionConstraints(t *testing.T) {
	for _, tc := range []struct {
		constraint, version string
		want                bool
	}{
		{"", "", true}, {"", "banana", true},
		{">=1.0.0", "", true}, {">=2.0.0", "", false},
		{">=1.0.0", "1.4.2", true}, {">=1.0.0", "0.9.0", false},
		{"^1", "1.9.0", true}, {"^1", "2.0.0", false},
		{"~1.0", "1.0.7", true}, {"~1.0", "1.1.0", false},
		{">=0.9, <1.1", "1.0.0", true}, {">=0.9, <1.1", "1.1.0", false},
		{"1.x", "1.3.0", true},
		{"banana", "banana", true}, {"banana", "1.0.0", false},
		{">=1.0.0", "banana", false},
	} {
		if _, got := parseConstraint(tc.constraint).match(tc.version); got != tc.want {
			t.Errorf("constraint %q, version %q: %v, want %v", tc.constraint, tc.version, got, tc.want)
		}
	}
}
