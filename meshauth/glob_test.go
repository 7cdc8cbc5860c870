package meshauth

import (
	"strings"
	"testing"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"search_*", "search_docs", true},
		{"search_*", "search_", true},
		{"search_*", "search", false},
		{"/files/*", "/files/a", true},
		{"/files/*", "/files/a/b", false},
		{"/files/**", "/files/a/b", true},
		{"/files/**", "/files/", true},
		{"*@ct1", "opus@ct1", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"**/x", "a/b/x", true},
		{"*/x", "a/b/x", false},
		{"exact", "exact", true},
		{"exact", "exactly", false},
		{"*", "", true},
		{"*", "a/b", false},
		{"**", "a/b", true},
	}
	for _, tt := range tests {
		g, err := compileGlob(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := g.match(tt.s); got != tt.want {
			t.Errorf("%q matches %q: %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
	if _, err := compileGlob(strings.Repeat("a", maxGlob)); err == nil {
		t.Error("an overlong pattern compiled")
	}
}

// A pattern that backtracks exponentially in a naive matcher stays
// linear here.
func TestGlobAdversarial(t *testing.T) {
	g, _ := compileGlob("*a*a*a*a*a*a*a*a*b")
	s := strings.Repeat("a", 1<<16)
	if g.match(s) {
		t.Fatal("matched")
	}
	if n := testing.AllocsPerRun(10, func() { g.match("aaaaaaab") }); n != 0 {
		t.Fatalf("%v allocations per match", n)
	}
}
